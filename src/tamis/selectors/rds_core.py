"""RDS+ selection core (pure numpy): per-task scores, the round-robin merge, and the
per-shard candidates of the exact distributed form.

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


def top_k_indices(scores: np.ndarray, k: int, tie: np.ndarray | None = None) -> np.ndarray:
    """Positions of the k highest scores, best first; O(N + k log k).

    Ties go to the lower `tie` key (default: the lower position). -inf scores are never
    returned: they mark items that may not be picked.
    """
    tie = np.arange(len(scores)) if tie is None else tie
    finite = np.flatnonzero(scores > -np.inf)
    k = min(k, len(finite))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k < len(finite):
        kth = np.partition(scores[finite], len(finite) - k)[len(finite) - k]  # k-th largest
        above = np.flatnonzero(scores > kth)
        tied = np.flatnonzero(scores == kth)
        tied = tied[np.argsort(tie[tied], kind="stable")][: k - len(above)]
        candidates = np.concatenate([above, tied])
    else:
        candidates = finite
    return candidates[np.lexsort((tie[candidates], -scores[candidates]))]


def top_per_query(
    pool_blocks: Iterable[np.ndarray],
    queries: np.ndarray,
    k: int,
    excluded: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's k best pool positions and their similarities, best first.

    Running top-k per query over the pool blocks: memory O(queries x (k + block)), never
    O(queries x N). Ties go to the lower pool position, as in a full sort.
    """
    queries = np.asarray(queries, dtype=np.float32)
    n_queries = len(queries)
    best_index = np.zeros((n_queries, 0), dtype=np.int64)
    best_score = np.zeros((n_queries, 0), dtype=np.float32)
    offset = 0
    for block in pool_blocks:
        block = np.asarray(block, dtype=np.float32)
        sims = queries @ block.T
        positions = np.arange(offset, offset + len(block))
        if excluded is not None:
            sims[:, np.isin(positions, excluded)] = -np.inf
        scores = np.concatenate([best_score, sims], axis=1)
        index = np.concatenate([best_index, np.broadcast_to(positions, sims.shape)], axis=1)
        keep = [top_k_indices(scores[q], k, tie=index[q]) for q in range(n_queries)]
        width = min(len(row) for row in keep) if keep else 0
        best_index = np.stack([index[q, row[:width]] for q, row in enumerate(keep)])
        best_score = np.stack([scores[q, row[:width]] for q, row in enumerate(keep)])
        offset += len(block)
    return best_index, best_score


@dataclass(frozen=True)
class RdsPicks:
    index: np.ndarray  # pool positions, in pick order
    task: np.ndarray  # which task took each pick
    score: np.ndarray  # that task's score of the pick


def round_robin(scores: np.ndarray, budget: int, balanced: bool = False) -> RdsPicks:
    """Tasks take turns in order until the budget (`round_robin_ranked`; `balanced`: each
    turn takes the task's best item not yet taken, `round_robin_balanced_ranked`).

    A task pops no more than `budget` of its candidates: each item it pops is selected (by
    it or earlier), and at most `budget` items are selected. So per-task top-`budget` lists
    give the same picks as full sorts (and per-shard top lists, merged, give them too).
    """
    budget = min(budget, scores.shape[1])
    ranked = [top_k_indices(row, budget) for row in scores]
    ranked_scores = [row[r] for row, r in zip(scores, ranked, strict=True)]
    merge = round_robin_balanced_ranked if balanced else round_robin_ranked
    return merge(ranked, ranked_scores, budget)


def round_robin_ranked(
    ranked: Sequence[np.ndarray], ranked_scores: Sequence[np.ndarray], budget: int
) -> RdsPicks:
    """The reference's round robin (get_top_aggregated_influences.py) over per-task lists,
    each best first: tasks take turns in order, each turn pops the task's next item; an item
    already taken adds nothing (the turn is used up) and keeps the lower of its scores.

    An item's task is the one that took it first. A task whose list runs out sits out (the
    reference would fail). Tasks that overlap others get fewer unique items.
    """
    cursor = [0] * len(ranked)
    where: dict[int, int] = {}  # item -> its place in the picks
    index: list[int] = []
    task: list[int] = []
    score: list[float] = []
    while len(index) < budget:
        popped = False
        for t, order in enumerate(ranked):
            if len(index) == budget:
                break
            if cursor[t] == len(order):
                continue
            item, value = int(order[cursor[t]]), ranked_scores[t][cursor[t]]
            cursor[t] += 1
            popped = True
            if item in where:
                score[where[item]] = min(score[where[item]], value)
                continue
            where[item] = len(index)
            index.append(item)
            task.append(t)
            score.append(value)
        if not popped:
            break
    return RdsPicks(
        np.asarray(index, dtype=np.int64),
        np.asarray(task, dtype=np.int64),
        np.asarray(score, dtype=np.float32),
    )


