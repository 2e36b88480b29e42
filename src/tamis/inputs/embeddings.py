"""Loaders of the pool embeddings (``embedding.output``) and the target tasks' query
vectors (the ``queries`` section: records embedded like the pool, or embeddings dirs)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems

from tamis.config import Config, ConfigError, PoolConfig, QuerySource, RunnerConfig, require
from tamis.embeddings.store import (
    embeddings_manifest,
    iter_vector_blocks,
    read_embeddings,
    read_ids,
)
from tamis.inputs.context import (
    EMBEDDINGS,
    QUERY_EMBEDDINGS,
    SelectionInputs,
    StageContext,
    input_loader,
    params_value,
)
from tamis.records import InputError, InputFile, content_digest, resolve_inputs

log = logging.getLogger(__name__)


def pool_embeddings_dir(config: Config) -> tuple[str, dict]:
    """`embedding.output` and its manifest (a finished embeddings dir, else a ConfigError)."""
    pool_dir = require(config.embedding.output, "embedding.output")
    try:
        return pool_dir, embeddings_manifest(pool_dir)
    except InputError as err:
        raise ConfigError(f"embedding.output: {err}") from err


@input_loader(EMBEDDINGS)
def load_pool_embeddings(ctx: StageContext, inputs: SelectionInputs) -> None:
    pool_dir, manifest = pool_embeddings_dir(ctx.config)
    ids = read_ids(pool_dir)
    if ctx.pool_input == EMBEDDINGS:
        inputs.ids = ids
    elif ids.to_pylist() != list(inputs.ids):
        raise InputError(
            f"embedding.output: {pool_dir} holds other ids than the pool ({ctx.pool_input})"
        )
    if ctx.pool_input == EMBEDDINGS and ctx.config.pool is not None:
        check_pool_was_embedded(ctx.config.pool, pool_dir, manifest, ids)
    inputs.dim = manifest["model"].get("dim")
    inputs.blocks = lambda: finite_blocks(pool_dir, ids)
    inputs.index = ctx.config.index
    inputs.origin["embeddings"] = {"path": pool_dir, "fingerprint": manifest.get("fingerprint")}


def check_pool_was_embedded(
    pool: PoolConfig, pool_dir: str, manifest: dict, embedded_ids: pa.Array
) -> None:
    """`pool.path` must hold the records embedded into `pool_dir` (the subset joins them;
    labels and texts are read from them). Same content as the embed manifest records: fine.
    Other content (e.g. labels updated between active-learning rounds): its ids must be the
    embedded ones, else an InputError. Manifests without digests (imported vectors, older
    tamis) are not checked."""
    recorded = [i.get("digest") for i in manifest.get("inputs", []) if isinstance(i, dict)]
    if not recorded or not all(recorded):
        return
    try:
        now = [_digest(i) for i in resolve_inputs(pool.path, pool.format)]
    except InputError as err:
        raise InputError(f"pool.path: {err}") from None
    if sorted(now) == sorted(recorded):
        return
    from tamis.records import iter_pool_records

    pool_ids = pa.array([r.id for r in iter_pool_records(pool)], pa.string())
    unknown = pc.invert(pc.is_in(embedded_ids, value_set=pool_ids))
    n_unknown = pc.sum(unknown).as_py() or 0
    not_embedded = len(pool_ids) - (len(embedded_ids) - n_unknown)
    rejected = manifest.get("counts", {}).get("rejected", 0)
    if n_unknown or not_embedded > rejected:
        shown = ", ".join(repr(i) for i in embedded_ids.filter(unknown).to_pylist()[:5])
        detail = (
            f"{n_unknown} embedded ids are not in it ({shown})"
            if n_unknown
            else f"it has {not_embedded} records that were not embedded"
        )
        raise InputError(
            f"pool.path: {pool.path} is not the pool embedded into {pool_dir}: {detail}; "
            "point pool.path at that pool, or embed this one (tamis embed) into another "
            "embedding.output"
        )
    log.info(
        "pool.path %s changed since it was embedded (same ids); texts edited since then "
        "keep their old vectors until tamis embed runs again",
        pool.path,
    )


def _digest(source: InputFile) -> str:
    """content_digest, once per process for an unchanged local file (a recipe's stages
    each check the pool)."""
    if "://" in source.path or not os.path.isfile(source.path):
        return content_digest(source)
    stat = os.stat(source.path)
    return _cached_digest(source, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _cached_digest(source: InputFile, size: int, mtime_ns: int) -> str:
    return content_digest(source)


def non_finite_error(where: str, ids: Sequence[str] | pa.Array, rows: np.ndarray) -> InputError:
    """NaN / infinite vectors: how many and the first ids (a vector like that would be
    ranked first, last or silently left out)."""
    shown = ", ".join(repr(i) for i in ids_of(ids, rows[:5]))
    return InputError(
        f"{where}: {len(rows)} vectors hold NaN or infinite values (ids {shown}); "
        "re-embed or drop those records"
    )


def ids_of(ids: Sequence[str] | pa.Array, rows: np.ndarray) -> list[str]:
    if isinstance(ids, pa.Array | pa.ChunkedArray):
        return ids.take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()
    return [ids[int(i)] for i in rows]


def finite_blocks(pool_dir: str, ids: pa.Array) -> Iterator[np.ndarray]:
    """The pool's vector blocks, each checked as it is read: a NaN or infinite vector is an
    InputError with the count over the whole pool and the first ids."""
    blocks = iter_vector_blocks(pool_dir)
    offset = 0
    for block in blocks:
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            rows = [offset + np.flatnonzero(bad)]
            offset += len(block)
            for rest in blocks:  # the rest of the pool, for the count
                rows.append(offset + np.flatnonzero(~np.isfinite(rest).all(axis=1)))
                offset += len(rest)
            raise non_finite_error(f"embedding.output {pool_dir}", ids, np.concatenate(rows))
        offset += len(block)
        yield block


def query_embeddings(
    ctx: StageContext, task: str, source: QuerySource, key: str | None = None
) -> tuple[list[str], np.ndarray, dict]:
    """One task's query ids and vectors (`key` names them in errors; default
    queries.TASK): read from an embeddings dir, or embedded like the pool; and where they
    came from."""
    key = key or f"queries.{task}"
    config = ctx.config
    if source.embeddings is not None:
        ids, vectors = read_embeddings(source.embeddings)
        manifest = embeddings_manifest(source.embeddings)
        origin = {"embeddings": source.embeddings, "fingerprint": manifest.get("fingerprint")}
        where = source.embeddings
    else:
        if ctx.embed is None:
            raise ConfigError(f"{key}: query records cannot be embedded here")
        # Same encoder, pooling and template as the pool: only the input and output change.
        query_config = copy.deepcopy(config)
        pool = config.pool or PoolConfig(path=str(source.path))
        query_config.pool = dataclasses.replace(pool, path=str(source.path), strict=False)
        # Query sets are small: embed them here whatever runner the pool used.
        query_config.runner = RunnerConfig()
        output = FileSystems.join(ctx.query_dir, task)
        query_config.embedding.output = output
        manifest = ctx.embed(query_config)
        ids, vectors = read_embeddings(output)
        origin = {
            "path": source.path,
            "embeddings": output,
            "fingerprint": manifest["fingerprint"],
            "rejected": manifest["counts"]["rejected"],
        }
        where = source.path
        rejected = manifest["counts"]["rejected"]
        if rejected:  # the run goes on with the valid queries: say so where it is seen
            reasons = ", ".join(
                f"{k} {v}" for k, v in manifest["counts"]["rejected_by_reason"].items()
            )
            log.warning(
                "%s: %d of %d query records rejected (%s), selecting with the other %d; "
                "see %s",
                key, rejected, manifest["counts"]["records"], reasons,
                manifest["counts"]["embedded"], FileSystems.join(output, "rejected.jsonl"),
            )  # fmt: skip
    if len(vectors) == 0:
        raise ConfigError(f"{key}: no valid records in {where}")
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if len(bad):
        raise non_finite_error(f"{key} ({where})", ids, bad)
    origin["queries"] = len(vectors)
    return ids, vectors, origin


def chosen_tasks(ctx: StageContext) -> dict[str, QuerySource]:
    """The `queries` sections a stage uses: `params.tasks` when given, else all of them."""
    tasks = params_value(ctx, "tasks") or list(ctx.config.queries)
    unknown = [t for t in tasks if t not in ctx.config.queries]
    if unknown:
        known = ", ".join(ctx.config.queries) or "none"
        raise ConfigError(f"{ctx.key}.params.tasks: {unknown} not in queries (known: {known})")
    return {t: ctx.config.queries[t] for t in tasks}


@input_loader(QUERY_EMBEDDINGS)
def load_query_embeddings(ctx: StageContext, inputs: SelectionInputs) -> None:
    if not ctx.config.queries:
        raise ConfigError("queries: this selector needs target-task queries")
    origins = {}
    for task, source in chosen_tasks(ctx).items():
        _, vectors, origins[task] = query_embeddings(ctx, task, source)
        if inputs.dim is not None and vectors.shape[1] != inputs.dim:
            raise ConfigError(
                f"queries.{task}: query dimension {vectors.shape[1]} does not match the "
                f"pool embeddings ({inputs.dim}, {ctx.config.embedding.output})"
            )
        inputs.queries[task] = vectors
    inputs.origin["queries"] = origins
