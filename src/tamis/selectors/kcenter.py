"""k-center greedy (PCoreSet, CoreSet) with a running minimum; pure numpy.

Greedy, ``budget`` times: pick the point farthest from its nearest center, make it a center.
Centers start as the labelled points. The reference recomputes every point's distance to
every center at each step, O(N (L + b)^2 C) in all; a running minimum gives identical picks
in O(N (L + b) C). Two things make each step cheap:

- Screening. A new center c changes a point's nearest distance only if it comes closer, and
  that is decided first from float32 inner products <x, c> with a rounding bound: only the
  points that may come closer get their exact float64 distance. Exact distances use one
  formula for every pair, so equal points give bitwise equal distances.
- Look-ahead. The greedy run on the few thousand farthest points alone predicts the next
  picks well, so the inner products of the next ``lookahead`` predicted picks with the whole
  pool come from one GEMM (the pool is read once for many steps instead of once per step).
  Every step still takes the true argmax; one the prediction missed starts a new look-ahead,
  so picks never depend on the prediction.
- Labelled centers: one (N x L) GEMM finds each point's nearest center up to rounding;
  only the pairs it cannot separate get exact distances.

Ties go to the lowest pool position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tamis.device import resolve_device

Metric = Literal["euclidean", "cosine"]
METRICS = ("euclidean", "cosine")

# Rows per exact-distance block: bounds the float64 temporaries (block x dim x 8 bytes).
_EXACT_BLOCK_ROWS = 16384
# Farthest points the look-ahead runs the greedy on to guess the next picks.
_PREDICTION_POOL = 4096


@dataclass(frozen=True)
class KCenterPicks:
    """Picks in order and each pick's distance to its nearest center when it was picked
    (the coverage radius before that pick: non-increasing)."""

    index: np.ndarray  # pool positions, int64
    radius: np.ndarray  # float64; inf for a first pick made with no centers
    final_radius: float  # the farthest remaining point's distance after the last pick
    exact_distances: int  # float64 point-center distances computed
    look_aheads: int  # pool-wide GEMMs run for predicted picks


def pair_distances(rows: np.ndarray, center: np.ndarray, metric: Metric) -> np.ndarray:
    """float64 distances from each row to one center (D,), or row i to center i (n, D):
    Euclidean, or cosine 1 - <u, v>. Every pair gets the same operations in the same order,
    so a pair's distance does not depend on what else is computed with it."""
    rows64 = rows.astype(np.float64)
    center64 = np.asarray(center, dtype=np.float64)
    if metric == "euclidean":
        diff = rows64 - center64
        return np.sqrt((diff * diff).sum(axis=1))
    return 1.0 - (rows64 * center64).sum(axis=1)


