"""Semantic dedup against a brute-force O(N^2) reference written plainly here: both
semantics, every keeper order, exact ties, exact duplicate texts; approximate searches
against exact on clustered data with planted near-duplicate groups."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tamis.config import ConfigError, IndexConfig
from tamis.inputs.texts import PoolTexts, _digest, normalized_text
from tamis.selectors import make_selector
from tamis.selectors.base import SelectionInputs
from tamis.selectors.dedup_core import (
    SWEEP,
    decide,
    exact_pairs,
    kmeans_centroids,
    nearest_clusters,
    threshold_sweep,
)


def tie_vectors(n: int, seed: int, dim: int = 16) -> np.ndarray:
    """Unit vectors with entries +-1/4: every dot product is a multiple of 1/8, exact in
    float32, so thresholds meet exact ties. Few sign patterns: many similar pairs."""
    rng = np.random.default_rng(seed)
    base = rng.choice([-0.25, 0.25], size=(12, dim))
    rows = base[rng.integers(0, 12, n)].copy()
    flips = rng.random((n, dim)) < 0.08
    rows[flips] *= -1
    return rows.astype(np.float32)


def pool_texts(texts: list[str], field: list[float] | None = None) -> PoolTexts:
    n = len(texts)
    return PoolTexts(
        digest=np.asarray([_digest(t) for t in texts], dtype="S16"),
        has_text=np.ones(n, dtype=bool),
        normalized=np.asarray([_digest(normalized_text(t)) for t in texts], dtype="S16"),
        length=np.asarray([len(t) for t in texts], dtype=np.int64),
        field=None if field is None else np.asarray(field, dtype=np.float64),
    )


def make_inputs(vectors, texts, field=None, excluded=None) -> SelectionInputs:
    ids = [f"item-{i}" for i in range(len(vectors))]
    return SelectionInputs(
        ids=pa.array(ids),
        blocks=lambda: iter([vectors[:40], vectors[40:]]),  # several blocks
        dim=vectors.shape[1],
        texts=pool_texts(texts, field),
        excluded=excluded,
        index=IndexConfig(),
    )


def reference(vectors, texts, order, threshold, semantics, allowed):
    """Plain loops. Returns kept pool positions (pool order) and {removed: (match, sim,
    exact)}."""
    order = [int(p) for p in order if allowed[p]]
    removed: dict[int, tuple[int, float, bool]] = {}
    first_of_text: dict[str, int] = {}
    for p in order:  # exact duplicate texts first, in keeper order
        key = normalized_text(texts[p])
        if key in first_of_text:
            removed[p] = (first_of_text[key], 1.0, True)
        else:
            first_of_text[key] = p
    searched = [p for p in order if p not in removed]
    kept: list[int] = []
    for r, j in enumerate(searched):
        others = kept if semantics == "kept_set" else searched[:r]
        best, best_sim = None, -np.inf
        for i in others:  # in keeper order: a tie keeps the earlier one
            s = float(np.dot(vectors[i], vectors[j]))
            if s >= threshold and s > best_sim:
                best, best_sim = i, s
        if best is None:
            kept.append(j)
        else:
            removed[j] = (best, best_sim, False)
    return sorted(kept), removed


def run(vectors, texts, params, field=None, excluded=None, seed=0):
    selector = make_selector("dedup", params)
    selector.validate()
    inputs = make_inputs(vectors, texts, field, excluded)
    return selector.select(inputs, budget=len(vectors), seed=seed), inputs


def duplicates_of(selection) -> dict[int, tuple[int, float, bool]]:
    table = selection.outputs["duplicates.parquet"].to_pylist()
    position = lambda rid: int(rid.split("-")[1])  # noqa: E731
    return {
        position(r["id"]): (position(r["matched_id"]), r["similarity"], r["exact"]) for r in table
    }


def keeper_order(keep, vectors, texts_field, allowed, seed, clusters=None, descending=False):
    """The order a brute-force user would write down for each keep option."""
    candidates = np.flatnonzero(allowed)
    if keep == "first":
        return candidates
    if keep == "random":
        return np.random.default_rng(seed).permutation(candidates)
    if keep == "field":
        values = np.asarray(texts_field)[candidates]
        key = -values if descending else values
        return candidates[np.lexsort((candidates, key))]
    k = clusters or max(1, int(round(np.sqrt(len(candidates)))))
    centroids = kmeans_centroids(vectors, candidates, k, seed)
    sims = vectors[candidates] @ centroids.T
    to_nearest = sims.max(axis=1).astype(np.float64)
    key = to_nearest if keep == "centroid_far" else -to_nearest
    return candidates[np.lexsort((candidates, key))]


@pytest.mark.parametrize("semantics", ["kept_set", "any_earlier"])
@pytest.mark.parametrize(
    "keep", ["first", "field", "field_descending", "centroid_far", "centroid_near", "random"]
)
def test_every_keeper_order_and_both_semantics_equal_brute_force(semantics, keep):
    vectors = tie_vectors(90, seed=3)
    texts = [f"text {i % 70}" for i in range(90)]  # 20 exact duplicate texts...
    texts[5] = "text  5 "  # ...and one that differs only in spacing from "text 5"
    vectors[75:] = vectors[5:20]  # copies of a text are copies of its vector
    field = [float((i * 37) % 11) for i in range(90)]  # many ties
    excluded = np.asarray([2, 50])  # not candidates (an earlier stage dropped them)
    allowed = np.ones(90, dtype=bool)
    allowed[excluded] = False
    params = {"threshold": 0.75, "semantics": semantics, "keep": keep.split("_desc")[0],
              "clusters": 4}  # fmt: skip
    descending = keep == "field_descending"
    if keep.startswith("field"):
        params.update(field="quality", descending=descending)
    selection, inputs = run(vectors, texts, params, field if keep.startswith("field") else None,
                            excluded, seed=7)  # fmt: skip
    order = keeper_order(params["keep"], vectors, field, allowed, 7, 4, descending)
    kept, removed = reference(vectors, texts, order, 0.75, semantics, allowed)
    assert [int(i.split("-")[1]) for i in selection.ids] == kept
    assert duplicates_of(selection) == {
        k: (m, pytest.approx(s), e) for k, (m, s, e) in removed.items()
    }
    assert selection.counts["exact_duplicates"] == sum(e for _, _, e in removed.values())
    assert len(removed) > 20 and any(not e for _, _, e in removed.values())


def test_a_chain_removes_two_under_any_earlier_and_one_under_kept_set():
    # a ~ b ~ c with a !~ c (SemDeDup removes b and c; kept_set keeps a and c).
    a = np.array([1.0, 0.0], np.float32)
    b = np.array([np.cos(0.3), np.sin(0.3)], np.float32)
    c = np.array([np.cos(0.6), np.sin(0.6)], np.float32)
    vectors = np.stack([a, b, c])
    for semantics, kept in (("any_earlier", ["item-0"]), ("kept_set", ["item-0", "item-2"])):
        selection, _ = run(vectors, ["a", "b", "c"], {"threshold": 0.9, "semantics": semantics})
        assert selection.ids == kept


def test_sweep_equals_a_decision_at_every_threshold():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(60, 32))
    vectors = np.concatenate([base + rng.normal(scale=s, size=base.shape) for s in (0, 0.3, 0.6)])
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    order = np.arange(len(vectors))
    pairs = exact_pairs(vectors, order, floor=SWEEP[0])
    for semantics in ("kept_set", "any_earlier"):
        for t, kept in threshold_sweep(len(vectors), pairs, semantics):
            direct = exact_pairs(vectors, order, floor=t)
            assert kept == len(vectors) - decide(len(vectors), direct, t, semantics).removed.sum()
    selection, _ = run(vectors, [str(i) for i in range(len(vectors))], {"threshold": 0.9})
    sweep = selection.outputs["threshold_sweep.csv"].to_pydict()
    assert sweep["threshold"][0] == 0.8 and sweep["threshold"][-1] == 0.99
    assert sweep["kept"][sweep["threshold"].index(0.9)] == len(selection)
    assert selection.outputs["threshold_sweep.png"].startswith(b"\x89PNG")


def planted_groups(n_base: int, dim: int, seed: int):
    """Clustered unit vectors (topics) with planted near-duplicate groups: every copy is at
    cosine >= ~0.97 of its group's original; the truth is known by construction."""
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(20, dim))
    base = topics[rng.integers(0, 20, n_base)] + rng.normal(scale=0.9, size=(n_base, dim))
    groups = rng.choice(n_base, size=n_base // 10, replace=False)
    copies = []
    for g in groups:
        for _ in range(rng.integers(1, 4)):
            copies.append(base[g] + rng.normal(scale=0.12 * np.linalg.norm(base[g]) / np.sqrt(dim),
                                               size=dim))  # fmt: skip
    vectors = np.concatenate([base, np.asarray(copies)])
    vectors = vectors[rng.permutation(len(vectors))]
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(
    "params",
    [
        {"search": "partitions", "clusters": 40, "probes": 2},
        {"search": "index"},  # IVF from the index section
        {"search": "index", "hnsw": True},
    ],
    ids=["partitions", "ivf", "hnsw"],
)
def test_approximate_searches_keep_recall_of_removed_items(params):
    vectors = planted_groups(6000, 64, seed=1)
    texts = [str(i) for i in range(len(vectors))]
    exact, _ = run(vectors, texts, {"threshold": 0.95})
    hnsw = params.pop("hnsw", False)
    selector = make_selector("dedup", {"threshold": 0.95, **params})
    inputs = make_inputs(vectors, texts)
    inputs.index = (
        IndexConfig(factory="HNSW32", ef_search=128)
        if hnsw
        else IndexConfig(factory="IVF64,Flat", nprobe=8)
    )
    approx = selector.select(inputs, len(vectors), seed=0)
    truth = set(duplicates_of(exact))
    found = set(duplicates_of(approx))
    assert len(truth) > 500
    recall = len(truth & found) / len(truth)
    assert recall >= 0.99
    assert len(found - truth) / len(found) <= 0.01  # precision
    reported = approx.info["recall"]
    assert reported["sample"] == 2000 and reported["removal_recall_any_earlier"] >= 0.98
    assert abs(reported["pair_recall"] - recall) < 0.05


def test_dedup_parameter_errors():
    for params, message in (
        ({"threshold": 0}, "threshold: must be in"),
        ({"keep": "field"}, "field: keep: field needs"),
        ({"field": "x"}, "field: only used with keep: field"),
        ({"probes": 0}, "probes: must be >= 1"),
    ):
        with pytest.raises(ConfigError, match=message):
            make_selector("dedup", params).validate()
    vectors = tie_vectors(10, 0)
    with pytest.raises(ConfigError, match=r"field: 1 records have no number in 'quality'"):
        run(vectors, [str(i) for i in range(10)], {"keep": "field", "field": "quality"},
            field=[1.0] * 9 + [np.nan])  # fmt: skip


def test_nearest_clusters_are_sorted_by_similarity():
    vectors = tie_vectors(50, 1)
    centroids = kmeans_centroids(vectors, np.arange(50), 5, seed=0)
    clusters, nearest = nearest_clusters(vectors, np.arange(50), centroids, 3)
    sims = vectors @ centroids.T
    for i in range(50):
        got = sims[i, clusters[i]]
        assert list(got) == sorted(got, reverse=True) and nearest[i] == sims[i].max()
