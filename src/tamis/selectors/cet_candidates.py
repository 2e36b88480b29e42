"""CET's candidates: what the judgements say about each mined (query, document) pair, and
the per-candidate output table. Ids are matched with Arrow hash joins over pair keys
(query row x corpus size + document position), never Python strings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tamis.index.mining import MinedCandidates
from tamis.inputs.retrieval import RetrievalInputs, positions_in
from tamis.records import InputError


@dataclass
class CandidateArrays:
    """One row per (query, candidate) as mined, plus what the labels say about it."""

    query: np.ndarray  # int64 query row
    rank: np.ndarray  # int32, 1-based rank in the mining retriever
    score: np.ndarray  # float32 similarity
    labelled: np.ndarray  # bool: a qrels positive
    judged: np.ndarray | None = None  # bool: in the judged pool (None: not known)
    provenance_ranks: np.ndarray | None = None  # (n, R) int32, 0 where not ranked

    def __len__(self) -> int:
        return len(self.query)


@dataclass
class CetEstimate:
    p_relevant: np.ndarray
    p_selected: np.ndarray
    p_false_negative: np.ndarray
    negative_weight: np.ndarray
    exclude: np.ndarray
    known_negative: np.ndarray
    info: dict


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
    params: Any,
    retrieval: RetrievalInputs,
    mined: MinedCandidates,
    queries: pa.Array,
    corpus: pa.Array,
    counts: dict,
) -> CandidateArrays:
    """What qrels, judged pairs and provenance say about each mined candidate (counts of
    the inputs go into `counts`)."""
    p = params
    candidate_keys = mined.query * len(corpus) + mined.doc
    qrels = retrieval.qrels
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
    if retrieval.judged is not None:
        pairs = retrieval.judged
        judged_keys, _ = pair_keys(pairs["query_id"], pairs["doc_id"], queries, corpus)
        more = np.isin(candidate_keys, judged_keys) | labelled
        judged = more if judged is None else judged | more
    ranks = None
    if retrieval.provenance is not None:
        prov = retrieval.provenance
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
