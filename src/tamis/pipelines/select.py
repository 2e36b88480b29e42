"""The select stage: embeddings (+ queries) -> the configured selector -> a subset directory.

Subset directory (the public contract):
- ``subset.parquet`` and ``subset.jsonl``: ``id``, ``rank`` (0-based pick order), ``score``,
  ``weight``, ``selector``, the selector's columns (e.g. ``task``), and with
  ``join_records: true`` the original record's fields, so
  ``datasets.load_dataset("parquet", data_files=".../subset.parquet")`` is a fine-tuning set.
- ``manifest.json``: resolved config, inputs (embeddings and query fingerprints), counts,
  the selector's statistics, seconds, versions.

Nothing algorithmic lives here: it reads, calls the selector's pure `select`, writes.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from tamis.config import Config, ConfigError, PoolConfig, QuerySource, RunnerConfig, require
from tamis.embeddings.store import (
    embeddings_manifest,
    iter_vector_blocks,
    read_embeddings,
    read_ids,
)
from tamis.pipelines.embed import run_embed, versions
from tamis.probabilities import (
    ProbabilityTable,
    flagged_ids,
    positions_of,
    probabilities_from_rows,
    read_id_list,
    read_probability_table,
)
from tamis.records import (
    InputError,
    iter_pool_records,
    write_json_atomic,
    write_jsonl_atomic,
    write_parquet_atomic,
)
from tamis.selectors.base import (
    BUCKETED_POOL,
    EMBEDDINGS,
    LABELED,
    PROBABILITIES,
    QUERY_EMBEDDINGS,
    RETRIEVAL,
    SKILLS,
    STREAM_ITEMS,
    Selection,
    SelectionInputs,
    make_selector,
    parse_budget,
)

log = logging.getLogger(__name__)

SUBSET_PARQUET = "subset.parquet"
SUBSET_JSONL = "subset.jsonl"
MANIFEST = "manifest.json"


def query_embeddings(
    config: Config, task: str, source: QuerySource, work_dir: str
) -> tuple[list[str], np.ndarray, dict]:
    """One task's query ids and vectors: read from an embeddings dir, or embedded like the
    pool; and where they came from."""
    if source.embeddings is not None:
        ids, vectors = read_embeddings(source.embeddings)
        manifest = embeddings_manifest(source.embeddings)
        origin = {"embeddings": source.embeddings, "fingerprint": manifest.get("fingerprint")}
        where = source.embeddings
    else:
        # Same encoder, pooling and template as the pool: only the input and output change.
        query_config = copy.deepcopy(config)
        pool = config.pool or PoolConfig(path=str(source.path))
        query_config.pool = dataclasses.replace(pool, path=str(source.path), strict=False)
        # Query sets are small: embed them here whatever runner the pool used.
        query_config.runner = RunnerConfig()
        output = FileSystems.join(work_dir, "queries", task)
        query_config.embedding.output = output
        manifest = run_embed(query_config, progress=False, overwrite=True)
        ids, vectors = read_embeddings(output)
        origin = {
            "path": source.path,
            "embeddings": output,
            "fingerprint": manifest["fingerprint"],
            "rejected": manifest["counts"]["rejected"],
        }
        where = source.path
    if len(vectors) == 0:
        raise ConfigError(f"queries.{task}: no valid query records in {where}")
    origin["queries"] = len(vectors)
    return ids, vectors, origin


def duplicate_positions(config: Config, ids: pa.Array) -> np.ndarray:
    """Pool positions whose rendered text repeats an earlier record's (the first is kept)."""
    from tamis.embeddings.encoder import chat_template_function

    pool = require(config.pool, "pool")
    chat = chat_template_function(config.embedding) if pool.template == "chat" else None
    position = {rid: i for i, rid in enumerate(ids.to_pylist())}
    seen: set[bytes] = set()
    duplicates = []
    for record in iter_pool_records(pool, chat):
        digest = hashlib.blake2b(record.text.encode("utf-8"), digest_size=16).digest()
        if digest in seen and record.id in position:
            duplicates.append(position[record.id])
        seen.add(digest)
    return np.asarray(sorted(duplicates), dtype=np.int64)


def _record_fields(config: Config, wanted: set[str]) -> dict[str, dict]:
    """id -> whole pool record for the wanted ids (one pass over the pool)."""
    pool = require(config.pool, "pool")
    found = {}
    for record in iter_pool_records(pool, keep_fields=True):
        if record.id in wanted and record.id not in found:
            found[record.id] = record.fields
    return found


