"""Candidate mining: the top-k corpus documents of each query from a FAISS index, in batches.

A query that is itself a corpus document (self-retrieval setups: articles as their own
queries) finds itself first; `drop_self_hits` removes that hit and keeps k others.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from tamis.index.faiss_index import EmbeddingIndex

logger = logging.getLogger(__name__)


@dataclass
class MinedCandidates:
    """One row per (query, candidate): query row, corpus position, 1-based rank, score."""

    query: np.ndarray  # int64
    doc: np.ndarray  # int64
    rank: np.ndarray  # int32
    score: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.query)


def drop_self_hits(
    scores: np.ndarray, positions: np.ndarray, self_positions: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(q, k + 1) search results -> (q, k): each row loses its query's own corpus position
    (`self_positions[i]`, -1 when the query is not in the corpus), else its last hit."""
    self_positions = np.asarray(self_positions, dtype=np.int64)
    drop = (positions == self_positions[:, None]) & (self_positions[:, None] >= 0)
    # At most one column per row goes: the first self hit, or the (k + 1)-th hit.
    first = np.where(drop.any(axis=1), drop.argmax(axis=1), positions.shape[1] - 1)
    keep = np.ones(positions.shape, dtype=bool)
    keep[np.arange(len(positions)), first] = False
    shape = (len(positions), k)
    return scores[keep].reshape(shape), positions[keep].reshape(shape)


def flatten_hits(scores: np.ndarray, positions: np.ndarray, first_query: int = 0):
    """(q, k) hits -> MinedCandidates rows, dropping the places FAISS left empty (-1)."""
    q, k = positions.shape
    found = positions >= 0
    return MinedCandidates(
        query=np.repeat(np.arange(first_query, first_query + q, dtype=np.int64), k)[found.ravel()],
        doc=positions[found].astype(np.int64),
        rank=np.tile(np.arange(1, k + 1, dtype=np.int32), q)[found.ravel()],
        score=scores[found].astype(np.float32),
    )


def concat_candidates(parts: list[MinedCandidates]) -> MinedCandidates:
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return MinedCandidates(empty, empty, empty.astype(np.int32), empty.astype(np.float32))
    return MinedCandidates(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("query", "doc", "rank", "score"))
    )


def mine_top_k(
    index: EmbeddingIndex,
    queries: np.ndarray,
    k: int,
    self_positions: np.ndarray | None = None,
    batch_size: int = 4096,
    first_query: int = 0,
) -> MinedCandidates:
    """Top-k of every query, `batch_size` queries per FAISS call (bounded memory)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    extra = 0 if self_positions is None else 1
    parts = []
    started = time.perf_counter()
    for start in range(0, len(queries), batch_size):
        stop = min(start + batch_size, len(queries))
        scores, positions = index.search(queries[start:stop], k + extra, block_size=batch_size)
        if self_positions is not None:
            scores, positions = drop_self_hits(scores, positions, self_positions[start:stop], k)
        parts.append(flatten_hits(scores, positions, first_query + start))
        if len(queries) > batch_size:
            logger.info(
                "mined %d / %d queries (%.1f s)", stop, len(queries), time.perf_counter() - started
            )
    return concat_candidates(parts)
