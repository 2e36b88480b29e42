"""`tamis scaling fit` and `tamis scaling plan`: the data-filtering scaling laws from files.

fit: an observations table (``bucket``, ``samples_seen``, ``error`` or ``accuracy``,
optionally ``pool_size``) -> ``fit.json``. plan: ``fit.json`` and compute budgets ->
``plan.csv`` / ``plan.json`` (every top-m mixture at every budget, ``best`` marking the
argmin, and the Pareto frontier) and ``plan.png``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import polars as pl

from tamis.config import Config, ConfigError, require
from tamis.inputs.buckets import read_fit_json
from tamis.records import InputError, read_table_files
from tamis.selectors import scaling_laws
from tamis.selectors.scaling_laws import (
    ScalingFit,
    fit_from_json,
    fit_scaling_laws,
    mixture_errors,
    plan,
)

FIT = "fit.json"
PLAN_CSV = "plan.csv"
PLAN_JSON = "plan.json"
PLAN_PNG = "plan.png"


def parse_count(value: int | float | str, key: str) -> float:
    """A sample count: 12800000, 1.28e9, "12.8M", "1.28B", "100k"."""
    try:
        return scaling_laws.parse_count(value, key)
    except ValueError as err:
        raise ConfigError(str(err)) from None


TABLE_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".json", ".json.gz")


def read_observation_frame(path: str) -> pl.DataFrame:
    """The observations file as a frame (CSV here; Parquet and JSONL through the records
    readers, which name the file for an empty, cut or corrupt one)."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such observations file")
    if path.endswith(".csv"):
        try:
            return pl.read_csv(path, infer_schema_length=None)
        except pl.exceptions.NoDataError:
            raise InputError(f"{path}: empty file, no observations") from None
        except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as err:
            raise InputError(f"{path}: not a readable CSV table ({err})") from None
    if path.endswith((".parquet", ".pq", *TABLE_SUFFIXES)):
        return pl.from_arrow(read_table_files(path))
    raise InputError(f"{path}: observations must be .csv, .parquet or .jsonl")


def _number_column(frame: pl.DataFrame, name: str, path: str) -> pl.Series:
    """Column `name` as float64, or an InputError naming the first row that holds no finite
    number (text that is no number, null, NaN, infinity, true/false, a list)."""
    values = frame.get_column(name)
    if values.dtype.is_numeric() or values.dtype in (pl.String, pl.Null):
        cast = values.cast(pl.Float64, strict=False)
        bad = (cast.is_null() | ~cast.is_finite()).arg_true()
    else:  # booleans, lists, structs: no number at all
        cast, bad = values, pl.Series(range(len(values)))
    if len(bad):
        row = int(bad[0])
        value = values[row]
        if isinstance(value, pl.Series):
            value = value.to_list()
        raise InputError(f"{path}: row {row + 1}: {name!r} is not a finite number ({value!r})")
    return cast


def read_observations(path: str, default_pool_size: float | None) -> tuple[dict, dict]:
    """(bucket -> (samples_seen, error)), (bucket -> pool size), checked row by row: rows
    are 1-based data rows; every problem names the file, the row and the column."""
    frame = read_observation_frame(path)
    columns = frame.columns
    for name in ("bucket", "samples_seen"):
        if name not in columns:
            raise InputError(f"{path}: no {name!r} column (columns: {', '.join(columns)})")
    target = "error" if "error" in columns else "accuracy" if "accuracy" in columns else None
    if target is None:
        raise InputError(f"{path}: needs an 'error' or an 'accuracy' column")
    if frame.height == 0:
        raise InputError(f"{path}: no observations (only a header)")
    bucket = frame.get_column("bucket")
    if not (bucket.dtype.is_numeric() or bucket.dtype == pl.String):
        raise InputError(f"{path}: row 1: 'bucket' must be a name, got {bucket[0]!r}")
    names = bucket.cast(pl.String)
    blank = (names.is_null() | (names.str.strip_chars() == "")).arg_true()
    if len(blank):
        raise InputError(f"{path}: row {int(blank[0]) + 1}: 'bucket' is empty")
    frame = frame.with_columns(names.alias("bucket"))
    numeric = ["samples_seen", target] + (["pool_size"] if "pool_size" in columns else [])
    for name in numeric:
        frame = frame.with_columns(_number_column(frame, name, path).alias(name))

    def refuse(mask: pl.Series, message: str) -> None:
        rows = mask.arg_true()
        if len(rows):
            row = int(rows[0])
            value = frame.get_column(target)[row]
            raise InputError(
                f"{path}: row {row + 1}: {message.format(value=value)} (bucket {names[row]!r})"
            )

    refuse(frame.get_column("samples_seen") <= 0, "'samples_seen' must be positive")
    values = frame.get_column(target)
    refuse((values < 0) | (values > 1), f"{target!r} must be in [0, 1], got {{value:g}}")
    if "pool_size" in columns:
        refuse(frame.get_column("pool_size") <= 0, "'pool_size' must be positive")
    elif default_pool_size is None:
        raise ConfigError("scaling.pool_size: required when the observations have no pool_size")
    observations, sizes = {}, {}
    for bucket, group in frame.group_by("bucket", maintain_order=True):
        name = str(bucket[0])
        n_seen = group.get_column("samples_seen").to_numpy()
        values = group.get_column(target).to_numpy()
        error = values if target == "error" else 1.0 - values
        observations[name] = (n_seen, error)
        if "pool_size" in columns:
            size = group.get_column("pool_size").unique()
            if len(size) != 1:
                raise InputError(f"{path}: bucket {name!r} has several pool sizes")
            sizes[name] = float(size[0])
        else:
            sizes[name] = default_pool_size
    return observations, sizes


