"""The one select stage: load what the selector declares, restrict the candidates, call its
pure core (or its Beam form), write the subset and its extra tables through one writer.

Subset directory (the public contract):
- ``subset.parquet`` and ``subset.jsonl``: ``id``, ``rank`` (0-based pick order), ``score``,
  ``weight``, ``selector``, the selector's columns (e.g. ``task``), and with
  ``join_records: true`` the original record's fields, so
  ``datasets.load_dataset("parquet", data_files=".../subset.parquet")`` is a fine-tuning set;
- the selector's extra outputs (``decisions.parquet``, ``missing_skill_profile.parquet``,
  ``candidates.parquet``, ``review_queue.parquet`` ...);
- ``manifest.json``, written last (a stage without it did not finish): resolved config,
  inputs with fingerprints, counts, the selector's statistics, seconds, versions.

Nothing here knows a selector: every selector-specific step lives on the selector.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems

from tamis.config import Config, ConfigError, RecipeStageConfig, SelectionConfig, require
from tamis.inputs import StageContext, load_inputs
from tamis.inputs.context import TEXTS
from tamis.inputs.texts import later_copies
from tamis.pipelines.embed import run_embed, versions
from tamis.records import (
    InputError,
    atomic_write,
    iter_pool_records,
    read_table_files,
    write_json_atomic,
    write_jsonl_atomic,
    write_parquet_atomic,
)
from tamis.selectors import make_selector
from tamis.selectors.base import BeamJob, Selection, Selector, parse_budget

log = logging.getLogger(__name__)

SUBSET_PARQUET = "subset.parquet"
SUBSET_JSONL = "subset.jsonl"
MANIFEST = "manifest.json"


@dataclass
class StagePlan:
    """A stage ready to run: its config, its selector (parameters validated) and paths."""

    key: str  # "selection" or "recipe.stages[i]": the prefix of its error messages
    name: str
    spec: SelectionConfig | RecipeStageConfig
    selector: Selector
    output: str
    query_dir: str  # where query records are embedded


@dataclass
class KeptItems:
    """What a finished stage passes on: the ids it kept and their weights."""

    ids: pa.Array
    weight: np.ndarray
    source: str


def plan_stage(
    key: str, name: str, spec: SelectionConfig | RecipeStageConfig, output: str, query_dir: str
) -> StagePlan:
    """Build and check the stage's selector before any work (parameters, budget form)."""
    selector = make_selector(spec.selector, spec.params, key)
    with keys_of_stage(key):
        selector.validate()
        if spec.budget is None and selector.budget_required:
            raise ConfigError("selection.budget: required key missing")
        if spec.budget is not None and spec.budget != "per_class":
            # The form is checked now; the count against the candidates once they are known.
            parse_budget(spec.budget, 2**62)
    if spec.distributed and not selector.distributed:
        raise ConfigError(
            f"{key}.distributed: {selector.name} does not run on Beam workers; "
            "use distributed: false"
        )
    return StagePlan(key, name, spec, selector, output, query_dir)


@contextmanager
def keys_of_stage(key: str) -> Iterator[None]:
    """Selectors name their keys as in a one-stage config (``selection.params.k``); in a
    recipe the error names the stage's (``recipe.stages[2].params.k``)."""
    try:
        yield
    except (ConfigError, InputError) as err:
        message = str(err)
        if key == "selection" or not message.startswith("selection."):
            raise
        raise type(err)(key + message[len("selection") :]) from None


def read_kept(directory: str) -> KeptItems:
    """The ids and weights of a finished subset dir."""
    path = FileSystems.join(directory, SUBSET_PARQUET)
    if not FileSystems.exists(path):
        raise InputError(f"{directory}: no {SUBSET_PARQUET} (not a finished subset dir)")
    table = read_table_files(path)
    for column in ("id", "weight"):
        if column not in table.column_names:
            raise InputError(f"{path}: no {column!r} column")
    ids = table.column("id").cast(pa.string()).combine_chunks()
    weight = table.column("weight").to_numpy().astype(np.float64)
    return KeptItems(ids, weight, directory)


def _embed_queries(config: Config) -> dict:
    return run_embed(config, progress=False, overwrite=True)


