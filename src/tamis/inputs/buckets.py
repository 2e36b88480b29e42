"""Loader of the `bucketed_pool` input (scaling_law): the pool's ids with their quality
bucket (a ``bucket`` column) or quality score (``quality_score``), and the scaling-law fit
(`tamis scaling fit`'s fit.json) that ranks the buckets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from tamis.config import ConfigError, require
from tamis.inputs.context import BUCKETED_POOL, SelectionInputs, StageContext, input_loader
from tamis.inputs.skills import read_frame, row_location, row_where, shown_value
from tamis.records import InputError, read_json


@dataclass
class QualityBuckets:
    """Per pool row: its bucket name (None: derive from quality) and quality score."""

    bucket: list[str] | None
    quality: np.ndarray | None  # float64
    fit: dict[str, Any]  # fit.json as written by `tamis scaling fit`
    fit_path: str


def read_fit_json(path: str) -> dict[str, Any]:
    """fit.json as a mapping (a missing or non-JSON file is an InputError naming it)."""
    import json

    try:
        data = read_json(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no fit; run `tamis scaling fit` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a JSON fit ({err})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object (a fit from `tamis scaling fit`)")
    return data


def _quality(frame: pl.DataFrame, name: str, path: str, id_field: str) -> np.ndarray:
    """The quality scores as float64; a row without a finite number is an InputError."""
    column = frame.get_column(name)
    if column.dtype.is_numeric():
        values = column.cast(pl.Float64)
        bad = (values.is_null() | ~values.is_finite()).arg_true()
    else:  # text, booleans, lists: no score
        values, bad = column, pl.Series(range(len(column)))
    if len(bad):
        row = int(bad[0])
        raise InputError(
            f"{row_where(path, frame, row, id_field)}: {name!r} must be a finite number, "
            f"got {shown_value(column[row])}"
        )
    return values.to_numpy()


def _bucket_names(frame: pl.DataFrame, name: str, path: str, id_field: str) -> list[str]:
    """The bucket of each row as a string; a null, blank or non-scalar one is an InputError."""
    column = frame.get_column(name)
    if column.dtype.is_numeric() or column.dtype == pl.String:
        names = column.cast(pl.String)
        bad = (names.is_null() | (names.str.strip_chars() == "")).arg_true()
    else:
        names, bad = column, pl.Series(range(len(column)))
    if len(bad):
        row = int(bad[0])
        raise InputError(
            f"{row_where(path, frame, row, id_field)}: {name!r} must be a bucket name, "
            f"got {shown_value(column[row])}"
        )
    return names.to_list()


@input_loader(BUCKETED_POOL)
def load_bucketed_pool(ctx: StageContext, inputs: SelectionInputs) -> None:
    p = ctx.params
    fit_path = require(p.fit, f"{ctx.key}.params.fit")
    fit = read_fit_json(fit_path)
    pool = require(ctx.config.pool, "pool")
    frame = read_frame(pool.path)
    if pool.id_field not in frame.columns:
        raise InputError(f"{pool.path}: no {pool.id_field!r} column")
    ids = frame.get_column(pool.id_field)
    if ids.null_count():
        row = int(ids.is_null().arg_true()[0])
        raise InputError(f"{row_location(pool.path, row)}: no {pool.id_field!r} (null)")
    bucket = quality = None
    if p.quality_field in frame.columns:
        quality = _quality(frame, p.quality_field, pool.path, pool.id_field)
    if p.bucket_field in frame.columns:
        bucket = _bucket_names(frame, p.bucket_field, pool.path, pool.id_field)
    elif quality is None:
        raise ConfigError(
            f"{ctx.key}.params: the pool needs a {p.bucket_field!r} or {p.quality_field!r} "
            f"column ({pool.path})"
        )
    inputs.ids = pa.array(ids.cast(pl.String).to_list(), pa.string())
    inputs.buckets = QualityBuckets(bucket, quality, fit, fit_path)
    inputs.origin.update(fit=fit_path, pool=str(pool.path))