def run_fit(config: Config) -> dict:
    scaling = require(config.scaling, "scaling")
    path = require(scaling.observations, "scaling.observations")
    output = require(scaling.output, "scaling.output")
    pool_size = (
        parse_count(scaling.pool_size, "scaling.pool_size")
        if scaling.pool_size is not None
        else None
    )
    observations, sizes = read_observations(path, pool_size)
    try:
        fit = fit_scaling_laws(observations, sizes, a=scaling.fit.a, d=scaling.fit.d, z=scaling.z)
    except ValueError as err:
        raise ConfigError(f"scaling.observations: {err}") from None
    os.makedirs(output, exist_ok=True)
    result = fit.to_json()
    result["observations"] = path
    with open(os.path.join(output, FIT), "w") as f:
        json.dump(result, f, indent=2)
    return result


def load_fit(path: str) -> ScalingFit:
    """fit.json as a ScalingFit; a missing, non-JSON or partial file is an InputError."""
    try:
        return fit_from_json(read_fit_json(path))
    except ValueError as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{path}: {err}") from None


def run_plan(config: Config) -> dict:
    scaling = require(config.scaling, "scaling")
    output = require(scaling.output, "scaling.output")
    if not scaling.compute:
        raise ConfigError("scaling.compute: give the compute budgets (samples seen), e.g. [32M]")
    budgets = [parse_count(c, f"scaling.compute[{i}]") for i, c in enumerate(scaling.compute)]
    fit_path = os.path.join(output, FIT)
    fit = load_fit(fit_path)
    try:
        rows = plan(fit.buckets, fit.a, fit.d, budgets, fit.z)
    except ValueError as err:  # budgets are checked: the fit's buckets do not fit the law
        raise InputError(f"{fit_path}: {err}") from None
    table = [
        {
            "samples_seen": r.samples_seen,
            "top_m": r.top_m,
            "buckets": "+".join(r.buckets),
            "predicted_error": r.predicted_error,
            "best": r.best,
        }
        for r in rows
    ]
    frontier = [
        {
            "samples_seen": r["samples_seen"],
            "top_m": r["top_m"],
            "predicted_error": r["predicted_error"],
        }
        for r in table
        if r["best"]
    ]
    pl.DataFrame(table).write_csv(os.path.join(output, PLAN_CSV))
    result = {"rows": table, "frontier": frontier, "fit": os.path.join(output, FIT)}
    with open(os.path.join(output, PLAN_JSON), "w") as f:
        json.dump(result, f, indent=2)
    result["png"] = plot_plan(fit, budgets, frontier, os.path.join(output, PLAN_PNG))
    return result


def plot_plan(fit: ScalingFit, budgets: list[float], frontier: list[dict], path: str) -> str:
    """Predicted error vs samples seen, one curve per top-m mixture, the frontier marked."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    order = sorted(fit.buckets, key=lambda name: (fit.buckets[name]["b"], name))
    pool_size = fit.buckets[order[0]]["pool_size"]
    grid = np.geomspace(min(budgets) / 2, max(budgets) * 2, 200)
    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colors = colormaps["viridis"](np.linspace(0, 0.9, len(order)))
    for m in range(1, len(order) + 1):
        bs = [fit.buckets[n]["b"] for n in order[:m]]
        taus = [fit.buckets[n]["tau"] for n in order[:m]]
        curve = mixture_errors(grid, fit.a, bs, taus, fit.d, pool_size, fit.z)
        ax.plot(grid, curve, color=colors[m - 1], linewidth=1.2, label=f"top {m}")
    ax.scatter(
        [f["samples_seen"] for f in frontier],
        [f["predicted_error"] for f in frontier],
        color="tab:red",
        zorder=5,
        label="best at each budget",
    )
    for f in frontier:
        ax.annotate(f"top {f['top_m']}", (f["samples_seen"], f["predicted_error"]),
                    textcoords="offset points", xytext=(4, 6), fontsize="small")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("samples seen")
    ax.set_ylabel("predicted error")
    ax.set_title("data-filtering scaling laws: which top-m mixture wins")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
