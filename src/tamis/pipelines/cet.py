"""The cet select stage: queries + corpus embeddings + qrels (+ pool provenance) -> mined
candidates with false-negative probabilities, kept hard negatives, and a review queue.

Inputs: the corpus is ``embedding.output`` (a `tamis embed` dir); the queries are the
``queries`` section (records embedded like the corpus, or an embeddings dir; several
sections are concatenated and their ids must be unique); ``selection.params.qrels`` holds
``query_id, doc_id[, relevance]``; ``provenance`` the pool-building retrievers' ranked lists
``query_id, doc_id, retriever, rank``; ``judged`` the judged pairs ``query_id, doc_id``.

Output directory:
- ``candidates.parquet``: every mined (query_id, doc_id, rank, score) with ``labelled``,
  ``known_negative``, ``p_relevant``, ``p_selected``, ``p_false_negative``,
  ``negative_weight``, ``exclude``;
- ``subset.parquet`` / ``subset.jsonl``: the kept hard negatives (``id`` is the document,
  ``query_id``, ``retrieval_rank``, ``weight`` the negative weight);
- ``review_queue.parquet`` / ``review_queue.jsonl``: the unlabelled candidates most likely
  to be false negatives, for annotators;
- ``manifest.json``.

Mining runs FAISS on this machine (GPU when FAISS sees one), or on Beam workers with
``selection.distributed: true`` / a non-local runner: the index is saved next to the output
and each worker searches whole query parts.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from tamis.config import Config, ConfigError, IndexConfig, require
from tamis.embeddings.store import embeddings_manifest, read_part
from tamis.index.faiss_index import EmbeddingIndex, build_from_embeddings_dir
from tamis.index.mining import MinedCandidates, concat_candidates, mine_top_k
from tamis.records import (
    InputError,
    atomic_write,
    read_bytes,
    read_table_files,
    write_parquet_atomic,
)
from tamis.selectors.base import Selection
from tamis.selectors.cet import CandidateArrays, CetEstimate, CetSelector

log = logging.getLogger(__name__)

CANDIDATES = "candidates.parquet"
REVIEW_PARQUET = "review_queue.parquet"
REVIEW_JSONL = "review_queue.jsonl"
MINED_DIR = "_mined"
INDEX_FILE = "_index/corpus.faiss"


# ------------------------------------------------------------------------ input tables


def read_pair_table(
    path: str, key: str, extra: tuple[str, ...] = (), optional: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """`query_id`, `doc_id` (as strings), the `extra` columns and those `optional` columns
    present, from a Parquet/JSONL table; errors name the file, the column and the first
    bad row."""
    try:
        table = read_table_files(path)
    except (InputError, FileNotFoundError, OSError) as err:
        raise InputError(f"{key}: {err}") from None
    wanted = ("query_id", "doc_id", *extra)
    columns = {}
    for name in (*wanted, *(c for c in optional if c in table.column_names)):
        if name not in table.column_names:
            raise InputError(
                f"{key}: {path} has no {name!r} column (columns: {', '.join(table.column_names)})"
            )
        column = table.column(name)
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError(f"{key}: {path} row {row + 1}: {name} is null")
        if name in ("query_id", "doc_id", "retriever"):
            columns[name] = np.asarray(column.cast(pa.string()).to_pylist(), dtype=object)
        else:
            try:
                columns[name] = column.to_numpy().astype(np.float64)
            except (pa.ArrowInvalid, TypeError, ValueError):
                raise InputError(f"{key}: {path}: {name} must be numeric") from None
    return columns


def pair_keys(
    query_ids: np.ndarray,
    doc_ids: np.ndarray,
    query_row: dict[str, int],
    doc_position: dict[str, int],
    n_docs: int,
) -> tuple[np.ndarray, np.ndarray]:
    """int64 keys query_row * n_docs + doc_position, and which pairs had both ids known."""
    q = np.fromiter((query_row.get(v, -1) for v in query_ids), np.int64, len(query_ids))
    d = np.fromiter((doc_position.get(v, -1) for v in doc_ids), np.int64, len(doc_ids))
    known = (q >= 0) & (d >= 0)
    return q[known] * n_docs + d[known], known


def provenance_rank_matrix(
    candidate_keys: np.ndarray, keys: np.ndarray, retriever: np.ndarray, rank: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """(n_candidates, R) ranks in each pool-building retriever (0: not ranked), and the
    retriever names in column order. A pair listed twice by one retriever keeps its best rank."""
    names = sorted(set(retriever.tolist()))
    matrix = np.zeros((len(candidate_keys), len(names)), dtype=np.int32)
    for j, name in enumerate(names):
        mine = retriever == name
        k, r = keys[mine], rank[mine]
        order = np.lexsort((r, k))
        k, r = k[order], r[order]
        first = np.r_[True, k[1:] != k[:-1]]
        k, r = k[first], r[first]
        where = np.searchsorted(k, candidate_keys)
        where = np.minimum(where, max(len(k) - 1, 0))
        hit = (k[where] == candidate_keys) if len(k) else np.zeros(len(candidate_keys), bool)
        matrix[hit, j] = r[where[hit]]
    return matrix, names


# ------------------------------------------------------------------------------ mining


class MineQueryPart(beam.DoFn):
    """One query embeddings part -> its top-k corpus candidates, written as an .npz file."""

    def __init__(self, index_path: str, index_config: IndexConfig, k: int, output: str):
        self.index_path, self.index_config = index_path, index_config
        self.k, self.output = k, output
        self.index: EmbeddingIndex | None = None

    def setup(self):
        c = self.index_config
        self.index = EmbeddingIndex.load(
            self.index_path, c.device, nprobe=c.nprobe, ef_search=c.ef_search
        )

    def process(self, part: tuple[str, int], self_positions: list | None):
        path, first_query = part
        vectors = read_part(path).vectors
        own = None
        if self_positions is not None:
            own = np.asarray(self_positions[first_query : first_query + len(vectors)], np.int64)
        batch = self.index_config.batch_size
        mined = mine_top_k(self.index, vectors, self.k, own, batch, first_query)
        buffer = io.BytesIO()
        np.savez(buffer, query=mined.query, doc=mined.doc, rank=mined.rank, score=mined.score)
        target = FileSystems.join(self.output, MINED_DIR, f"part-{first_query:012d}.npz")
        atomic_write(target, buffer.getvalue())
        yield target


def mine_on_beam(
    config: Config,
    params: Any,
    index: EmbeddingIndex,
    query_parts: list[tuple[str, int]],
    self_positions: np.ndarray | None,
    output: str,
    beam_args: list[str] | None,
) -> MinedCandidates:
    """Mine on Beam workers: the index is saved beside the output, each worker loads it
    once and searches whole query parts; the driver reads the parts' results in order."""
    from tamis.runners.options import make_runner

    index_path = FileSystems.join(output, INDEX_FILE)
    index.save(index_path)
    runner, options = make_runner(config.runner, beam_args)
    own = None if self_positions is None else self_positions.tolist()
    mine = MineQueryPart(index_path, config.index, params.k, output)
    with beam.Pipeline(runner=runner, options=options) as pipeline:
        owned = pipeline | "SelfPositions" >> beam.Create([own])
        _ = (
            pipeline
            | "QueryParts" >> beam.Create(query_parts)
            | "Spread" >> beam.Reshuffle()
            | "Mine" >> beam.ParDo(mine, self_positions=beam.pvalue.AsSingleton(owned))
        )
    parts = []
    for _, first in sorted(query_parts, key=lambda part: part[1]):
        target = FileSystems.join(output, MINED_DIR, f"part-{first:012d}.npz")
        with np.load(io.BytesIO(read_bytes(target))) as data:
            parts.append(MinedCandidates(data["query"], data["doc"], data["rank"], data["score"]))
    # Intermediate files only: the index can be as large as the corpus.
    FileSystems.delete([FileSystems.join(output, MINED_DIR), FileSystems.split(index_path)[0]])
    return concat_candidates(parts)


