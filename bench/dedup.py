"""Semantic dedup at scale: tamis's exact and fast searches against one GEMM, semhash and a
NeMo-style k-means dedup, on planted near-duplicate groups (the truth known by
construction).

Run it from the repository root (semhash: ``pip install 'tamis[bench]'``):

    python bench/dedup.py                                  # 100k exact + 1M fast (~1 hour)
    python bench/dedup.py --n-exact 20000 --n-fast 100000 --repeats 1   # quick

Data (untimed, in chunks, saved as .npy and memory-mapped by each side): ``--n-fast``
(default 1,000,000) unit vectors of dimension 384: ``--topics`` (2,000) topic centres, each
item its topic's centre plus noise (two items of one topic: cosine ~0.5; of two topics: ~0);
2% of the items are originals of a planted group with 1-3 copies, each copy the original
plus noise at cosine ~0.99 (copies of one group ~0.98 to each other); the whole set is
shuffled. Nothing else comes near 0.95, so at threshold 0.95 the duplicates to remove are
every group member but the first in pool order, under either semantics. The exact part uses
the first ``--n-exact`` (100,000) items (the groups that fall inside).

Sides, each in a fresh subprocess with ``--threads`` (2) BLAS / OpenMP threads; peak RSS is
measured above the subprocess's baseline after imports (the memory-mapped vectors count
once they are touched: every side reads all of them):

- gemm_exact: one all-pairs GEMM of the exact part, X @ X.T in row blocks of 4,096 (the
  result is not kept): the floor of any exact method.
- tamis_exact: the dedup selector, ``search: exact`` (blocked GEMM over the upper triangle,
  kept_set, the threshold sweep from 0.80 on).
- tamis_fast: the dedup selector, ``search: partitions`` (sqrt(n) k-means clusters, 2
  probes, its recall estimate on 2,000 sampled items included), on the fast part.
- nemo_fast: NeMo Curator's semantic dedup as its docs describe it, written here: spherical
  k-means (the same FAISS k-means, sqrt(n) clusters), then within each cluster an item goes
  when its max cosine to an earlier item of the cluster is >= t (any_earlier, no probes).
- semhash_fast: semhash 0.5.0, ``SemHash.from_embeddings`` (its default usearch HNSW) and
  ``self_deduplicate(threshold)``; records are the item numbers as strings (all distinct, so
  its exact-duplicate grouping does nothing). Run once (it takes about 45 minutes here).

Precision and recall are of the removed items against the truth. Targets: tamis_exact
<= 1.5x gemm_exact; tamis_fast >= 2x faster than semhash at precision and recall >= 0.99 and
<= 2 GiB above the baseline. Results: bench/results/dedup.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchlib import (
    chosen_sides,
    peak_rss_mib,
    ratio,
    run_side_process,
    thread_env,
    timing_result,
    write_results,
    write_side_result,
)

BENCH = "dedup"
SIDE_ORDER = ("gemm_exact", "tamis_exact", "tamis_fast", "nemo_fast", "semhash_fast")
EXACT_MAX_RATIO = 1.5
FAST_MIN_SPEEDUP = 2.0
QUALITY_MIN = 0.99
FAST_MAX_GIB = 2.0
DIM = 384


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-exact", type=int, default=100_000)
    parser.add_argument("--n-fast", type=int, default=1_000_000)
    parser.add_argument("--topics", type=int, default=2000)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="for gemm and tamis_exact")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sides", default=",".join(SIDE_ORDER))
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.chosen_sides = chosen_sides(parser, args.sides, SIDE_ORDER)
    return args


# ------------------------------------------------------------------------------- data


def write_data(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """vectors.npy (n_fast x 384 float32) and group.npy (the planted group of each item,
    -1 for none), in chunks: the vectors are made once, in place, then shuffled by rows."""
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    n = args.n_fast
    originals = int(0.02 * n / 3)  # with 1-3 copies each, about 2% of n are group members
    copies_per = rng.integers(1, 4, originals)
    n_copies = int(copies_per.sum())
    n_base = n - n_copies
    centres = rng.normal(size=(args.topics, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = np.lib.format.open_memmap(work / "vectors.npy", "w+", np.float32, (n, DIM))
    # Topic noise: |noise| ~ 1, so an item is ~0.7 of its centre and two items of a topic
    # are ~0.5 alike.
    for start in range(0, n_base, 100_000):
        stop = min(start + 100_000, n_base)
        topic = rng.integers(0, args.topics, stop - start)
        rows = centres[topic] + rng.normal(size=(stop - start, DIM)).astype(np.float32) / np.sqrt(
            DIM
        )
        vectors[start:stop] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    group = np.full(n, -1, dtype=np.int64)
    source = rng.choice(n_base, size=originals, replace=False)
    group[source] = np.arange(originals)
    at = n_base
    for g, (item, copies) in enumerate(zip(source, copies_per, strict=True)):
        noise = rng.normal(size=(copies, DIM)).astype(np.float32)
        noise *= 0.1425 / np.linalg.norm(noise, axis=1, keepdims=True)  # cosine ~0.99
        rows = vectors[item] + noise
        vectors[at : at + copies] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        group[at : at + copies] = g
        at += copies
    permutation = rng.permutation(n)
    for start in range(0, n, 200_000):  # shuffle rows without a second copy in memory
        chunk = permutation[start : start + 200_000]
        np.save(work / f"part-{start}.npy", vectors[chunk])
    for start in range(0, n, 200_000):
        part = np.load(work / f"part-{start}.npy")
        vectors[start : start + len(part)] = part
        (work / f"part-{start}.npy").unlink()
    vectors.flush()
    np.save(work / "group.npy", group[permutation])
    return {"generate_s_untimed": round(time.perf_counter() - started, 1), "groups": originals,
            "copies": n_copies}  # fmt: skip


def truth_removed(group: np.ndarray) -> np.ndarray:
    """Pool positions to remove: every planted group member but the first in pool order."""
    members = np.flatnonzero(group >= 0)
    g = group[members]
    order = np.lexsort((members, g))
    first = np.r_[True, g[order][1:] != g[order][:-1]]
    return np.sort(members[order][~first])


def quality(removed: np.ndarray, truth: np.ndarray) -> dict[str, float | int]:
    hits = len(np.intersect1d(removed, truth))
    return {
        "removed": int(len(removed)),
        "truth": int(len(truth)),
        "precision": round(hits / len(removed), 5) if len(removed) else 1.0,
        "recall": round(hits / len(truth), 5) if len(truth) else 1.0,
    }


# ------------------------------------------------------------------------------ sides


def tamis_removed(vectors: np.ndarray, params: dict[str, Any]) -> tuple[np.ndarray, dict]:
    """The dedup selector's removed pool positions, and its info."""
    import pyarrow as pa

    from tamis.config import IndexConfig
    from tamis.selectors import make_selector
    from tamis.selectors.base import SelectionInputs

    n = len(vectors)
    selector = make_selector("dedup", {"exact_text": False, **params})
    inputs = SelectionInputs(
        ids=pa.array(np.arange(n).astype(str)),
        blocks=lambda: iter([vectors]),
        dim=vectors.shape[1],
        index=IndexConfig(),
    )
    selection = selector.select(inputs, n, seed=0)
    kept = np.zeros(n, dtype=bool)
    kept[selection.index] = True
    return np.flatnonzero(~kept), selection.info