def subset_rows(selection: Selection, fields: dict[str, dict] | None) -> list[dict]:
    """Subset rows; joined record fields never overwrite the subset's own columns."""
    rows = selection.to_table().to_pylist()
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


def _rds_on_beam(config, selector, inputs, budget, pool_dir, output, beam_args) -> Selection:
    from tamis.pipelines.select_beam import rds_on_beam

    if selector.name != "rds" or selector.params.query_round_robin:
        raise ConfigError(
            "selection.distributed: only rds with multi_task round_robin or top runs on Beam "
            "workers; use runner.name: local for this selector"
        )
    names = list(inputs.queries)
    picks = rds_on_beam(
        pool_dir,
        [inputs.queries[t] for t in names],
        selector.params.aggregation,
        selector.params.multi_task,
        budget,
        output,
        config.runner,
        beam_args,
        inputs.excluded,
    )
    return selector.selection_from_picks(picks, inputs.ids, names)


def probability_table(config: Config, params: Any) -> ProbabilityTable:
    """The pool's class probabilities: from `params.probabilities`, else the pool records."""
    options = dict(
        field=params.field,
        kind=params.kind,
        temperature=params.temperature,
        blend_weight=params.blend_weight,
    )
    if params.probabilities is not None:
        id_field = config.pool.id_field if config.pool is not None else "id"
        return read_probability_table(params.probabilities, id_field=id_field, **options)
    pool = config.pool
    if pool is None:
        raise ConfigError(
            "selection.params.probabilities: required when there is no pool section "
            "(a Parquet or JSONL file with id and probabilities)"
        )
    rows = ((r.id, r.fields) for r in iter_pool_records(pool, keep_fields=True))
    return probabilities_from_rows(rows, source=f"pool {pool.path}", **options)


def labeled_positions(config: Config, params: Any, ids: pa.Array) -> tuple[np.ndarray, dict]:
    """Pool positions of the labelled examples named by `labeled` or `labeled_field`."""
    if params.labeled is not None and params.labeled_field is not None:
        raise ConfigError("selection.params: give labeled (a file of ids) or labeled_field")
    if params.labeled is not None:
        wanted = read_id_list(params.labeled)
        origin = {"path": params.labeled}
    elif params.labeled_field is not None:
        field = params.labeled_field
        source = getattr(params, "probabilities", None)
        if source is not None:
            wanted = flagged_ids(source, field)
            origin = {"path": source, "field": field}
        else:
            pool = require(config.pool, "pool")
            wanted = [
                r.id for r in iter_pool_records(pool, keep_fields=True) if r.fields.get(field)
            ]
            origin = {"path": pool.path, "field": field}
    else:
        return np.zeros(0, dtype=np.int64), {"count": 0}
    positions = np.unique(positions_of(ids, wanted, "selection.params.labeled"))
    origin["count"] = len(positions)
    return positions, origin


