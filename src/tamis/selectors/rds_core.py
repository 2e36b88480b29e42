"""RDS+ selection core: per-task scores, the round-robin merge, and the per-shard
candidates of the exact distributed form.

s(q, d) is the dot product of L2-normalised embeddings (the cosine). A task's score of a pool
item is the max (or mean) over the task's queries. Scores are computed block-wise over the
pool, keeping one float per item and task: memory O(N x tasks), never O(N x queries).

The GEMMs run with numpy (``device="cpu"``, the default) or with torch on the CPU or a
CUDA GPU (``QueryScorer``); torch is imported only then. Everything after the scores
(top-k, the round robin) is numpy on the CPU.

Ties everywhere go to the lower pool position.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tamis.config import ConfigError
from tamis.device import DeviceError, resolve_device

AGGREGATIONS = ("max", "mean")
PRECISIONS = ("float32", "float16", "bfloat16")


def check_precision(device: str, precision: str) -> None:
    """A ValueError unless ``precision`` is one of PRECISIONS and ``device`` can run it:
    float16 and bfloat16 need torch (numpy, ``cpu``, multiplies in float32 only)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if device == "cpu" and precision != "float32":
        raise ValueError(
            f"precision {precision!r} needs a torch device (torch, cuda[:N] or auto); "
            "device 'cpu' is numpy, float32 only"
        )


def scoring_device(device: str = "cpu", precision: str = "float32") -> str:
    """The device RDS+ scores on (`tamis.device.resolve_device`, which logs the choice);
    with float16 / bfloat16, ``auto`` on a machine without a GPU is torch on the CPU."""
    check_precision(device, precision)
    return resolve_device(device, "rds scoring", "cpu" if precision == "float32" else "torch")


class QueryScorer:
    """Query sets (one per task) ready on one device; pool blocks are multiplied there.

    ``cpu``: numpy float32. ``torch`` / ``cuda[:N]``: the queries are copied to the device
    once, in ``precision``; each block is moved there (no copy for torch on the CPU in
    float32), the GEMM and the reduction over queries run there, and only the result comes
    back, as float32 numpy. In float16 / bfloat16 the GEMM's inputs and output are in that
    dtype (the mean over queries accumulates in float32).

    On a torch device the block and the (queries x B) products live in buffers reused from
    block to block: a fresh few-MB tensor per block fragments the CPU heap (glibc), and a
    1M-item pool then held about 1 GB more than the numpy path.
    """

    def __init__(
        self, tasks: Sequence[np.ndarray], device: str = "cpu", precision: str = "float32"
    ):
        self.queries = [np.ascontiguousarray(q, dtype=np.float32) for q in tasks]
        for i, q in enumerate(self.queries):
            if q.ndim != 2 or len(q) == 0:
                raise ValueError(f"task {i}: expected a non-empty (queries, dim) array")
        self.precision = precision
        self.device = scoring_device(device, precision)
        self._torch: Any = None
        if self.device != "cpu":
            import torch

            self._torch = torch
            self._target = "cpu" if self.device == "torch" else self.device
            self._dtype = getattr(torch, precision)
            self._buffers: dict[str, Any] = {}
            _check_gemm(torch, self._target, self._dtype, precision)
            with torch.inference_mode():  # transposed: (dim, queries)
                self._on_device = [
                    self._tensor(q).to(self._target, self._dtype).T.contiguous()
                    for q in self.queries
                ]

    def task_scores(self, block: np.ndarray, aggregation: str) -> np.ndarray:
        """(tasks, B) float32: each task's max or mean over its queries of q . d."""
        block = self._checked(block)
        rows = np.empty((len(self.queries), len(block)), dtype=np.float32)
        if self._torch is None:
            for t, q in enumerate(self.queries):
                sims = q @ block.T  # (queries, B): one block's worth, never (queries, N)
                rows[t] = sims.max(axis=0) if aggregation == "max" else sims.mean(axis=0)
            return rows
        torch = self._torch
        with torch.inference_mode():
            pool = self._block_on_device(block)
            out = self._result(rows)
            for t, q in enumerate(self._on_device):
                sims = self._products(q, pool)  # (B, queries)
                if aggregation == "max":
                    out[t] = sims.amax(dim=1)
                else:
                    out[t] = sims.mean(dim=1, dtype=torch.float32)
            return self._back(out, rows)

    def products(self, block: np.ndarray) -> np.ndarray:
        """(queries, B) float32 similarities of the first task's queries with the block."""
        block = self._checked(block)
        if self._torch is None:
            return self.queries[0] @ block.T
        products = np.empty((len(self.queries[0]), len(block)), dtype=np.float32)
        with self._torch.inference_mode():
            out = self._result(products)
            out.copy_(self._products(self._on_device[0], self._block_on_device(block)).T)
            return self._back(out, products)

    def _checked(self, block: np.ndarray) -> np.ndarray:
        block = np.asarray(block, dtype=np.float32)
        for t, q in enumerate(self.queries):
            if q.shape[1] != block.shape[1]:
                raise ValueError(
                    f"task {t}: query dimension {q.shape[1]} != pool dimension {block.shape[1]}"
                )
        return block

    def _tensor(self, array: np.ndarray) -> Any:
        """A CPU tensor sharing ``array``'s memory."""
        with warnings.catch_warnings():
            # Read-only blocks (e.g. Arrow buffers): torch warns, but nothing writes to them.
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            return self._torch.from_numpy(np.ascontiguousarray(array))

    def _buffer(self, name: str, shape: tuple[int, int], dtype: Any) -> Any:
        """A (shape) tensor on the device, from a buffer kept between blocks."""
        size = shape[0] * shape[1]
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < size:
            self._buffers[name] = None  # free the old one first
            buffer = self._buffers[name] = self._torch.empty(size, dtype=dtype, device=self._target)
        return buffer[:size].view(shape)

    def _block_on_device(self, block: np.ndarray) -> Any:
        tensor = self._tensor(block)
        if self._target == "cpu" and self._dtype == self._torch.float32:
            return tensor  # a view: no copy
        return self._buffer("block", block.shape, self._dtype).copy_(tensor)

    def _products(self, queries_t: Any, pool: Any) -> Any:
        """(B, queries) = pool @ queries.T in the precision, into the products buffer.

        This orientation (both operands row-major, no transposed view) is the fast one for
        torch's CPU GEMM (MKL): q @ pool.T took about 1.2x numpy's time on 2 cores."""
        out = self._buffer("products", (len(pool), queries_t.shape[1]), self._dtype)
        return self._torch.mm(pool, queries_t, out=out)

    def _result(self, host: np.ndarray) -> Any:
        """Where a float32 result is written on the device: ``host`` itself on the CPU."""
        if self._target == "cpu":
            return self._tensor(host)
        return self._buffer("result", host.shape, self._torch.float32)

    def _back(self, out: Any, host: np.ndarray) -> np.ndarray:
        if self._target != "cpu":
            self._tensor(host).copy_(out)  # the only copy back: (tasks or queries) x B
        return host


