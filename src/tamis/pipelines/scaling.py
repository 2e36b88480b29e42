"""`tamis scaling fit` and `tamis scaling plan`: the data-filtering scaling laws from files.

fit: an observations table (``bucket``, ``samples_seen``, ``error`` or ``accuracy``,
optionally ``pool_size``) -> ``fit.json``. plan: ``fit.json`` and compute budgets ->
``plan.csv`` / ``plan.json`` (every top-m mixture at every budget, ``best`` marking the
argmin, and the Pareto frontier) and ``plan.png``.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import polars as pl

from tamis.config import Config, ConfigError, require
from tamis.records import InputError
from tamis.selectors.scaling_laws import ScalingFit, fit_scaling_laws, mixture_errors, plan

FIT = "fit.json"
PLAN_CSV = "plan.csv"
PLAN_JSON = "plan.json"
PLAN_PNG = "plan.png"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kKmMbBtT]?)\s*$")
_UNIT = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def parse_count(value: int | float | str, key: str) -> float:
    """A sample count: 12800000, 1.28e9, "12.8M", "1.28B", "100k"."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        count = float(value)
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ConfigError(f"{key}: expected a count like 32M or 1.28B, got {value!r}")
        count = float(match[1]) * _UNIT[match[2].lower()]
    if not count > 0:
        raise ConfigError(f"{key}: must be positive, got {value!r}")
    return count


def read_observations(path: str, default_pool_size: float | None) -> tuple[dict, dict]:
    """(bucket -> (samples_seen, error)), (bucket -> pool size), checked row by row."""
    if not os.path.exists(path):
        raise InputError(f"{path}: no such observations file")
    if path.endswith(".csv"):
        frame = pl.read_csv(path, infer_schema_length=None)
    elif path.endswith(".parquet"):
        frame = pl.read_parquet(path)
    elif path.endswith((".jsonl", ".ndjson")):
        frame = pl.read_ndjson(path)
    else:
        raise InputError(f"{path}: observations must be .csv, .parquet or .jsonl")
    columns = frame.columns
    for name in ("bucket", "samples_seen"):
        if name not in columns:
            raise InputError(f"{path}: no {name!r} column (columns: {', '.join(columns)})")
    target = "error" if "error" in columns else "accuracy" if "accuracy" in columns else None
    if target is None:
        raise InputError(f"{path}: needs an 'error' or an 'accuracy' column")
    numeric = ["samples_seen", target] + (["pool_size"] if "pool_size" in columns else [])
    for name in numeric:
        values = frame.get_column(name)
        cast = values.cast(pl.Float64, strict=False)
        bad = (cast.is_null() | cast.is_nan()).arg_true()
        if len(bad):
            row = int(bad[0])
            raise InputError(f"{path}: row {row + 1}: {name!r} is not a number ({values[row]!r})")
        frame = frame.with_columns(cast.alias(name))
    bad = (frame.get_column("samples_seen") <= 0).arg_true()
    if len(bad):
        row = int(bad[0])
        raise InputError(f"{path}: row {row + 1}: samples_seen must be positive")
    if "pool_size" not in columns and default_pool_size is None:
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
    if not os.path.exists(path):
        raise InputError(f"{path}: no fit; run `tamis scaling fit` first")
    with open(path) as f:
        data = json.load(f)
    return ScalingFit(
        data["a"], data["d"], data["buckets"], data["loss"], data["z"], data["method"]
    )


def run_plan(config: Config) -> dict:
    scaling = require(config.scaling, "scaling")
    output = require(scaling.output, "scaling.output")
    if not scaling.compute:
        raise ConfigError("scaling.compute: give the compute budgets (samples seen), e.g. [32M]")
    budgets = [parse_count(c, f"scaling.compute[{i}]") for i, c in enumerate(scaling.compute)]
    fit = load_fit(os.path.join(output, FIT))
    try:
        rows = plan(fit.buckets, fit.a, fit.d, budgets, fit.z)
    except ValueError as err:
        raise ConfigError(f"scaling: {err}") from None
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


def run_scaling_select(config: Config, selector, started: float) -> dict:
    """The pool items of the plan's best buckets at `params.compute` -> a subset dir."""
    import time

    from tamis.pipelines.select import finish_select
    from tamis.selectors.base import parse_budget
    from tamis.selectors.scaling_law import quantile_buckets
    from tamis.skills import read_frame

    selection_cfg = require(config.selection, "selection")
    p = selector.params
    fit = load_fit(require(p.fit, "selection.params.fit"))
    samples_seen = parse_count(
        require(p.compute, "selection.params.compute"), "selection.params.compute"
    )
    pool = require(config.pool, "pool")
    frame = read_frame(pool.path)
    id_field = pool.id_field
    if id_field not in frame.columns:
        raise InputError(f"{pool.path}: no {id_field!r} column")
    ids = frame.get_column(id_field).cast(pl.String).to_list()
    quality = None
    if p.quality_field in frame.columns:
        quality = frame.get_column(p.quality_field).cast(pl.Float64).to_numpy()
    select_started = time.perf_counter()
    keep, predicted = selector.best_buckets(fit, samples_seen)
    if p.bucket_field in frame.columns:
        buckets = frame.get_column(p.bucket_field).cast(pl.String).to_list()
        unknown = sorted(set(buckets) - set(fit.buckets))
        if unknown:
            raise InputError(
                f"{pool.path}: buckets {unknown[:5]} are not in the fit ({sorted(fit.buckets)})"
            )
    elif quality is not None:
        order = sorted(fit.buckets, key=lambda name: (fit.buckets[name]["b"], name))
        buckets = quantile_buckets(quality, order)
    else:
        raise ConfigError(
            f"selection.params: the pool needs a {p.bucket_field!r} or {p.quality_field!r} column"
        )
    budget = parse_budget(selection_cfg.budget, len(ids))
    selection = selector.select_buckets(ids, buckets, keep, quality, budget)
    seconds = time.perf_counter() - select_started
    selection.info = {
        "compute": samples_seen,
        "best_buckets": keep,
        "top_m": len(keep),
        "predicted_error": predicted,
    }
    counts = {"pool": len(ids), "in_best_buckets": sum(b in set(keep) for b in buckets),
              "budget": budget, "selected": len(selection)}  # fmt: skip
    origin = {"fit": p.fit, "pool": str(pool.path)}
    return finish_select(config, selector, selection, counts, origin, seconds, started)