def run_select(config: Config, beam_args: list[str] | None = None) -> dict:
    """Run the configured selector over finished embeddings; write and return the manifest."""
    started = time.perf_counter()
    selection_cfg = require(config.selection, "selection")
    output = require(selection_cfg.output, "selection.output")
    selector = make_selector(selection_cfg.selector, selection_cfg.params)
    if STREAM_ITEMS in selector.needs:
        from tamis.pipelines.stream import run_stream_select

        return run_stream_select(config, selector, beam_args, started)
    if SKILLS in selector.needs:
        from tamis.pipelines.stat import run_stat_select

        return run_stat_select(config, selector, started)
    if RETRIEVAL in selector.needs:
        from tamis.pipelines.cet import run_cet_select

        return run_cet_select(config, selector, beam_args, started)
    if BUCKETED_POOL in selector.needs:
        from tamis.pipelines.scaling import run_scaling_select

        return run_scaling_select(config, selector, started)
    inputs_origin: dict[str, Any] = {}
    ids, dim, pool_dir = None, None, None
    # The pool is the embeddings dir's, unless the selector works on probabilities alone.
    if selector.needs & {EMBEDDINGS, QUERY_EMBEDDINGS} or PROBABILITIES not in selector.needs:
        pool_dir = require(config.embedding.output, "embedding.output")
        try:
            pool_manifest = embeddings_manifest(pool_dir)
        except InputError as err:
            raise ConfigError(f"embedding.output: {err}") from err
        ids = read_ids(pool_dir)
        dim = pool_manifest["model"].get("dim")
        inputs_origin["embeddings"] = {
            "path": pool_dir,
            "fingerprint": pool_manifest.get("fingerprint"),
        }

    probabilities = None
    if PROBABILITIES in selector.needs:
        table = probability_table(config, selector.params)
        if ids is None:
            ids = pa.array(table.ids, pa.string())
            probabilities = table.probs
        else:  # align to the embeddings' pool order
            where = f"the probabilities ({table.source})"
            rows = positions_of(table.ids, ids.to_pylist(), f"embedding.output {pool_dir}", where)
            probabilities = table.probs[rows]
        inputs_origin["probabilities"] = {
            "source": table.source,
            "fields": list(table.fields),
            "classes": table.n_classes,
        }

    queries, query_origins = {}, {}
    if QUERY_EMBEDDINGS in selector.needs:
        if not config.queries:
            raise ConfigError(f"queries: selector {selector.name!r} needs target-task queries")
        for task, source in config.queries.items():
            _, vectors, query_origins[task] = query_embeddings(config, task, source, output)
            if vectors.shape[1] != dim:
                raise ConfigError(
                    f"queries.{task}: query dimension {vectors.shape[1]} does not match the "
                    f"pool embeddings ({dim}, {pool_dir})"
                )
            queries[task] = vectors
        inputs_origin["queries"] = query_origins

    labeled = None
    if LABELED in selector.needs:
        labeled, inputs_origin["labeled"] = labeled_positions(config, selector.params, ids)

    excluded = duplicate_positions(config, ids) if selection_cfg.deduplicate else None
    n_excluded = 0 if excluded is None else len(excluded)
    not_candidates = np.zeros(len(ids), dtype=bool)
    for positions in (excluded, labeled):
        if positions is not None:
            not_candidates[positions] = True
    n_candidates = len(ids) - int(not_candidates.sum())
    if selection_cfg.budget == "per_class":
        if probabilities is None:
            raise ConfigError("selection.budget: per_class needs a selector over probabilities")
        budget = parse_budget(probabilities.shape[1], n_candidates)
    else:
        budget = parse_budget(selection_cfg.budget, n_candidates)
    inputs = SelectionInputs(
        ids=ids,
        blocks=(lambda: iter_vector_blocks(pool_dir)) if pool_dir is not None else None,
        dim=dim,
        queries=queries,
        excluded=excluded,
        probabilities=probabilities,
        labeled=labeled,
    )
    select_started = time.perf_counter()
    if selection_cfg.distributed or config.runner.name != "local":
        selection = _rds_on_beam(config, selector, inputs, budget, pool_dir, output, beam_args)
    else:
        selection = selector.select(inputs, budget, selection_cfg.seed)
    select_seconds = time.perf_counter() - select_started

    counts: dict[str, Any] = {
        "pool": len(ids),
        "excluded_duplicates": n_excluded,
        "labeled": 0 if labeled is None else len(labeled),
        "candidates": n_candidates,
        "budget": budget,
        "selected": len(selection),
    }
    if "task" in selection.columns:
        counts["per_task"] = dict(Counter(selection.columns["task"]))
    seconds = select_seconds
    return finish_select(config, selector, selection, counts, inputs_origin, seconds, started)


def finish_select(
    config: Config,
    selector: Any,
    selection: Selection,
    counts: dict[str, Any],
    inputs_origin: dict[str, Any],
    select_seconds: float,
    started: float,
) -> dict:
    """Write the subset (records joined if asked) and the manifest; return the manifest."""
    selection_cfg = require(config.selection, "selection")
    output = require(selection_cfg.output, "selection.output")
    fields = None
    if selection_cfg.join_records or selection_cfg.label_field:
        fields = _record_fields(config, set(selection.ids))
    write_subset(output, subset_rows(selection, fields if selection_cfg.join_records else None))
    manifest = {
        "stage": "select",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "selector": selector.name,
        "params": {k: v for k, v in vars(selector.params).items()},
        "config": config.to_dict(),
        "inputs": inputs_origin,
        "counts": counts,
        "info": selection.info,
        "seconds": {
            "select": round(select_seconds, 3),
            "wall": round(time.perf_counter() - started, 3),
        },
        "versions": versions(),
    }
    if selection_cfg.label_field:
        labels = {rid: (f or {}).get(selection_cfg.label_field) for rid, f in fields.items()}
        manifest["label_agreement"] = label_agreement(selection, labels)
    write_json_atomic(FileSystems.join(output, MANIFEST), manifest)
    return manifest
