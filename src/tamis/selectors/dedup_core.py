"""Semantic deduplication core (ALGORITHMS.md, "Semantic deduplication"): pure numpy/numba.

Items are L2-normalised vectors; similarity is the dot product (the cosine). The keeper
order says who claims to be kept first; `rank[p]` is pool position p's place in it.

1. Find every pair of items at least `floor` similar (`floor` <= the threshold: pairs below
   the threshold serve the threshold sweep), with each pair oriented (earlier, later) in the
   keeper order, and for every item its highest similarity to any earlier item:
   - `exact_pairs`: blocked GEMM over the upper triangle (rank order), one pass;
   - `partition_pairs`: k-means partitions (SemDeDup, NeMo): exact within each cluster, an
     item also visiting its `probes - 1` next nearest clusters (pairs across partitions that
     no probe covers are missed; `sample_recall` measures how many);
   - `neighbour_pairs`: the k nearest neighbours from a FAISS index (IVF, HNSW; GPU).
2. Decide (`decide`): ``any_earlier`` removes an item whose highest similarity to an earlier
   item is >= t (SemDeDup, NeMo); ``kept_set`` walks the keeper order and removes an item
   >= t similar to an item already KEPT. Each removed item names its match: the most
   similar kept earlier item (kept_set) or the most similar earlier item (any_earlier);
   ties: the earlier one.

Ties in similarity are exact (`>=`), so vectors whose products are exact in float32 (e.g.
entries of +-0.5) behave as a brute-force loop says.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

SEMANTICS = ("kept_set", "any_earlier")
BLOCK_ROWS = 4096
KMEANS_POINTS = 64  # k-means training points per cluster, at most
SWEEP = tuple(round(0.80 + 0.01 * i, 2) for i in range(20))  # 0.80, 0.81, ..., 0.99


@dataclass
class SimilarPairs:
    """Pairs at least `floor` similar, in rank coordinates: `earlier` < `later`."""

    earlier: np.ndarray  # int64 ranks
    later: np.ndarray  # int64 ranks
    similarity: np.ndarray  # float32
    max_earlier: np.ndarray  # (n,) float32: highest similarity to an earlier item (-inf: none)
    floor: float
    truncated: int = 0  # items whose neighbour list may be cut (neighbour_pairs only)

    def __len__(self) -> int:
        return len(self.earlier)

    def above(self, threshold: float) -> SimilarPairs:
        keep = self.similarity >= threshold
        return SimilarPairs(
            self.earlier[keep], self.later[keep], self.similarity[keep], self.max_earlier,
            max(threshold, self.floor), self.truncated,
        )  # fmt: skip


def keeper_rank(order: np.ndarray) -> np.ndarray:
    """rank[p] = place of pool position p in the keeper order."""
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    return rank


class _PairCollector:
    """Accumulates (earlier, later, similarity) chunks and the per-item max."""

    def __init__(self, n: int, floor: float):
        self.floor = floor
        self.max_earlier = np.full(n, -np.inf, dtype=np.float32)
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add_block(self, sims: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
        """`sims[a, b]` = similarity of ranks rows[a] < cols[b] (entries not to count hold
        -inf): update the later items' max and keep the entries >= floor."""
        column_max = sims.max(axis=0)
        np.maximum.at(self.max_earlier, cols, column_max)
        hot = np.flatnonzero(column_max >= self.floor)
        if len(hot):
            a, b = np.nonzero(sims[:, hot] >= self.floor)
            self.parts.append((rows[a], cols[hot[b]], sims[a, hot[b]]))

    def result(self, truncated: int = 0) -> SimilarPairs:
        if self.parts:
            earlier, later, similarity = (np.concatenate(c) for c in zip(*self.parts, strict=True))
        else:
            earlier = later = np.zeros(0, dtype=np.int64)
            similarity = np.zeros(0, dtype=np.float32)
        return SimilarPairs(
            earlier.astype(np.int64), later.astype(np.int64), similarity.astype(np.float32),
            self.max_earlier, self.floor, truncated,
        )  # fmt: skip