def k_center_greedy(
    points: np.ndarray,
    budget: int,
    centers: Sequence[int] | np.ndarray | None = None,
    metric: Metric = "euclidean",
    excluded: np.ndarray | None = None,
    first: int | None = None,
    progress: bool = False,
    lookahead: int = 64,
    device: str = "auto",
) -> KCenterPicks:
    """Greedy k-center over ``points`` (N, D): ``budget`` picks, farthest-first.

    ``centers``: pool positions of the labelled points (the initial centers; never picked).
    ``excluded``: pool positions that may be neither picked nor used as centers.
    ``first``: with no centers, the position of the first pick; by default the reference's
    choice: the lowest candidate position (every distance is infinite, argmax takes the
    first). With centers, the first pick is greedy like the rest.
    ``lookahead``: picks predicted and prepared per pool-wide GEMM (speed only).
    ``device``: where the pool-wide screening GEMMs run: ``auto`` (CUDA when torch sees a
    GPU), ``cpu`` (numpy), ``torch`` (torch on the CPU) or a CUDA device such as ``cuda:0``.
    Exact distances and the picks are computed on the CPU either way: they do not depend
    on it.
    Memory: the float32 points, three N-long arrays, and a (lookahead x N) float32 block.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    x = np.ascontiguousarray(points, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"points must be a (N, D) array, got shape {x.shape}")
    n = len(x)
    centers = np.asarray([] if centers is None else centers, dtype=np.int64)
    if len(centers) and (centers.min() < 0 or centers.max() >= n):
        raise ValueError(f"center positions must be in [0, {n}); got {centers.min()}..")
    taken = np.zeros(n, dtype=bool)
    if excluded is not None:
        taken[np.asarray(excluded, dtype=np.int64)] = True
    taken[centers] = True
    available = n - int(taken.sum())
    if budget > available:
        raise ValueError(
            f"budget {budget} is larger than the {available} points that can be picked "
            f"({n} in the pool, {n - available} labelled or excluded)"
        )
    if first is not None and (not 0 <= first < n or taken[first]):
        raise ValueError(f"first pick {first} is not a point that can be picked")
    state = _ScreenedGreedy(x, metric, taken, resolve_device(device, "k-center screening GEMMs"))
    state.add_initial_centers(centers)

    index = np.empty(budget, dtype=np.int64)
    radius = np.empty(budget, dtype=np.float64)
    progress_bar = None
    if progress:
        from tamis.progress import progress_bar as make_bar

        progress_bar = make_bar(budget, f"k-center ({metric})", "pick")
    step = 0
    if not len(centers) and budget:
        # Every distance is infinite: the reference's argmax takes the first candidate.
        pick = first if first is not None else int(np.argmax(state.nearest))
        index[0], radius[0] = pick, state.nearest[pick]
        state.add_center(pick, state.products(np.array([pick]))[0])
        step = 1
        if progress_bar is not None:
            progress_bar.update(1)
    products, row_of = None, {}
    while step < budget:
        pick = int(np.argmax(state.nearest))  # the first maximum: lowest position
        if pick not in row_of:
            # Look ahead: the inner products of the farthest points with the whole pool.
            ahead = state.predicted_picks(pick, min(lookahead, budget - step))
            products = None  # free the last block first: two would be alive during the GEMM
            products = state.products(ahead)
            row_of = {int(p): j for j, p in enumerate(ahead)}
            state.look_aheads += 1
        index[step], radius[step] = pick, state.nearest[pick]
        state.add_center(pick, products[row_of.pop(pick)])
        step += 1
        if progress_bar is not None:
            progress_bar.update(1)
    if progress_bar is not None:
        progress_bar.close()
    final = float(state.nearest.max()) if available > budget else 0.0
    return KCenterPicks(index, radius, final, state.exact_distances, state.look_aheads)


def pool_products(x: np.ndarray, device: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function: pool positions -> their (k, N) float32 inner products with the pool.

    On a torch device the pool is copied there once; each call is one GEMM there and one
    copy of the (k, N) result back. Any float32 GEMM is within the screening bound.
    """
    if device == "cpu":

        def on_cpu(positions: np.ndarray) -> np.ndarray:
            out = np.empty((len(positions), len(x)), dtype=np.float32)
            return np.matmul(x[positions], x.T, out=out)  # written in place: no copy

        return on_cpu
    import torch

    # "torch": torch's own CPU GEMM (the same code path as a GPU, testable anywhere).
    device = "cpu" if device == "torch" else device
    pool = torch.from_numpy(x).to(device)

    def on_device(positions: np.ndarray) -> np.ndarray:
        rows = pool[torch.from_numpy(positions).to(device)]
        return (rows @ pool.T).cpu().numpy()

    return on_device


