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
import io
import json
import logging
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from tamis.config import Config, ConfigError, PoolConfig, QuerySource, RunnerConfig, require
from tamis.embeddings.store import (
    embeddings_manifest,
    iter_vector_blocks,
    read_embeddings,
    read_ids,
)
from tamis.pipelines.embed import run_embed, versions
from tamis.records import (
    InputError,
    atomic_write,
    iter_pool_records,
    write_json_atomic,
    write_jsonl_atomic,
)
from tamis.selectors.base import (
    QUERY_EMBEDDINGS,
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
) -> tuple[np.ndarray, dict]:
    """One task's query vectors: read from an embeddings dir, or embedded like the pool."""
    if source.embeddings is not None:
        _, vectors = read_embeddings(source.embeddings)
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
        _, vectors = read_embeddings(output)
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
    return vectors, origin


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
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    atomic_write(FileSystems.join(output, SUBSET_PARQUET), buffer.getvalue())
    lines = [json.dumps(row, ensure_ascii=False, default=str) for row in rows]
    write_jsonl_atomic(FileSystems.join(output, SUBSET_JSONL), lines)


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


def run_select(config: Config, beam_args: list[str] | None = None) -> dict:
    """Run the configured selector over finished embeddings; write and return the manifest."""
    started = time.perf_counter()
    selection_cfg = require(config.selection, "selection")
    output = require(selection_cfg.output, "selection.output")
    selector = make_selector(selection_cfg.selector, selection_cfg.params)
    pool_dir = require(config.embedding.output, "embedding.output")
    try:
        pool_manifest = embeddings_manifest(pool_dir)
    except InputError as err:
        raise ConfigError(f"embedding.output: {err}") from err
    ids = read_ids(pool_dir)
    dim = pool_manifest["model"].get("dim")

    queries, query_origins = {}, {}
    if QUERY_EMBEDDINGS in selector.needs:
        if not config.queries:
            raise ConfigError(f"queries: selector {selector.name!r} needs target-task queries")
        for task, source in config.queries.items():
            vectors, query_origins[task] = query_embeddings(config, task, source, output)
            if vectors.shape[1] != dim:
                raise ConfigError(
                    f"queries.{task}: query dimension {vectors.shape[1]} does not match the "
                    f"pool embeddings ({dim}, {pool_dir})"
                )
            queries[task] = vectors

    excluded = duplicate_positions(config, ids) if selection_cfg.deduplicate else None
    n_excluded = 0 if excluded is None else len(excluded)
    budget = parse_budget(selection_cfg.budget, len(ids) - n_excluded)
    inputs = SelectionInputs(
        ids=ids,
        blocks=lambda: iter_vector_blocks(pool_dir),
        dim=dim,
        queries=queries,
        excluded=excluded,
    )
    select_started = time.perf_counter()
    if selection_cfg.distributed or config.runner.name != "local":
        selection = _rds_on_beam(config, selector, inputs, budget, pool_dir, output, beam_args)
    else:
        selection = selector.select(inputs, budget, selection_cfg.seed)
    select_seconds = time.perf_counter() - select_started

    wanted = set(selection.ids)
    fields = None
    if selection_cfg.join_records or selection_cfg.label_field:
        fields = _record_fields(config, wanted)
    write_subset(output, subset_rows(selection, fields if selection_cfg.join_records else None))
    counts: dict[str, Any] = {
        "pool": len(ids),
        "excluded_duplicates": n_excluded,
        "candidates": len(ids) - n_excluded,
        "budget": budget,
        "selected": len(selection),
    }
    if "task" in selection.columns:
        counts["per_task"] = dict(Counter(selection.columns["task"]))
    manifest = {
        "stage": "select",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "selector": selector.name,
        "params": {k: v for k, v in vars(selector.params).items()},
        "config": config.to_dict(),
        "inputs": {
            "embeddings": {"path": pool_dir, "fingerprint": pool_manifest.get("fingerprint")},
            "queries": query_origins,
        },
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