def _upper_triangle(
    vectors: np.ndarray, ranks: np.ndarray, collector: _PairCollector, block: int
) -> None:
    """All pairs among `vectors` (rows sorted by rank, `ranks` their ranks): i < j only."""
    n = len(vectors)
    for start in range(0, n, block):
        stop = min(start + block, n)
        head = vectors[start:stop]
        for other in range(start, n, block):
            end = min(other + block, n)
            sims = head @ vectors[other:end].T
            if other == start:  # the diagonal block: only i < j
                sims[np.tril_indices(stop - start, 0, end - other)] = -np.inf
            collector.add_block(sims, ranks[start:stop], ranks[other:end])


def exact_pairs(
    vectors: np.ndarray, order: np.ndarray, floor: float, block: int = BLOCK_ROWS
) -> SimilarPairs:
    """Every pair >= floor, exactly: the upper triangle of the rank-ordered Gram matrix in
    blocks (memory: one block x block float32 matrix and one copy of the vectors)."""
    ordered = np.ascontiguousarray(vectors[order], dtype=np.float32)
    collector = _PairCollector(len(order), floor)
    _upper_triangle(ordered, np.arange(len(order), dtype=np.int64), collector, block)
    return collector.result()


def kmeans_centroids(
    vectors: np.ndarray, rows: np.ndarray, clusters: int, seed: int, iterations: int = 20
) -> np.ndarray:
    """(k, dim) spherical k-means centroids of vectors[rows] (FAISS), trained on a seeded
    sample of at most KMEANS_POINTS per cluster (gathered alone: no copy of the pool).
    Partitions need a fair split, not exact centroids; the sample bounds memory (64 x 1,000
    clusters x 384 dims: 98 MB)."""
    import faiss

    clusters = max(1, min(clusters, len(rows)))
    sample = rows
    if len(rows) > KMEANS_POINTS * clusters:
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(rows, size=KMEANS_POINTS * clusters, replace=False))
    kmeans = faiss.Kmeans(
        vectors.shape[1], clusters, niter=iterations, seed=seed, spherical=True,
        max_points_per_centroid=KMEANS_POINTS, verbose=False,
    )  # fmt: skip
    kmeans.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    return kmeans.centroids


def nearest_clusters(
    vectors: np.ndarray, rows: np.ndarray, centroids: np.ndarray, probes: int
) -> tuple[np.ndarray, np.ndarray]:
    """For vectors[rows]: (n, probes) cluster ids by similarity, nearest first, and the
    similarity to the nearest centroid (blocked: one block of rows at a time)."""
    probes = min(probes, len(centroids))
    out = np.empty((len(rows), probes), dtype=np.int64)
    nearest = np.empty(len(rows), dtype=np.float32)
    step = BLOCK_ROWS * 4
    for start in range(0, len(rows), step):
        sims = vectors[rows[start : start + step]] @ centroids.T
        top = np.argpartition(-sims, probes - 1, axis=1)[:, :probes]
        picked = np.take_along_axis(sims, top, axis=1)
        by_similarity = np.argsort(-picked, axis=1, kind="stable")
        out[start : start + len(sims)] = np.take_along_axis(top, by_similarity, axis=1)
        nearest[start : start + len(sims)] = np.take_along_axis(picked, by_similarity, axis=1)[:, 0]
    return out, nearest


def partition_pairs(
    vectors: np.ndarray, order: np.ndarray, assignment: np.ndarray, floor: float,
    block: int = BLOCK_ROWS,
) -> SimilarPairs:  # fmt: skip
    """Pairs >= floor within k-means partitions: each cluster's members compared exactly
    with each other, and with the items that visit it (their 2nd..p-th nearest cluster).
    `order`: the pool positions of the n searched items in keeper order; `assignment[r]`:
    the clusters of the item of rank r, nearest first. Memory: one cluster's vectors."""
    n = len(order)
    collector = _PairCollector(n, floor)
    primary = assignment[:, 0]
    by_cluster = np.argsort(primary, kind="stable")  # ranks, ascending within a cluster
    bounds = np.searchsorted(primary[by_cluster], np.arange(int(primary.max(initial=0)) + 2))
    visitors_by_cluster: dict[int, np.ndarray] = {}
    if assignment.shape[1] > 1:
        items = np.repeat(np.arange(n), assignment.shape[1] - 1)
        visited = assignment[:, 1:].ravel()
        sort = np.argsort(visited, kind="stable")
        items, visited = items[sort], visited[sort]
        cuts = np.r_[0, np.flatnonzero(np.diff(visited)) + 1, len(visited)]
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            if hi > lo:
                visitors_by_cluster[int(visited[lo])] = items[lo:hi]
    for c in range(len(bounds) - 1):
        members = by_cluster[bounds[c] : bounds[c + 1]]
        if not len(members):
            continue
        own = np.ascontiguousarray(vectors[order[members]], dtype=np.float32)
        _upper_triangle(own, members, collector, block)
        visitors = visitors_by_cluster.get(c)
        if visitors is None:
            continue
        for start in range(0, len(visitors), block):
            guests = visitors[start : start + block]
            sims = np.ascontiguousarray(vectors[order[guests]], dtype=np.float32) @ own.T
            # Orient each pair by rank: guests earlier than a member count for the member.
            earlier_guest = guests[:, None] < members[None, :]
            collector.add_block(np.where(earlier_guest, sims, -np.inf), guests, members)
            collector.add_block(np.where(earlier_guest, -np.inf, sims).T, members, guests)
    return _unique_pairs(collector.result())