# ------------------------------------------------------------------------------ output


def candidate_table(
    query_ids: pa.Array,
    doc_ids: pa.Array,
    mined: MinedCandidates,
    candidates: CandidateArrays,
    estimate: CetEstimate,
    rows: np.ndarray | None = None,
) -> pa.Table:
    """The per-candidate output columns (all rows, or `rows` in that order)."""
    take = np.arange(len(mined)) if rows is None else rows
    return pa.table(
        {
            "query_id": query_ids.take(pa.array(mined.query[take])),
            "doc_id": doc_ids.take(pa.array(mined.doc[take])),
            "rank": pa.array(mined.rank[take]),
            "score": pa.array(mined.score[take]),
            "labelled": pa.array(candidates.labelled[take]),
            "known_negative": pa.array(estimate.known_negative[take]),
            "p_relevant": pa.array(estimate.p_relevant[take]),
            "p_selected": pa.array(estimate.p_selected[take]),
            "p_false_negative": pa.array(estimate.p_false_negative[take]),
            "negative_weight": pa.array(estimate.negative_weight[take]),
            "exclude": pa.array(estimate.exclude[take]),
        }
    )


# ------------------------------------------------------------------------------- stage


def _queries(config: Config, output: str) -> tuple[list[str], np.ndarray, list, dict]:
    """All query ids and vectors (sections concatenated), their parts for Beam, origins."""
    from tamis.pipelines.select import query_embeddings
    from tamis.pipelines.select_beam import part_offsets

    if not config.queries:
        raise ConfigError("queries: cet needs the queries to mine candidates for")
    ids: list[str] = []
    vectors, parts, origins = [], [], {}
    for task, source in config.queries.items():
        task_ids, task_vectors, origins[task] = query_embeddings(config, task, source, output)
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


