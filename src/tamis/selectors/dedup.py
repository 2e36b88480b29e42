"""`dedup`: semantic deduplication over the pool embeddings (a filter stage; ALGORITHMS.md,
"Semantic deduplication"; the core is `dedup_core`).

Exact duplicate texts (normalised: NFKC, whitespace collapsed) are grouped first: the first
of each group in the keeper order stays, the others go (``exact: true``). Among the rest,
an item goes when it is at least ``threshold`` similar (cosine) to an earlier item in the
keeper order: one already kept (``semantics: kept_set``, the default: the kept set is a
maximal set with no pair that similar) or any earlier one (``any_earlier``: SemDeDup, NeMo).

Keeper orders: ``first`` (pool order), ``field`` (a record column, ascending unless
``descending``; ``field: length`` is the text's length when the records have no such
column), ``centroid_far`` / ``centroid_near`` (distance to the item's k-means centroid,
farthest or nearest first: SemDeDup's hard / easy), ``random`` (seeded). Ties: lower pool
position first.

Search: ``exact`` (blocked GEMM over the upper triangle: every pair), ``partitions``
(k-means clusters, exact within each cluster, each item also compared in its ``probes - 1``
next nearest clusters) or ``index`` (the ``index:`` section's FAISS index, IVF / HNSW, GPU
when present; the ``neighbours`` nearest of each item). Approximate searches report their
recall against exact on a seeded sample (``recall_sample`` items).

Outputs: the kept items (pool order), ``duplicates.parquet`` (``id``, ``matched_id``,
``similarity``, ``cluster``, ``exact``) and ``threshold_sweep.csv`` / ``.png`` (kept items
at 0.80, 0.81, ..., 0.99, from the same pass: any_earlier from each item's highest
similarity to an earlier one, kept_set by rerunning the walk on the pairs >= 0.80 that the
pass kept; past ``max_pairs`` of those, the sweep keeps to thresholds >= ``threshold``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa

from tamis.config import ConfigError, IndexConfig
from tamis.inputs.texts import later_copies
from tamis.selectors.base import (
    EMBEDDINGS,
    TEXTS,
    Selection,
    SelectionInputs,
    Selector,
    candidate_mask,
    ids_at,
    register,
)
from tamis.selectors.dedup_core import (
    SWEEP,
    SimilarPairs,
    decide,
    exact_pairs,
    kmeans_centroids,
    nearest_clusters,
    neighbour_pairs,
    partition_pairs,
    sample_recall,
    threshold_sweep,
)

DUPLICATES = "duplicates.parquet"
SWEEP_CSV = "threshold_sweep.csv"
SWEEP_PNG = "threshold_sweep.png"
KEEP_ORDERS = ("first", "field", "centroid_far", "centroid_near", "random")


def pool_matrix(inputs: SelectionInputs) -> np.ndarray:
    """The pool's vectors as one float32 matrix, filled block by block (one copy)."""
    blocks = inputs.blocks()
    first = next(blocks, None)
    if first is None:
        return np.zeros((0, inputs.dim or 0), dtype=np.float32)
    rest = next(blocks, None)
    if rest is None:  # one block (e.g. vectors already in memory): no copy
        return np.asarray(first, dtype=np.float32)
    matrix = np.empty((len(inputs.ids), first.shape[1]), dtype=np.float32)
    at = 0
    for block in (first, rest, *blocks):
        matrix[at : at + len(block)] = block
        at += len(block)
    return matrix


