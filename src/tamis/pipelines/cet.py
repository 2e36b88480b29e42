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
import pyarrow.compute as pc
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


ID_COLUMNS = ("query_id", "doc_id", "retriever")


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


def pair_keys(
    query_ids: pa.Array, doc_ids: pa.Array, queries: pa.Array, corpus: pa.Array
) -> tuple[np.ndarray, np.ndarray]:
    """int64 keys query_row * len(corpus) + doc_position, and which pairs had both ids
    known."""
    q, d = positions_in(query_ids, queries), positions_in(doc_ids, corpus)
    known = (q >= 0) & (d >= 0)
    return q[known] * len(corpus) + d[known], known


def provenance_rank_matrix(
    candidate_keys: np.ndarray, keys: np.ndarray, retriever: np.ndarray, rank: np.ndarray
) -> np.ndarray:
    """(n_candidates, R) ranks in each pool-building retriever (`retriever` holds codes
    0..R-1; 0 in the matrix: not ranked). A pair listed twice by one retriever keeps its
    best rank."""
    n_retrievers = int(retriever.max()) + 1 if len(retriever) else 0
    matrix = np.zeros((len(candidate_keys), n_retrievers), dtype=np.int32)
    for j in range(n_retrievers):
        mine = retriever == j
        k, r = keys[mine], rank[mine]
        order = np.lexsort((r, k))
        k, r = k[order], r[order]
        first = np.r_[True, k[1:] != k[:-1]]
        k, r = k[first], r[first]
        if not len(k):
            continue
        where = np.minimum(np.searchsorted(k, candidate_keys), len(k) - 1)
        hit = k[where] == candidate_keys
        matrix[hit, j] = r[where[hit]]
    return matrix


def label_candidates(
    params: Any, mined: MinedCandidates, queries: pa.Array, corpus: pa.Array, counts: dict
) -> CandidateArrays:
    """What qrels, judged pairs and provenance say about each mined candidate (counts of
    the inputs go into `counts`)."""
    p = params
    candidate_keys = mined.query * len(corpus) + mined.doc
    qrels = read_pair_table(p.qrels, "selection.params.qrels", optional=("relevance",))
    keys, known = pair_keys(qrels["query_id"], qrels["doc_id"], queries, corpus)
    counts["qrels"] = len(known)
    counts["qrels_unknown_ids"] = int((~known).sum())
    if not known.any():
        raise InputError(
            f"selection.params.qrels: none of the {len(known)} pairs in {p.qrels} names a known "
            f"query and corpus document (first pair: {qrels['query_id'][0].as_py()!r}, "
            f"{qrels['doc_id'][0].as_py()!r}); check the ids"
        )
    positive = np.ones(len(keys), bool)
    if "relevance" in qrels:
        positive = qrels["relevance"][known] >= p.min_relevance
    labelled = np.isin(candidate_keys, keys[positive])
    judged = None
    if (~positive).any():  # judged not relevant: the judged pool is known
        judged = np.isin(candidate_keys, keys)
    if p.judged is not None:
        pairs = read_pair_table(p.judged, "selection.params.judged")
        judged_keys, _ = pair_keys(pairs["query_id"], pairs["doc_id"], queries, corpus)
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
        prov_keys, prov_known = pair_keys(prov["query_id"], prov["doc_id"], queries, corpus)
        names = sorted(set(pc.unique(prov["retriever"]).to_pylist()))
        codes = positions_in(prov["retriever"], pa.array(names, pa.string()))
        ranks = provenance_rank_matrix(
            candidate_keys, prov_keys, codes[prov_known], prov["rank"][prov_known].astype(np.int64)
        )
        counts["provenance_retrievers"] = names
        if p.judged_depth is not None:
            deep = ((ranks > 0) & (ranks <= p.judged_depth)).any(axis=1) | labelled
            judged = deep if judged is None else judged | deep
    return CandidateArrays(
        query=mined.query,
        rank=mined.rank,
        score=mined.score,
        labelled=labelled,
        judged=judged,
        provenance_ranks=ranks,
    )


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
    k: int,
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
    mine = MineQueryPart(index_path, config.index, k, output)
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

    def column(values: np.ndarray) -> pa.Array:
        # All rows: the arrays as they are (no gather of every column of 10M candidates).
        return pa.array(values if rows is None else values[rows])

    return pa.table(
        {
            "query_id": query_ids.take(column(mined.query)),
            "doc_id": doc_ids.take(column(mined.doc)),
            "rank": column(mined.rank),
            "score": column(mined.score),
            "labelled": column(candidates.labelled),
            "known_negative": column(estimate.known_negative),
            "p_relevant": column(estimate.p_relevant),
            "p_selected": column(estimate.p_selected),
            "p_false_negative": column(estimate.p_false_negative),
            "negative_weight": column(estimate.negative_weight),
            "exclude": column(estimate.exclude),
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
    queries, corpus = pa.array(query_ids, pa.string()), pa.array(corpus_list, pa.string())
    self_positions = None
    if p.drop_query_itself:
        self_positions = positions_in(queries, corpus)
        if not (self_positions >= 0).any():
            self_positions = None  # queries are not corpus documents: nothing to drop
    if selection_cfg.distributed or config.runner.name != "local":
        mined = mine_on_beam(config, p.k, index, query_parts, self_positions, output, beam_args)
    else:
        mined = mine_top_k(index, query_vectors, p.k, self_positions, ic.batch_size)
    mine_seconds = time.perf_counter() - mine_started

    # Labels and provenance, as pair keys over (query row, corpus position).
    estimate_started = time.perf_counter()
    counts: dict[str, Any] = {"queries": len(query_ids), "corpus": len(corpus_list)}
    candidates = label_candidates(p, mined, queries, corpus, counts)
    estimate = selector.estimate(candidates, seed=selection_cfg.seed)
    kept = selector.kept_negatives(candidates, estimate)
    review = selector.review_queue(candidates, estimate)
    estimate_seconds = time.perf_counter() - estimate_started

    # Outputs.
    write_parquet_atomic(
        FileSystems.join(output, CANDIDATES),
        candidate_table(queries, corpus, mined, candidates, estimate),
    )
    review_table = candidate_table(queries, corpus, mined, candidates, estimate, review)
    write_parquet_atomic(FileSystems.join(output, REVIEW_PARQUET), review_table)
    write_rows_jsonl(FileSystems.join(output, REVIEW_JSONL), review_table.to_pylist())
    selection = Selection(
        selector=selector.name,
        index=mined.doc[kept],
        ids=corpus.take(pa.array(mined.doc[kept])).to_pylist(),
        score=mined.score[kept],
        weight=estimate.negative_weight[kept],
        columns={
            "query_id": queries.take(pa.array(mined.query[kept])).to_pylist(),
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