def neighbour_pairs(
    scores: np.ndarray, neighbours: np.ndarray, order: np.ndarray, floor: float, threshold: float
) -> SimilarPairs:
    """Pairs >= floor from each item's k nearest neighbours (`scores`, `neighbours`: (n, k)
    from an index search of every item, pool positions, -1 for none). An item whose k-th
    neighbour is still >= threshold may have more: it is counted as truncated."""
    n = len(order)
    rank = keeper_rank(order)
    item = np.repeat(np.arange(n), neighbours.shape[1])
    other, sims = neighbours.ravel(), scores.ravel().astype(np.float32)
    ok = (other >= 0) & (other != item) & (sims >= floor)
    item, other, sims = rank[item[ok]], rank[other[ok]], sims[ok]
    earlier, later = np.minimum(item, other), np.maximum(item, other)
    max_earlier = np.full(n, -np.inf, dtype=np.float32)
    np.maximum.at(max_earlier, later, sims)
    truncated = int(((neighbours[:, -1] >= 0) & (scores[:, -1] >= threshold)).sum())
    pairs = SimilarPairs(earlier, later, sims, max_earlier, floor, truncated)
    return _unique_pairs(pairs)


def _unique_pairs(pairs: SimilarPairs) -> SimilarPairs:
    """Each (earlier, later) pair once (found from both sides or in two partitions)."""
    if not len(pairs):
        return pairs
    key = np.lexsort((pairs.later, pairs.earlier))
    earlier, later, sims = pairs.earlier[key], pairs.later[key], pairs.similarity[key]
    first = np.r_[True, (earlier[1:] != earlier[:-1]) | (later[1:] != later[:-1])]
    return SimilarPairs(earlier[first], later[first], sims[first], pairs.max_earlier,
                        pairs.floor, pairs.truncated)  # fmt: skip


@dataclass
class Decisions:
    """Per rank: removed, and for removed items their match (a rank) and its similarity."""

    removed: np.ndarray  # bool
    match: np.ndarray  # int64, -1 where kept
    similarity: np.ndarray  # float32, nan where kept


@numba.njit(cache=True)
def _kept_set(n, indptr, earlier, sims, threshold, allowed):  # pragma: no cover (compiled)
    kept = allowed.copy()
    match = np.full(n, -1, dtype=np.int64)
    best_sim = np.full(n, np.nan, dtype=np.float32)
    for j in range(n):
        if not allowed[j]:
            continue
        best, top = -1, -np.inf
        for k in range(indptr[j], indptr[j + 1]):
            i, s = earlier[k], sims[k]
            if s >= threshold and kept[i] and (s > top or (s == top and i < best)):
                best, top = i, s
        if best >= 0:
            kept[j] = False
            match[j] = best
            best_sim[j] = top
    return kept, match, best_sim