def candidate_exclusions(
    plan: StagePlan, inputs: Any, previous: KeptItems | None
) -> tuple[np.ndarray, dict[str, int]]:
    """Pool positions that are not candidates (not kept by the previous stage, or a later
    copy of an exact duplicate text), and how many of each."""
    excluded = np.zeros(len(inputs.ids), dtype=bool)
    counts = {}
    if previous is not None:
        if not plan.selector.accepts_candidates:
            raise ConfigError(
                f"{plan.key}: {plan.selector.name} works on the whole pool; it cannot follow "
                "another stage (put it first)"
            )
        ids = inputs.ids if isinstance(inputs.ids, pa.Array) else pa.array(inputs.ids, pa.string())
        member = pc.is_in(ids, value_set=previous.ids).to_numpy(zero_copy_only=False)
        known = pc.is_in(previous.ids, value_set=ids).to_numpy(zero_copy_only=False)
        if not known.all():
            unknown = previous.ids.filter(pa.array(~known)).to_pylist()
            shown = ", ".join(repr(u) for u in unknown[:5])
            raise InputError(
                f"{plan.key}: {len(unknown)} ids kept by {previous.source} are not in this "
                f"stage's pool ({plan.selector.pool_input}): {shown}"
            )
        excluded |= ~member
        counts["not_kept_before"] = int((~member).sum())
    if plan.spec.deduplicate:
        copies, _ = later_copies(inputs.texts, ~excluded)
        excluded[copies] = True
        counts["excluded_duplicates"] = len(copies)
    return excluded, counts


def run_stage(
    config: Config,
    plan: StagePlan,
    previous: KeptItems | None = None,
    beam_args: list[str] | None = None,
    fingerprint: str | None = None,
) -> dict:
    """Run one stage; write its subset dir and return its manifest."""
    started = time.perf_counter()
    selector = plan.selector
    ctx = StageContext(
        config=config,
        key=plan.key,
        params=selector.params,
        pool_input=selector.pool_input,
        output=plan.output,
        query_dir=plan.query_dir,
        embed=_embed_queries,
    )
    with keys_of_stage(plan.key):
        return _run_stage(config, plan, ctx, previous, beam_args, fingerprint, started)


def _run_stage(config, plan, ctx, previous, beam_args, fingerprint, started) -> dict:
    selector, spec = plan.selector, plan.spec
    needs = set(selector.needs) | ({TEXTS} if spec.deduplicate else set())
    inputs = load_inputs(ctx, needs, lambda pool: budget_fits(selector, spec.budget, pool))
    excluded, exclusion_counts = candidate_exclusions(plan, inputs, previous)
    inputs.excluded = np.flatnonzero(excluded) if excluded.any() else None
    budget = selector.resolve_budget(spec.budget, inputs)

    select_started = time.perf_counter()
    on_beam = spec.distributed or (config.runner.name != "local" and selector.distributed)
    if on_beam:
        job = BeamJob(config.runner, beam_args, plan.output)
        selection = selector.select_distributed(inputs, budget, spec.seed, job)
    else:
        if config.runner.name != "local":
            log.info("%s runs on this machine (it has no Beam form)", selector.name)
        selection = selector.select(inputs, budget, spec.seed)
    select_seconds = time.perf_counter() - select_started
    if previous is not None:  # weights multiply along a recipe
        selection.weight = carried_weights(selection, previous)

    counts: dict[str, Any] = {
        "pool": len(inputs.ids),
        "excluded_duplicates": 0,
        **exclusion_counts,
        "labeled": 0 if inputs.labeled is None else len(inputs.labeled),
        "candidates": inputs.n_candidates,
        "budget": budget,
        **selection.counts,
        "selected": len(selection),
    }
    if "task" in selection.columns:
        counts["per_task"] = dict(Counter(selection.columns["task"]))
    return write_stage(config, plan, selection, counts, inputs.origin, select_seconds, started,
                       fingerprint)  # fmt: skip


def budget_fits(selector: Selector, budget: Any, pool: Any) -> None:
    """The budget against the whole pool, as soon as the pool is known (before query sets
    are embedded): candidates are never more, so a budget too large now stays too large."""
    if budget == "per_class":  # needs the probabilities, loaded later
        return
    try:
        selector.resolve_budget(budget, pool)
    except ConfigError as err:
        if "budget" in str(err):
            raise
    except Exception:  # noqa: BLE001 (it needs an input not loaded yet: checked later)
        return


def carried_weights(selection: Selection, previous: KeptItems) -> np.ndarray:
    """This stage's weights times the weights the previous stage gave the same ids."""
    ids = pa.array(selection.ids, pa.string())
    where = pc.index_in(ids, value_set=previous.ids).to_numpy(zero_copy_only=False)
    own = np.ones(len(selection)) if selection.weight is None else selection.weight
    return np.asarray(own, dtype=np.float64) * previous.weight[where.astype(np.int64)]


# ------------------------------------------------------------------------------ writing


