"""Loader of the `retrieval` input (cet): the corpus (``embedding.output``), the queries
(every ``queries`` section, concatenated; ids unique), and the judgement tables named in the
parameters: ``qrels`` (``query_id, doc_id[, relevance]``), ``judged`` (``query_id, doc_id``)
and ``provenance`` (``query_id, doc_id, retriever, rank``). Errors name the file, the column
and the first bad row."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tamis.config import ConfigError, IndexConfig
from tamis.embeddings.store import part_offsets
from tamis.inputs.context import RETRIEVAL, SelectionInputs, StageContext, input_loader
from tamis.inputs.embeddings import pool_embeddings_dir, query_embeddings
from tamis.records import InputError, read_table_files

ID_COLUMNS = ("query_id", "doc_id", "retriever")


@dataclass
class RetrievalInputs:
    corpus_dir: str
    query_ids: list[str]
    query_vectors: np.ndarray  # (Q, dim) float32
    # (embeddings part, row of its first query): Beam workers mine whole parts.
    query_parts: list[tuple[str, int]]
    qrels: dict[str, pa.Array | np.ndarray]
    judged: dict[str, pa.Array | np.ndarray] | None
    provenance: dict[str, pa.Array | np.ndarray] | None
    index_config: IndexConfig  # the index section: the FAISS index candidates are mined from


def read_pair_table(
    path: str, key: str, extra: tuple[str, ...] = (), optional: tuple[str, ...] = ()
) -> dict[str, pa.Array | np.ndarray]:
    """`query_id`, `doc_id` (Arrow strings), the `extra` columns and those `optional`
    columns present (float64 numbers; `retriever` stays strings), from a Parquet/JSONL
    table; errors name the file, the column and the first bad row."""
    try:
        table = read_table_files(path)
    except (InputError, FileNotFoundError, OSError) as err:
        raise InputError(f"{key}: {err}") from None
    columns: dict[str, pa.Array | np.ndarray] = {}
    for name in ("query_id", "doc_id", *extra, *(c for c in optional if c in table.column_names)):
        if name not in table.column_names:
            raise InputError(
                f"{key}: {path} has no {name!r} column (columns: {', '.join(table.column_names)})"
            )
        column = table.column(name)
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError(f"{key}: {path} row {row + 1}: {name} is null")
        if name in ID_COLUMNS:
            columns[name] = column.cast(pa.string()).combine_chunks()
        else:
            try:
                columns[name] = column.to_numpy().astype(np.float64)
            except (pa.ArrowInvalid, TypeError, ValueError):
                raise InputError(f"{key}: {path}: {name} must be numeric") from None
    return columns


def positions_in(values: pa.Array, known: pa.Array) -> np.ndarray:
    """int64 position of each value in `known` (-1 where absent): one Arrow hash join, no
    Python strings (provenance can hold tens of millions of rows)."""
    return pc.index_in(values, value_set=known).fill_null(-1).to_numpy().astype(np.int64)


def all_queries(ctx: StageContext) -> tuple[list[str], np.ndarray, list, dict]:
    """All query ids and vectors (sections concatenated), their parts for Beam, origins."""
    if not ctx.config.queries:
        raise ConfigError("queries: cet needs the queries to mine candidates for")
    ids: list[str] = []
    vectors, parts, origins = [], [], {}
    for task, source in ctx.config.queries.items():
        task_ids, task_vectors, origins[task] = query_embeddings(ctx, task, source)
        parts += [(path, len(ids) + first) for path, first in part_offsets(
            origins[task]["embeddings"])]  # fmt: skip
        ids += task_ids
        vectors.append(task_vectors)
    seen: set[str] = set()
    for qid in ids:
        if qid in seen:
            raise ConfigError(f"queries: query id {qid!r} appears twice (ids must be unique)")
        seen.add(qid)
    return ids, np.concatenate(vectors), parts, origins


@input_loader(RETRIEVAL)
def load_retrieval(ctx: StageContext, inputs: SelectionInputs) -> None:
    from tamis.embeddings.store import read_ids

    p = ctx.params
    key = f"{ctx.key}.params"
    corpus_dir, manifest = pool_embeddings_dir(ctx.config)
    query_ids, query_vectors, query_parts, origins = all_queries(ctx)
    qrels = read_pair_table(p.qrels, f"{key}.qrels", optional=("relevance",))
    judged = read_pair_table(p.judged, f"{key}.judged") if p.judged is not None else None
    provenance = None
    if p.provenance is not None:
        provenance = read_pair_table(p.provenance, f"{key}.provenance", ("retriever", "rank"))
        rank = provenance["rank"]
        bad = (rank < 1) | (rank != np.round(rank))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{key}.provenance: {p.provenance} row {row + 1}: rank must be a whole number "
                f">= 1, got {rank[row]}"
            )
    inputs.ids = read_ids(corpus_dir)
    inputs.dim = manifest["model"].get("dim")
    inputs.retrieval = RetrievalInputs(
        corpus_dir,
        query_ids,
        query_vectors,
        query_parts,
        qrels,
        judged,
        provenance,
        ctx.config.index,
    )
    inputs.origin.update(
        embeddings={"path": corpus_dir, "fingerprint": manifest.get("fingerprint")},
        queries=origins,
        qrels=p.qrels,
        provenance=p.provenance,
        judged=p.judged,
    )