def decide(
    n: int,
    pairs: SimilarPairs,
    threshold: float,
    semantics: str,
    allowed: np.ndarray | None = None,
) -> Decisions:
    """Which items (ranks) are removed at `threshold`; `allowed` (by rank) limits the items
    that take part (the others neither keep nor remove anything)."""
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics must be one of {SEMANTICS}, got {semantics!r}")
    allowed = np.ones(n, dtype=bool) if allowed is None else allowed
    use = (pairs.similarity >= threshold) & allowed[pairs.earlier] & allowed[pairs.later]
    earlier, later, sims = pairs.earlier[use], pairs.later[use], pairs.similarity[use]
    if semantics == "kept_set":
        sort = np.lexsort((earlier, later))
        earlier, later, sims = earlier[sort], later[sort], sims[sort]
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(later, minlength=n), out=indptr[1:])
        kept, match, best = _kept_set(n, indptr, earlier, sims, np.float32(threshold), allowed)
        return Decisions(allowed & ~kept, match, best)
    # any_earlier: the most similar earlier item, ties to the earlier one.
    sort = np.lexsort((earlier, -sims, later))
    later_sorted = later[sort]
    first = np.r_[True, later_sorted[1:] != later_sorted[:-1]] if len(sort) else sort
    removed = np.zeros(n, dtype=bool)
    match = np.full(n, -1, dtype=np.int64)
    best = np.full(n, np.nan, dtype=np.float32)
    who = later_sorted[first]
    removed[who] = True
    match[who] = earlier[sort][first]
    best[who] = sims[sort][first]
    return Decisions(removed, match, best)


def threshold_sweep(
    n: int, pairs: SimilarPairs, semantics: str, allowed: np.ndarray | None = None,
    thresholds: tuple[float, ...] = SWEEP,
) -> list[tuple[float, int | None]]:  # fmt: skip
    """Kept count at each threshold (None below the pairs' floor: not computed). any_earlier
    reads the per-item max; kept_set reruns the walk on the stored pairs."""
    allowed = np.ones(n, dtype=bool) if allowed is None else allowed
    out: list[tuple[float, int | None]] = []
    for t in thresholds:
        if t < pairs.floor - 1e-9:
            out.append((t, None))
        elif semantics == "any_earlier" and pairs.truncated == 0 and allowed.all():
            out.append((t, int(n - (pairs.max_earlier >= t).sum())))
        else:
            removed = decide(n, pairs, t, semantics, allowed).removed
            out.append((t, int(allowed.sum() - removed.sum())))
    return out


def sample_recall(
    vectors: np.ndarray, order: np.ndarray, pairs: SimilarPairs, threshold: float,
    sample: int, seed: int,
) -> dict[str, float | int]:  # fmt: skip
    """Recall of an approximate pair search against exact, on a seeded sample of the n
    searched items (`order`: their pool positions in keeper order; other rows of `vectors`
    are not searched): of the sampled items' exact pairs >= threshold, the share found; and
    of the sampled items any_earlier would remove (exactly), the share the found pairs
    remove."""
    n = len(order)
    rank = np.full(len(vectors), -1, dtype=np.int64)
    rank[order] = np.arange(n)
    chosen = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    found = pairs.above(threshold)
    found_keys = set(zip(found.earlier.tolist(), found.later.tolist(), strict=True))
    exact_pairs_seen = hits = exact_removed = removal_hits = 0
    step = max(1, 2**25 // max(len(vectors), 1))  # rows per product: 128 MB of similarities
    for start in range(0, len(chosen), step):
        ranks = chosen[start : start + step]
        positions = order[ranks]
        sims = vectors[positions] @ vectors.T  # (s, pool): every searched item
        sims[np.arange(len(ranks)), positions] = -np.inf
        sims[:, rank < 0] = -np.inf
        rows, cols = np.nonzero(sims >= threshold)
        a, b = ranks[rows], rank[cols]
        keys = zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist(), strict=True)
        matched = np.fromiter((k in found_keys for k in keys), dtype=bool, count=len(a))
        exact_pairs_seen += len(a)
        hits += int(matched.sum())
        # any_earlier, exactly: removed iff some earlier item is >= threshold.
        removed_exactly = np.zeros(len(ranks), dtype=bool)
        removed_exactly[np.unique(rows[b < a])] = True
        exact_removed += int(removed_exactly.sum())
        removal_hits += int((removed_exactly & (found.max_earlier[ranks] >= threshold)).sum())
    return {
        "sample": int(len(chosen)),
        "pairs_exact": exact_pairs_seen,
        "pair_recall": hits / exact_pairs_seen if exact_pairs_seen else 1.0,
        "removed_exact_any_earlier": exact_removed,
        "removal_recall_any_earlier": removal_hits / exact_removed if exact_removed else 1.0,
    }