def record_fields(config: Config, wanted: set[str]) -> dict[str, dict]:
    """id -> whole pool record for the wanted ids (one pass over the pool). A wanted id that
    two records share is an error: the subset could not say which record it is."""
    pool = require(config.pool, "pool")
    found: dict[str, dict] = {}
    where: dict[str, str] = {}
    for record in iter_pool_records(pool, keep_fields=True):
        if record.id not in wanted:
            continue
        if record.id in found:
            raise InputError(
                f"pool.path: id {record.id!r} is used by two records ({where[record.id]} and "
                f"{record.source}:{record.line}), so the subset cannot join its record; give "
                "every record its own id (pool.id_field) and embed again"
            )
        found[record.id] = record.fields
        where[record.id] = f"{record.source}:{record.line}"
    if len(found) < len(wanted):
        missing = sorted(wanted - set(found))
        shown = ", ".join(repr(m) for m in missing[:5])
        raise InputError(
            f"pool.path: {len(missing)} of the {len(wanted)} selected ids have no record in "
            f"{pool.path} ({shown}); is it the pool that was embedded?"
        )
    return found


def subset_rows(table: pa.Table, fields: dict[str, dict] | None) -> list[dict]:
    """Subset rows; joined record fields never overwrite the subset's own columns."""
    rows = table.to_pylist()
    if fields is None:
        return rows
    for row in rows:
        for key, value in fields.get(row["id"], {}).items():
            if key not in row:
                row[key] = value
            elif row[key] != value:
                row[f"record_{key}"] = value
    return rows


def label_agreement(selection: Selection, labels: dict[str, Any]) -> dict[str, dict]:
    """Per task: how many picks carry the task's name as their label."""
    result: dict[str, dict] = {}
    for rid, task in zip(selection.ids, selection.columns.get("task", []), strict=False):
        entry = result.setdefault(task, {"picked": 0, "on_label": 0})
        entry["picked"] += 1
        entry["on_label"] += int(str(labels.get(rid)) == task)
    return result


def write_subset(output: str, rows: list[dict]) -> None:
    if not FileSystems.exists(output):
        FileSystems.mkdirs(output)
    write_parquet_atomic(FileSystems.join(output, SUBSET_PARQUET), pa.Table.from_pylist(rows))
    write_rows_jsonl(FileSystems.join(output, SUBSET_JSONL), rows)


def write_rows_jsonl(path: str, rows: list[dict]) -> None:
    """Rows as JSON lines. Strict JSON has no NaN or infinity (e.g. the coverage radius of a
    first pick made with no labelled set): those become null here; Parquet keeps them."""
    lines = [
        json.dumps(
            {
                k: None if isinstance(v, float) and not math.isfinite(v) else v
                for k, v in row.items()
            },
            ensure_ascii=False,
            default=str,
        )
        for row in rows
    ]
    write_jsonl_atomic(path, lines)


def write_output(directory: str, name: str, value: Any) -> None:
    """One extra output by its extension: .parquet / .jsonl / .csv (an Arrow table), .json
    (a JSON value), .png (the image's bytes)."""
    path = FileSystems.join(directory, name)
    if name.endswith(".parquet"):
        write_parquet_atomic(path, value)
    elif name.endswith(".jsonl"):
        write_rows_jsonl(path, value.to_pylist())
    elif name.endswith(".csv"):
        import pyarrow.csv as pacsv

        buffer = pa.BufferOutputStream()
        pacsv.write_csv(value, buffer)
        atomic_write(path, buffer.getvalue().to_pybytes())
    elif name.endswith(".json"):
        write_json_atomic(path, value)
    elif name.endswith(".png"):
        atomic_write(path, value)
    else:
        raise ValueError(f"output {name!r}: expected a .parquet, .jsonl, .csv, .json or .png")


def write_stage(
    config: Config,
    plan: StagePlan,
    selection: Selection,
    counts: dict[str, Any],
    origin: dict[str, Any],
    select_seconds: float,
    started: float,
    fingerprint: str | None = None,
) -> dict:
    """Write the subset (records joined if asked), the extra outputs and, last, the
    manifest; return the manifest."""
    spec, selector = plan.spec, plan.selector
    if not FileSystems.exists(plan.output):
        FileSystems.mkdirs(plan.output)
    for name, value in selection.outputs.items():
        write_output(plan.output, name, value)
    fields = None
    if spec.join_records or spec.label_field:
        fields = record_fields(config, set(selection.ids))
    table = selection.to_table()
    write_subset(plan.output, subset_rows(table, fields if spec.join_records else None))
    manifest = {
        "stage": "select",
        "name": plan.name,
        "kind": selector.kind,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "selector": selector.name,
        "params": asdict(selector.params),
        "config": config.to_dict(),
        "inputs": origin,
        "counts": counts,
        "info": selection.info,
        "seconds": {
            "select": round(select_seconds, 3),
            "wall": round(time.perf_counter() - started, 3),
        },
        "versions": versions(),
    }
    if fingerprint is not None:
        manifest["fingerprint"] = fingerprint
    if spec.label_field:
        labels = {rid: (f or {}).get(spec.label_field) for rid, f in fields.items()}
        manifest["label_agreement"] = label_agreement(selection, labels)
    write_json_atomic(FileSystems.join(plan.output, MANIFEST), manifest)
    return manifest
