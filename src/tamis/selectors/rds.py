"""RDS+ selection core (pure numpy): per-task scores and the round-robin merge.

s(q, d) is the dot product of L2-normalised embeddings (the cosine). A task's score of a pool
item is the max (or mean) over the task's queries. Scores are computed block-wise over the
pool, keeping one float per item and task: memory O(N x tasks), never O(N x queries).

Ties everywhere go to the lower pool position.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

AGGREGATIONS = ("max", "mean")


def max_similarity_per_task(
    pool_blocks: Iterable[np.ndarray],
    tasks: Sequence[np.ndarray],
    aggregation: str = "max",
) -> np.ndarray:
    """(tasks, N) float32 scores: for each task, max or mean over its queries of q . d.

    `pool_blocks` yields (B, D) float32 blocks of the pool in order (e.g. one per shard), so
    the pool never has to be in memory at once; each block costs (queries x B) floats.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    queries = [np.asarray(q, dtype=np.float32) for q in tasks]
    for i, q in enumerate(queries):
        if q.ndim != 2 or len(q) == 0:
            raise ValueError(f"task {i}: expected a non-empty (queries, dim) array")
    per_block = []
    for block in pool_blocks:
        block = np.asarray(block, dtype=np.float32)
        rows = np.empty((len(queries), len(block)), dtype=np.float32)
        for t, q in enumerate(queries):
            if q.shape[1] != block.shape[1]:
                raise ValueError(
                    f"task {t}: query dimension {q.shape[1]} != pool dimension {block.shape[1]}"
                )
            sims = q @ block.T  # (queries, B): one block's worth, never (queries, N)
            rows[t] = sims.max(axis=0) if aggregation == "max" else sims.mean(axis=0)
        per_block.append(rows)
    if not per_block:
        return np.zeros((len(queries), 0), dtype=np.float32)
    return np.concatenate(per_block, axis=1)


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first, ties to the lower index; O(N + k log k)."""
    n = len(scores)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k < n:
        kth = np.partition(scores, n - k)[n - k]  # the k-th largest value
        above = np.flatnonzero(scores > kth)
        tied = np.flatnonzero(scores == kth)[: k - len(above)]
        candidates = np.concatenate([above, tied])
    else:
        candidates = np.arange(n)
    return candidates[np.lexsort((candidates, -scores[candidates]))]


@dataclass(frozen=True)
class RdsPicks:
    index: np.ndarray  # pool positions, in pick order
    task: np.ndarray  # which task took each pick
    score: np.ndarray  # that task's score of the pick


def round_robin(scores: np.ndarray, budget: int) -> RdsPicks:
    """Tasks take turns in order, each taking its best item not yet taken, until the budget.

    A task looks at no more than `budget` of its candidates: each one it passes over was
    taken already, and at most `budget` items are ever taken. So per-task top-`budget` lists
    give the same picks as full sorts.
    """
    n_tasks, n = scores.shape
    budget = min(budget, n)
    ranked = [top_k_indices(scores[t], budget) for t in range(n_tasks)]
    cursor = [0] * n_tasks
    taken = np.zeros(n, dtype=bool)
    index, task = [], []
    while len(index) < budget:
        progressed = False
        for t in range(n_tasks):
            if len(index) == budget:
                break
            order = ranked[t]
            while cursor[t] < len(order) and taken[order[cursor[t]]]:
                cursor[t] += 1
            if cursor[t] == len(order):
                continue
            pick = int(order[cursor[t]])
            taken[pick] = True
            index.append(pick)
            task.append(t)
            progressed = True
        if not progressed:
            break
    index_arr = np.asarray(index, dtype=np.int64)
    task_arr = np.asarray(task, dtype=np.int64)
    return RdsPicks(index_arr, task_arr, scores[task_arr, index_arr])


def top(scores: np.ndarray, budget: int) -> RdsPicks:
    """Plain global ranking: each item's best task score, the `budget` highest."""
    best_task = scores.argmax(axis=0)
    best = scores[best_task, np.arange(scores.shape[1])]
    index = top_k_indices(best, budget)
    return RdsPicks(index, best_task[index], best[index])