def round_robin_balanced_ranked(
    ranked: Sequence[np.ndarray], ranked_scores: Sequence[np.ndarray], budget: int
) -> RdsPicks:
    """The balanced round robin over per-task lists, each best first: tasks take turns in
    order, each taking its best item not yet taken, so every task gets budget / T unique
    items (while its list lasts). Not the reference's: see `round_robin_ranked`."""
    cursor = [0] * len(ranked)
    taken: set[int] = set()
    index, task, score = [], [], []
    while len(index) < budget:
        progressed = False
        for t, order in enumerate(ranked):
            if len(index) == budget:
                break
            while cursor[t] < len(order) and int(order[cursor[t]]) in taken:
                cursor[t] += 1
            if cursor[t] == len(order):
                continue
            pick = int(order[cursor[t]])
            taken.add(pick)
            index.append(pick)
            task.append(t)
            score.append(ranked_scores[t][cursor[t]])
            progressed = True
        if not progressed:
            break
    return RdsPicks(
        np.asarray(index, dtype=np.int64),
        np.asarray(task, dtype=np.int64),
        np.asarray(score, dtype=np.float32),
    )


def top(scores: np.ndarray, budget: int) -> RdsPicks:
    """Plain global ranking: each item's best task score, the `budget` highest."""
    best_task = scores.argmax(axis=0)
    best = scores[best_task, np.arange(scores.shape[1])]
    index = top_k_indices(best, budget)
    return RdsPicks(index, best_task[index], best[index])


def query_round_robin(
    best_index: np.ndarray, best_score: np.ndarray, budget: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference's single-task round robin over queries.

    Queries take turns in order; each pops the next item of its own list (best first). An
    item already selected is dropped and that turn is used up. Returns (positions, query,
    score) in pick order. Each query pops only distinct items, each either newly selected or
    already selected, so `budget` items per query are always enough.
    """
    taken: set[int] = set()
    index, query, score = [], [], []
    n_queries, depth = best_index.shape
    for turn in range(depth):
        for q in range(n_queries):
            if len(index) == budget:
                break
            item = int(best_index[q, turn])
            if item in taken:
                continue
            taken.add(item)
            index.append(item)
            query.append(q)
            score.append(best_score[q, turn])
        if len(index) == budget:
            break
    return (
        np.asarray(index, dtype=np.int64),
        np.asarray(query, dtype=np.int64),
        np.asarray(score, dtype=np.float32),
    )


BEST_TASK = -1  # candidate key of `multi_task: top` (one global list)


def shard_candidates(
    block: np.ndarray,
    offset: int,
    tasks: Sequence[np.ndarray],
    aggregation: str,
    budget: int,
    multi_task: str,
    excluded: np.ndarray | None = None,
) -> list[tuple[int, tuple[float, int, int]]]:
    """One shard's share of an exact distributed RDS+: (key, (score, position, task)).

    round_robin and round_robin_balanced: each task's top-`budget` items of the shard (key =
    task); top: the shard's top-`budget` by best task score (key = BEST_TASK). The global
    top-`budget` of a key is among the union of the shards' top-`budget`, so merging them
    is exact.
    """
    scores = max_similarity_per_task([block], tasks, aggregation)
    positions = np.arange(offset, offset + len(block))
    if excluded is not None:
        scores[:, np.isin(positions, excluded)] = -np.inf
    out: list[tuple[int, tuple[float, int, int]]] = []
    if multi_task in ("round_robin", "round_robin_balanced"):
        for t, row in enumerate(scores):
            for i in top_k_indices(row, budget):
                out.append((t, (float(row[i]), int(positions[i]), t)))
        return out
    best_task = scores.argmax(axis=0)
    best = scores[best_task, np.arange(len(block))]
    for i in top_k_indices(best, budget):
        out.append((BEST_TASK, (float(best[i]), int(positions[i]), int(best_task[i]))))
    return out


def merge_candidates(
    candidates: dict[int, Sequence[tuple[float, int, int]]],
    n_tasks: int,
    budget: int,
    balanced: bool = False,
) -> RdsPicks:
    """Picks from merged candidate lists (each list best first, as shard_candidates keys)."""
    if BEST_TASK in candidates:
        best = list(candidates[BEST_TASK])[:budget]
        return RdsPicks(
            np.asarray([c[1] for c in best], dtype=np.int64),
            np.asarray([c[2] for c in best], dtype=np.int64),
            np.asarray([c[0] for c in best], dtype=np.float32),
        )
    lists = [list(candidates.get(t, [])) for t in range(n_tasks)]
    ranked = [np.asarray([c[1] for c in rows], dtype=np.int64) for rows in lists]
    scores = [np.asarray([c[0] for c in rows], dtype=np.float32) for rows in lists]
    merge = round_robin_balanced_ranked if balanced else round_robin_ranked
    return merge(ranked, scores, budget)