class _ScreenedGreedy:
    """Each point's distance to its nearest center (-inf once taken), and the screening
    limit that says from <x, c> alone whether a center c may come closer."""

    def __init__(self, x: np.ndarray, metric: Metric, taken: np.ndarray, device: str = "cpu"):
        self.x = x
        self.gemm = pool_products(x, device)
        self.metric = metric
        n, dim = x.shape
        self.sq_norms = np.empty(n)
        for start in range(0, n, _EXACT_BLOCK_ROWS):
            rows = x[start : start + _EXACT_BLOCK_ROWS].astype(np.float64)
            self.sq_norms[start : start + _EXACT_BLOCK_ROWS] = (rows * rows).sum(axis=1)
        self.max_norm = float(np.sqrt(self.sq_norms.max())) if n else 0.0
        # Error bound of a float32 dot product of length dim (Higham): gamma |x| |c|.
        unit = 2.0**-24
        self.gamma = (dim + 2) * unit / (1 - (dim + 2) * unit)
        self.nearest = np.full(n, np.inf)
        self.nearest[taken] = -np.inf
        # A center c may come closer to x only if <x, c> >= limit(x) + offset(c).
        self.limit = np.full(n, -np.inf, dtype=np.float32)
        self.limit[taken] = np.inf
        self.n_candidates = n - int(taken.sum())
        self.exact_distances = 0
        self.look_aheads = 0

    def products(self, positions: np.ndarray) -> np.ndarray:
        """(len(positions), N) float32 inner products of those points with every point."""
        return self.gemm(np.asarray(positions, dtype=np.int64))

    def predicted_picks(self, first: int, count: int) -> np.ndarray:
        """The next picks from ``first`` on, as far as the greedy run on the farthest points
        alone can tell (at most ``count``; only a guess of what to compute ahead).

        Picks cover their neighbours, so the farthest points are a poor guess by themselves;
        the greedy among the ``_PREDICTION_POOL`` farthest, with exact distances among them,
        is right until its next pick is no farther than the pool's nearest point.
        """
        size = min(_PREDICTION_POOL, self.n_candidates)
        top = np.argpartition(self.nearest, len(self.nearest) - size)[-size:]
        top = np.union1d(top, [first])
        nearest = self.nearest[top]
        floor = nearest.min()
        rows = self.x[top]
        sq_norms = self.sq_norms[top]
        picks = [first]
        pick = int(np.searchsorted(top, first))
        while True:
            # float32 distances: a guess needs no exactness, only speed.
            products = (rows @ rows[pick]).astype(np.float64)
            if self.metric == "euclidean":
                sq = sq_norms + sq_norms[pick] - 2 * products
                distance = np.sqrt(np.maximum(sq, 0.0))
            else:
                distance = 1.0 - products
            nearest[pick] = -np.inf
            np.minimum(nearest, distance, out=nearest)
            best = nearest.max()
            if len(picks) == count or not best > floor:
                return np.asarray(picks)
            pick = int(np.flatnonzero(nearest == best)[0])  # top is sorted: lowest position
            picks.append(int(top[pick]))

    def add_initial_centers(self, centers: np.ndarray) -> None:
        """Nearest distances to the labelled centers, screened with one (rows x L) GEMM:
        only the centers that may be a row's nearest get an exact distance."""
        if not len(centers):
            return
        centers = np.asarray(centers, dtype=np.int64)
        center_rows = self.x[centers]
        center_sq = self.sq_norms[centers]
        max_center_norm = float(np.sqrt(center_sq.max()))
        # The nearest center maximises <x, c> - |c|^2 / 2 (Euclidean) or <x, c> (cosine);
        # in float32 each score is within `tolerance` / 2 of its exact value.
        half_sq = (center_sq / 2).astype(np.float32) if self.metric == "euclidean" else 0
        tolerance = 2 * (self.gamma * self.max_norm * max_center_norm) + 2.0**-20 * (
            1.0 + self.max_norm * max_center_norm + center_sq.max()
        )
        n = len(self.x)
        # Bounds the (rows x L) scores and the float64 temporaries of the exact distances.
        rows_per_block = max(1, min((1 << 22) // len(centers), _EXACT_BLOCK_ROWS))
        for start in range(0, n, rows_per_block):
            rows = self.x[start : start + rows_per_block]
            score = rows @ center_rows.T - half_sq
            best = score.argmax(axis=1)
            may_be_nearest = score >= (score[np.arange(len(rows)), best] - tolerance)[:, None]
            distance = pair_distances(rows, center_rows[best], self.metric)
            self.exact_distances += len(rows)
            tied = np.flatnonzero(may_be_nearest.sum(axis=1) > 1)
            if len(tied):  # rows whose nearest center the screen cannot tell: all exact
                row, col = np.nonzero(may_be_nearest[tied])  # row-major: pairs by row
                pairs = pair_distances(rows[tied[row]], center_rows[col], self.metric)
                starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
                distance[tied] = np.minimum.reduceat(pairs, starts)
                self.exact_distances += len(row)
            nearest = self.nearest[start : start + len(rows)]
            free = nearest > -np.inf
            nearest[free] = distance[free]
        free = np.flatnonzero(self.nearest > -np.inf)
        self.limit[free] = self._limit(free)

    def add_center(self, position: int, products: np.ndarray) -> None:
        """Make a point a center, given its inner products with every point."""
        center = self.x[position]
        center_sq = float(self.sq_norms[position])
        center_norm = np.sqrt(center_sq)
        # Slack: the float32 product's error plus the float32 rounding of limit and offset.
        slack = 2 * self.gamma * self.max_norm * center_norm + 2.0**-20 * (
            2.0 + self.max_norm**2 + center_sq
        )
        offset = center_sq / 2 - slack if self.metric == "euclidean" else -slack
        may_come_closer = np.flatnonzero(products >= self.limit + np.float32(offset))
        for start in range(0, len(may_come_closer), _EXACT_BLOCK_ROWS):
            block = may_come_closer[start : start + _EXACT_BLOCK_ROWS]
            distance = pair_distances(self.x[block], center, self.metric)
            closer = distance < self.nearest[block]
            updated = block[closer]
            self.nearest[updated] = distance[closer]
            self.limit[updated] = self._limit(updated)
        self.exact_distances += len(may_come_closer)
        self.nearest[position] = -np.inf
        self.limit[position] = np.inf
        self.n_candidates -= 1

    def _limit(self, positions: np.ndarray) -> np.ndarray:
        nearest = self.nearest[positions]
        if self.metric == "euclidean":
            # ||x - c||^2 < r^2  <=>  <x, c> > (|x|^2 - r^2) / 2 + |c|^2 / 2
            limit = (self.sq_norms[positions] - nearest * nearest) / 2
        else:
            limit = 1.0 - nearest  # 1 - <x, c> < r  <=>  <x, c> > 1 - r
        # Rounded down to float32, so the screen never gets stricter than the exact test.
        single = limit.astype(np.float32)
        return np.where(single > limit, np.nextafter(single, np.float32(-np.inf)), single)
