"""Loaders of the pool embeddings (``embedding.output``) and the target tasks' query
vectors (the ``queries`` section: records embedded like the pool, or embeddings dirs)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Sequence

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
from tamis.inputs.context import (
    EMBEDDINGS,
    QUERY_EMBEDDINGS,
    SelectionInputs,
    StageContext,
    input_loader,
    params_value,
)
from tamis.records import InputError


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
    inputs.dim = manifest["model"].get("dim")
    inputs.blocks = lambda: finite_blocks(pool_dir, ids)
    inputs.index = ctx.config.index
    inputs.origin["embeddings"] = {"path": pool_dir, "fingerprint": manifest.get("fingerprint")}


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