@register
class DedupSelector(Selector):
    name = "dedup"
    needs = frozenset({EMBEDDINGS, TEXTS})
    kind = "filter"
    budget_required = False

    @dataclass
    class Params:
        threshold: float = 0.95  # cosine: an item this similar to an earlier one goes
        semantics: Literal["kept_set", "any_earlier"] = "kept_set"
        keep: Literal["first", "field", "centroid_far", "centroid_near", "random"] = "first"
        field: str | None = None  # keep: field: a numeric record column, or "length"
        descending: bool = False  # keep: field: highest first
        exact_text: bool = True  # group exact duplicate texts (normalised) first
        search: Literal["exact", "partitions", "index"] = "exact"
        clusters: int | None = None  # k-means clusters (centroid orders, partitions): sqrt(n)
        probes: int = 2  # partitions: the clusters each item is compared in
        neighbours: int = 32  # index: nearest neighbours searched per item
        sweep: bool = True  # threshold_sweep.csv / .png
        max_pairs: int = 50_000_000  # pairs below the threshold kept for the sweep, at most
        recall_sample: int = 2000  # approximate searches: items whose exact pairs check recall

    def validate(self) -> None:
        p = self.params
        if not 0 < p.threshold <= 1:
            raise ConfigError(f"selection.params.threshold: must be in (0, 1], got {p.threshold}")
        if p.keep == "field" and not p.field:
            raise ConfigError("selection.params.field: keep: field needs the record column")
        if p.keep != "field" and p.field is not None:
            raise ConfigError("selection.params.field: only used with keep: field")
        for key in ("probes", "neighbours", "max_pairs"):
            if getattr(p, key) < 1:
                raise ConfigError(f"selection.params.{key}: must be >= 1, got {getattr(p, key)}")
        if p.clusters is not None and p.clusters < 1:
            raise ConfigError(f"selection.params.clusters: must be >= 1, got {p.clusters}")
        if p.recall_sample < 0:
            raise ConfigError(
                f"selection.params.recall_sample: must be >= 0, got {p.recall_sample}"
            )

    def select(self, inputs: SelectionInputs, budget: int, seed: int) -> Selection:
        p = self.params
        started = time.perf_counter()
        vectors = pool_matrix(inputs)
        allowed = candidate_mask(inputs)
        candidates = np.flatnonzero(allowed)
        assignment = to_centroid = None
        if p.keep.startswith("centroid") or p.search == "partitions":
            clusters = p.clusters or max(1, int(round(np.sqrt(len(candidates)))))
            centroids = kmeans_centroids(vectors, candidates, clusters, seed)
            assignment, to_centroid = nearest_clusters(vectors, candidates, centroids, p.probes)
            info_clusters = len(centroids)
        order = self._keeper_order(inputs, candidates, to_centroid, seed)
        rank = np.full(len(inputs.ids), -1, dtype=np.int64)
        rank[order] = np.arange(len(order))

        # Exact duplicate texts first: the first of each group in the keeper order stays.
        copies = first = np.zeros(0, dtype=np.int64)
        if p.exact_text:
            copies, first = later_copies(inputs.texts, allowed, rank, normalized=True)
        semantic = np.ones(len(order), dtype=bool)  # by rank: takes part in the search
        semantic[rank[copies]] = False
        search_order = order[semantic]  # pool positions, keeper order, exact copies out
        pairs, info = self._pairs(vectors, search_order, assignment, candidates, inputs)
        n = len(search_order)
        decisions = decide(n, pairs, p.threshold, p.semantics)
        removed = search_order[decisions.removed]
        matched = search_order[decisions.match[decisions.removed]]

        kept_mask = allowed.copy()
        kept_mask[copies] = False
        kept_mask[removed] = False
        kept = np.flatnonzero(kept_mask)[:budget]
        cluster_of = np.full(len(inputs.ids), -1, dtype=np.int64)
        if assignment is not None:
            cluster_of[candidates] = assignment[:, 0]
        gone = np.concatenate([copies, removed])
        similarity = np.r_[np.ones(len(copies)), decisions.similarity[decisions.removed]]
        table = pa.table(
            {
                "id": pa.array(ids_at(inputs.ids, gone), pa.string()),
                "matched_id": pa.array(ids_at(inputs.ids, np.r_[first, matched]), pa.string()),
                "similarity": pa.array(similarity.astype(np.float64)),
                # The removed item's k-means cluster (null: no clusters were computed).
                "cluster": pa.array(cluster_of[gone], pa.int64(), mask=cluster_of[gone] < 0),
                "exact": pa.array(np.r_[np.ones(len(copies), bool), np.zeros(len(removed), bool)]),
            }
        )
        outputs: dict = {DUPLICATES: table}
        if p.sweep:
            from tamis.report import threshold_sweep_png

            rows = threshold_sweep(n, pairs, p.semantics)
            kept_counts = pa.array([k for _, k in rows], pa.int64())
            outputs[SWEEP_CSV] = pa.table({"threshold": [t for t, _ in rows], "kept": kept_counts})
            outputs[SWEEP_PNG] = threshold_sweep_png(rows, p.threshold, n, p.semantics)
            info["sweep"] = {f"{t:.2f}": k for t, k in rows}
        if assignment is not None:
            info["clusters"] = info_clusters
        info.update(
            threshold=p.threshold, semantics=p.semantics, keep=p.keep, search=p.search,
            pairs_at_threshold=int((pairs.similarity >= p.threshold).sum()),
            seconds=round(time.perf_counter() - started, 3),
        )  # fmt: skip
        return Selection(
            selector=self.name,
            index=kept,
            ids=ids_at(inputs.ids, kept),
            score=np.ones(len(kept)),
            info=info,
            counts={"exact_duplicates": len(copies), "near_duplicates": len(removed)},
            outputs=outputs,
        )

    def _keeper_order(self, inputs, candidates, to_centroid, seed):
        """The candidates' pool positions in the order they claim to be kept."""
        p = self.params
        if p.keep == "first":
            return candidates
        if p.keep == "random":
            return np.random.default_rng(seed).permutation(candidates)
        if p.keep == "field":
            values = inputs.texts.field[candidates]
            missing = np.isnan(values)
            if missing.any():
                shown = ", ".join(repr(i) for i in ids_at(inputs.ids, candidates[missing][:5]))
                raise ConfigError(
                    f"selection.params.field: {missing.sum()} records have no number in "
                    f"{p.field!r} (e.g. {shown})"
                )
            key = -values if p.descending else values
            return candidates[np.lexsort((candidates, key))]
        # centroid_far / centroid_near: similarity to the item's nearest centroid, least
        # similar (farthest) first or most similar first.
        similarity = to_centroid.astype(np.float64)
        key = similarity if p.keep == "centroid_far" else -similarity
        return candidates[np.lexsort((candidates, key))]

    def _pairs(self, vectors, search_order, assignment, candidates, inputs):
        """The similar pairs among the searched items (rank r = search_order[r])."""
        p = self.params
        floor = min(p.threshold, SWEEP[0]) if p.sweep else p.threshold
        info: dict = {}
        if p.search == "exact":
            pairs = exact_pairs(vectors, search_order, floor)
        elif p.search == "partitions":
            where = np.full(len(inputs.ids), -1, dtype=np.int64)
            where[candidates] = np.arange(len(candidates))
            pairs = partition_pairs(vectors, search_order, assignment[where[search_order]], floor)
        else:
            pairs = self._index_pairs(vectors[search_order], floor, inputs.index)
            info["neighbour_lists_maybe_cut"] = pairs.truncated
        if len(pairs) > p.max_pairs:
            pairs = pairs.above(p.threshold)
        if p.search != "exact" and p.recall_sample:
            info["recall"] = sample_recall(vectors, search_order, pairs, p.threshold,
                                           p.recall_sample, seed=0)  # fmt: skip
        return pairs, info

    def _index_pairs(self, subset: np.ndarray, floor: float, ic: IndexConfig) -> SimilarPairs:
        from tamis.index.faiss_index import EmbeddingIndex

        try:
            index = EmbeddingIndex.build(
                [subset], subset.shape[1], factory=ic.factory, device=ic.device,
                train_size=ic.train_size, nprobe=ic.nprobe, ef_search=ic.ef_search,
            )  # fmt: skip
        except ValueError as err:
            raise ConfigError(f"index: {err}") from err
        k = min(self.params.neighbours + 1, len(subset))
        scores, neighbours = index.search(subset, k, block_size=ic.batch_size)
        return neighbour_pairs(scores, neighbours, np.arange(len(subset)), floor,
                               self.params.threshold)  # fmt: skip

    def summary(self, manifest: dict, output: str) -> list[str]:
        c, info = manifest["counts"], manifest["info"]
        lines = [
            f"dedup ({info['semantics']}, threshold {info['threshold']:g}, keep "
            f"{info['keep']}, {info['search']} search): kept {c['selected']:,} of "
            f"{c['candidates']:,}; {c['exact_duplicates']:,} exact and "
            f"{c['near_duplicates']:,} near duplicates removed in {info['seconds']:.1f} s"
        ]
        if "recall" in info:
            r = info["recall"]
            lines.append(
                f"  recall against exact on {r['sample']:,} sampled items: pairs "
                f"{r['pair_recall']:.4f}, any_earlier removals "
                f"{r['removal_recall_any_earlier']:.4f}"
            )
        lines.append(f"  duplicates: {output}/{DUPLICATES}; sweep: {output}/{SWEEP_CSV}")
        return lines