def make_scorer(tasks: list[np.ndarray], device: str, precision: str) -> QueryScorer:
    """The query sets on ``device`` as this machine (or Beam worker) resolves it; a device
    it cannot use is a ConfigError naming the key."""
    try:
        return QueryScorer(tasks, device, precision)
    except DeviceError as err:
        raise ConfigError(f"selection.params.device: {err}") from None


def _check_gemm(torch: Any, target: str, dtype: Any, precision: str) -> None:
    """A DeviceError now when this torch cannot multiply ``precision`` matrices there."""
    try:
        with torch.inference_mode():
            probe = torch.ones((2, 2), dtype=dtype, device=target)
            (probe @ probe).cpu()
    except (RuntimeError, NotImplementedError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DeviceError(
            f"precision {precision!r}: torch {torch.__version__} cannot multiply {precision} "
            f"matrices on {target} ({reason}); use float32 or bfloat16"
        ) from err


def max_similarity_per_task(
    pool_blocks: Iterable[np.ndarray],
    tasks: Sequence[np.ndarray] | QueryScorer,
    aggregation: str = "max",
    device: str = "cpu",
    precision: str = "float32",
) -> np.ndarray:
    """(tasks, N) float32 scores: for each task, max or mean over its queries of q . d.

    `pool_blocks` yields (B, D) float32 blocks of the pool in order (e.g. one per shard), so
    the pool never has to be in memory at once; each block costs (queries x B) floats.
    ``device`` and ``precision``: where and in which dtype the GEMMs run (`QueryScorer`;
    ``tasks`` may be a QueryScorer already, whose own device and precision then apply).
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    scorer = tasks if isinstance(tasks, QueryScorer) else QueryScorer(tasks, device, precision)
    per_block = [scorer.task_scores(block, aggregation) for block in pool_blocks]
    if not per_block:
        return np.zeros((len(scorer.queries), 0), dtype=np.float32)
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
    queries: np.ndarray | QueryScorer,
    k: int,
    excluded: np.ndarray | None = None,
    device: str = "cpu",
    precision: str = "float32",
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's k best pool positions and their similarities, best first.

    Running top-k per query over the pool blocks: memory O(queries x (k + block)), never
    O(queries x N). Ties go to the lower pool position, as in a full sort. The GEMMs run
    on ``device`` in ``precision`` (`QueryScorer`; ``queries`` may be a QueryScorer of one
    query set already); the (queries, B) similarities of each block come back to the CPU
    for the top-k.
    """
    scorer = (
        queries if isinstance(queries, QueryScorer) else QueryScorer([queries], device, precision)
    )
    n_queries = len(scorer.queries[0])
    best_index = np.zeros((n_queries, 0), dtype=np.int64)
    best_score = np.zeros((n_queries, 0), dtype=np.float32)
    offset = 0
    for block in pool_blocks:
        sims = scorer.products(block)
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
    device: str | None = None  # where the scores were computed, when known (Beam workers)


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
    tasks: Sequence[np.ndarray] | QueryScorer,
    aggregation: str,
    budget: int,
    multi_task: str,
    excluded: np.ndarray | None = None,
) -> list[tuple[int, tuple[float, int, int]]]:
    """One shard's share of an exact distributed RDS+: (key, (score, position, task)).

    round_robin and round_robin_balanced: each task's top-`budget` items of the shard (key =
    task); top: the shard's top-`budget` by best task score (key = BEST_TASK). The global
    top-`budget` of a key is among the union of the shards' top-`budget`, so merging them
    is exact. ``tasks``: the query sets, or a QueryScorer holding them on its device.
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