def nemo_removed(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """NeMo-style: spherical k-means (sqrt(n) clusters), then within each cluster an item
    goes when its max cosine to an earlier member (pool order) is >= threshold."""
    from tamis.selectors.dedup_core import kmeans_centroids, nearest_clusters

    n = len(vectors)
    rows = np.arange(n)
    centroids = kmeans_centroids(vectors, rows, int(round(np.sqrt(n))), seed=0)
    assignment, _ = nearest_clusters(vectors, rows, centroids, 1)
    cluster = assignment[:, 0]
    by_cluster = np.argsort(cluster, kind="stable")
    bounds = np.searchsorted(cluster[by_cluster], np.arange(len(centroids) + 1))
    removed = []
    for c in range(len(centroids)):
        members = by_cluster[bounds[c] : bounds[c + 1]]
        if len(members) < 2:
            continue
        x = np.ascontiguousarray(vectors[members])
        sims = x @ x.T
        sims[np.tril_indices(len(members))] = -np.inf  # only earlier members count
        removed.append(members[sims.max(axis=0) >= threshold])
    return np.sort(np.concatenate(removed)) if removed else np.zeros(0, np.int64)


def semhash_removed(vectors: np.ndarray, threshold: float) -> np.ndarray:
    from semhash import SemHash

    records = [str(i) for i in range(len(vectors))]
    index = SemHash.from_embeddings(np.asarray(vectors), records, model=None)
    result = index.self_deduplicate(threshold=threshold)
    return np.sort(np.asarray([int(d.record) for d in result.filtered], dtype=np.int64))


def run_side(name: str, args: argparse.Namespace, work: Path) -> None:
    # The libraries a side uses are loaded before its baseline: memory and time are the
    # method's, not the imports' (tamis brings Beam and torch along).
    if name.startswith("tamis") or name == "nemo_fast":
        import tamis.selectors  # noqa: F401
        from tamis.selectors.dedup_core import _kept_set

        _kept_set(
            0,
            np.zeros(1, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            np.float32(1),
            np.zeros(0, bool),
        )  # fmt: skip  (numba: compiled or cached)
    elif name == "semhash_fast":
        import semhash  # noqa: F401
    baseline = peak_rss_mib()
    vectors = np.load(work / "vectors.npy", mmap_mode="r")
    group = np.load(work / "group.npy")
    exact = name in ("gemm_exact", "tamis_exact")
    if exact:
        vectors = vectors[: args.n_exact]
        group = group[: args.n_exact]
    truth = truth_removed(group)
    repeats = args.repeats if exact else 1
    seconds, removed, info = [], None, {}
    for _ in range(repeats):
        started = time.perf_counter()
        if name == "gemm_exact":
            x = np.asarray(vectors)
            for start in range(0, len(x), 4096):
                _ = x[start : start + 4096] @ x.T
        elif name == "tamis_exact":
            removed, info = tamis_removed(vectors, {"threshold": args.threshold})
        elif name == "tamis_fast":
            removed, info = tamis_removed(
                vectors, {"threshold": args.threshold, "search": "partitions"}
            )
        elif name == "nemo_fast":
            removed = nemo_removed(vectors, args.threshold)
        elif name == "semhash_fast":
            removed = semhash_removed(vectors, args.threshold)
        seconds.append(time.perf_counter() - started)
    result = timing_result(len(vectors), seconds, peak_rss_mib(), baseline)
    if removed is not None:
        result["quality"] = quality(removed, truth)
    if info:
        result["info"] = {k: info[k] for k in ("recall", "clusters", "pairs_at_threshold")
                          if k in info}  # fmt: skip
    write_side_result(name, work, result)


# ------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.side:
        run_side(args.side, args, args.work)
        return 0
    print(
        f"{BENCH}: exact part {args.n_exact:,}, fast part {args.n_fast:,} x {DIM}, threshold "
        f"{args.threshold}, {args.threads} threads, sides {', '.join(args.chosen_sides)}",
        flush=True,
    )
    results: dict[str, Any] = {}
    loads: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tamis-bench-dedup-") as tmp:
        work = Path(tmp)
        data = write_data(args, work)
        print(f"data: {data}", flush=True)
        flags = {k: getattr(args, k) for k in ("n_exact", "n_fast", "threshold", "repeats")}
        for name in args.chosen_sides:
            print(f"== {name}", flush=True)
            result, before, after = run_side_process(
                __file__, name, work, flags, thread_env(args.threads)
            )
            results[name] = result
            loads[name] = {"before": before, "after": after}
            print(json.dumps({k: v for k, v in result.items() if k != "threads"}), flush=True)

    def median(side: str) -> float | None:
        return results[side]["median_s"] if side in results else None

    def quality_of(side: str, key: str) -> float | None:
        return results.get(side, {}).get("quality", {}).get(key)

    ratios = {
        "tamis_exact_over_gemm": ratio(median("tamis_exact"), median("gemm_exact"), 3),
        "semhash_over_tamis_fast": ratio(median("semhash_fast"), median("tamis_fast"), 1),
        "nemo_over_tamis_fast": ratio(median("nemo_fast"), median("tamis_fast"), 2),
    }
    fast = results.get("tamis_fast", {})
    met = {
        "exact_within_1.5x_gemm": ratios["tamis_exact_over_gemm"] is not None
        and ratios["tamis_exact_over_gemm"] <= EXACT_MAX_RATIO,
        "exact_is_exact": quality_of("tamis_exact", "precision") == 1.0
        and quality_of("tamis_exact", "recall") == 1.0,
        "fast_2x_semhash": ratios["semhash_over_tamis_fast"] is not None
        and ratios["semhash_over_tamis_fast"] >= FAST_MIN_SPEEDUP,
        "fast_quality": (quality_of("tamis_fast", "precision") or 0) >= QUALITY_MIN
        and (quality_of("tamis_fast", "recall") or 0) >= QUALITY_MIN,
        "fast_memory": fast.get("rss_above_baseline_mib", 1e9) <= FAST_MAX_GIB * 1024,
    }
    met["all"] = all(met.values())
    print(f"ratios: {ratios}\nmet: {met}")
    payload = {
        "params": {
            "n_exact": args.n_exact,
            "n_fast": args.n_fast,
            "dim": DIM,
            "topics": args.topics,
            "threshold": args.threshold,
            "threads": args.threads,
            "repeats": args.repeats,
            "seed": args.seed,
            "data": data,
        },
        "results": results,
        "load_average": loads,
        "ratios": ratios,
        "targets": {
            "tamis_exact_over_gemm_max": EXACT_MAX_RATIO,
            "semhash_over_tamis_fast_min": FAST_MIN_SPEEDUP,
            "fast_precision_recall_min": QUALITY_MIN,
            "fast_rss_above_baseline_gib_max": FAST_MAX_GIB,
        },
        "met": met,
    }
    if set(args.chosen_sides) == set(SIDE_ORDER):
        print(f"wrote {write_results(BENCH, payload)}")
    else:
        print("(some sides only: results not written)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
