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
from tamis.inputs.skills import read_frame
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


@input_loader(BUCKETED_POOL)
def load_bucketed_pool(ctx: StageContext, inputs: SelectionInputs) -> None:
    p = ctx.params
    fit_path = require(p.fit, f"{ctx.key}.params.fit")
    fit = read_fit_json(fit_path)
    pool = require(ctx.config.pool, "pool")
    frame = read_frame(pool.path)
    if pool.id_field not in frame.columns:
        raise InputError(f"{pool.path}: no {pool.id_field!r} column")
    bucket = quality = None
    if p.quality_field in frame.columns:
        quality = frame.get_column(p.quality_field).cast(pl.Float64).to_numpy()
    if p.bucket_field in frame.columns:
        bucket = frame.get_column(p.bucket_field).cast(pl.String).to_list()
    elif quality is None:
        raise ConfigError(
            f"{ctx.key}.params: the pool needs a {p.bucket_field!r} or {p.quality_field!r} "
            f"column ({pool.path})"
        )
    inputs.ids = pa.array(frame.get_column(pool.id_field).cast(pl.String).to_list(), pa.string())
    inputs.buckets = QualityBuckets(bucket, quality, fit, fit_path)
    inputs.origin.update(fit=fit_path, pool=str(pool.path))