def run_cet_select(
    config: Config, selector: CetSelector, beam_args: list[str] | None, started: float
) -> dict:
    from tamis.pipelines.select import finish_select, write_rows_jsonl

    selection_cfg = require(config.selection, "selection")
    output = require(selection_cfg.output, "selection.output")
    if selection_cfg.budget is not None:
        raise ConfigError(
            "selection.budget: cet keeps selection.params.negatives_per_query hard negatives "
            "per query; remove budget"
        )
    selector.validate()
    p = selector.params
    corpus_dir = require(config.embedding.output, "embedding.output")
    try:
        corpus_manifest = embeddings_manifest(corpus_dir)
    except InputError as err:
        raise ConfigError(f"embedding.output: {err}") from err
    if not FileSystems.exists(output):
        FileSystems.mkdirs(output)
    query_ids, query_vectors, query_parts, query_origins = _queries(config, output)

    # Mining.
    mine_started = time.perf_counter()
    ic = config.index
    try:
        index, corpus_list = build_from_embeddings_dir(
            corpus_dir, factory=ic.factory, device=ic.device, train_size=ic.train_size,
            nprobe=ic.nprobe, ef_search=ic.ef_search, seed=selection_cfg.seed,
        )  # fmt: skip
    except ValueError as err:
        raise ConfigError(f"index: {err}") from err
    if index.dim != query_vectors.shape[1]:
        raise ConfigError(
            f"queries: query dimension {query_vectors.shape[1]} does not match the corpus "
            f"embeddings ({index.dim}, {corpus_dir})"
        )
    doc_position = {doc: i for i, doc in enumerate(corpus_list)}
    self_positions = None
    if p.drop_query_itself:
        self_positions = np.fromiter(
            (doc_position.get(q, -1) for q in query_ids), np.int64, len(query_ids)
        )
        if not (self_positions >= 0).any():
            self_positions = None  # queries are not corpus documents: nothing to drop
    if selection_cfg.distributed or config.runner.name != "local":
        mined = mine_on_beam(config, p, index, query_parts, self_positions, output, beam_args)
    else:
        mined = mine_top_k(index, query_vectors, p.k, self_positions, ic.batch_size)
    mine_seconds = time.perf_counter() - mine_started

    # Labels and provenance, as pair keys over (query row, corpus position).
    estimate_started = time.perf_counter()
    n_docs = len(corpus_list)
    query_row = {q: i for i, q in enumerate(query_ids)}
    candidate_keys = mined.query * n_docs + mined.doc
    counts: dict[str, Any] = {"queries": len(query_ids), "corpus": n_docs}
    qrels = read_pair_table(p.qrels, "selection.params.qrels", optional=("relevance",))
    graded = "relevance" in qrels
    keys, known = pair_keys(qrels["query_id"], qrels["doc_id"], query_row, doc_position, n_docs)
    counts["qrels"] = len(known)
    counts["qrels_unknown_ids"] = int((~known).sum())
    if not known.any():
        raise InputError(
            f"selection.params.qrels: none of the {len(known)} pairs in {p.qrels} names a known "
            f"query and corpus document (first pair: {qrels['query_id'][0]!r}, "
            f"{qrels['doc_id'][0]!r}); check the ids"
        )
    positive = np.ones(len(keys), bool)
    if graded:
        positive = qrels["relevance"][known] >= p.min_relevance
    labelled = np.isin(candidate_keys, keys[positive])
    judged = None
    if graded and (~positive).any():  # judged not relevant: the judged pool is known
        judged = np.isin(candidate_keys, keys)
    if p.judged is not None:
        pairs = read_pair_table(p.judged, "selection.params.judged")
        judged_keys, _ = pair_keys(pairs["query_id"], pairs["doc_id"], query_row, doc_position,
                                   n_docs)  # fmt: skip
        more = np.isin(candidate_keys, judged_keys) | labelled
        judged = more if judged is None else judged | more
    ranks = None
    if p.provenance is not None:
        prov = read_pair_table(p.provenance, "selection.params.provenance", ("retriever", "rank"))
        bad = (prov["rank"] < 1) | (prov["rank"] != np.round(prov["rank"]))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"selection.params.provenance: {p.provenance} row {row + 1}: rank must be a "
                f"whole number >= 1, got {prov['rank'][row]}"
            )
        prov_keys, prov_known = pair_keys(prov["query_id"], prov["doc_id"], query_row,
                                          doc_position, n_docs)  # fmt: skip
        ranks, retrievers = provenance_rank_matrix(
            candidate_keys,
            prov_keys,
            prov["retriever"][prov_known],
            prov["rank"][prov_known].astype(np.int64),
        )
        counts["provenance_retrievers"] = retrievers
        if p.judged_depth is not None:
            deep = ((ranks > 0) & (ranks <= p.judged_depth)).any(axis=1) | labelled
            judged = deep if judged is None else judged | deep
    candidates = CandidateArrays(
        query=mined.query,
        rank=mined.rank,
        score=mined.score,
        labelled=labelled,
        judged=judged,
        provenance_ranks=ranks,
    )
    estimate = selector.estimate(candidates, seed=selection_cfg.seed)
    kept = selector.kept_negatives(candidates, estimate)
    review = selector.review_queue(candidates, estimate)
    estimate_seconds = time.perf_counter() - estimate_started

    # Outputs.
    q_ids, d_ids = pa.array(query_ids, pa.string()), pa.array(corpus_list, pa.string())
    write_parquet_atomic(
        FileSystems.join(output, CANDIDATES),
        candidate_table(q_ids, d_ids, mined, candidates, estimate),
    )
    review_table = candidate_table(q_ids, d_ids, mined, candidates, estimate, review)
    write_parquet_atomic(FileSystems.join(output, REVIEW_PARQUET), review_table)
    write_rows_jsonl(FileSystems.join(output, REVIEW_JSONL), review_table.to_pylist())
    selection = Selection(
        selector=selector.name,
        index=mined.doc[kept],
        ids=d_ids.take(pa.array(mined.doc[kept])).to_pylist(),
        score=mined.score[kept],
        weight=estimate.negative_weight[kept],
        columns={
            "query_id": q_ids.take(pa.array(mined.query[kept])).to_pylist(),
            "retrieval_rank": mined.rank[kept],
            "p_false_negative": estimate.p_false_negative[kept],
        },
        info={
            **estimate.info,
            "seconds": {"mine": round(mine_seconds, 3), "estimate": round(estimate_seconds, 3)},
            "index": {"factory": index.factory, "device": index.device, "nprobe": ic.nprobe},
        },
    )
    unlabelled = ~candidates.labelled
    counts.update(
        candidates=len(mined),
        labelled_candidates=int(candidates.labelled.sum()),
        unlabelled_candidates=int(unlabelled.sum()),
        known_negatives=int(estimate.known_negative.sum()),
        excluded=int(estimate.exclude.sum()),
        kept_negatives=len(kept),
        queries_without_kept_negatives=len(query_ids) - len(np.unique(mined.query[kept])),
        review_queue=len(review),
        queries_with_a_labelled_candidate=int(len(np.unique(mined.query[candidates.labelled]))),
    )
    origin = {
        "embeddings": {"path": corpus_dir, "fingerprint": corpus_manifest.get("fingerprint")},
        "queries": query_origins,
        "qrels": p.qrels,
        "provenance": p.provenance,
        "judged": p.judged,
    }
    seconds = mine_seconds + estimate_seconds
    return finish_select(config, selector, selection, counts, origin, seconds, started)
