"""RDS+ selection at pool scale: tamis streaming from Parquet against a full score matrix.

Run it from the repository root:

    python bench/rds_select.py                                       # 1,000,000 x 384
    python bench/rds_select.py --n 100000 --budget 5000 --repeats 1  # quick check

Data: a synthetic pool of ``--n`` (default 1,000,000) L2-normalised float32 vectors of dim
384, drawn around 1,000 random cluster centres of uneven sizes, written as an embeddings
directory (Parquet parts of 50,000 rows made with ``tamis.pipelines.embed.shard_table``
and a ``manifest.json``). Generating it takes a while, so it is cached in ``--data-dir``
(default: a folder under the temp dir named by size and seed) and reused when its manifest
matches. Queries: 3 tasks x 200 normalised vectors, each task's near 4 of the centres.

Sides, each in its own fresh subprocess with ``--threads`` BLAS / OpenMP / Arrow threads
(default 2), timed over ``--repeats`` runs (median); ``--rounds R`` runs the sides R
times, in turn forward and backward, and pools each side's runs (median of all; on a
shared machine the load drifts, and the sides then see the same drift):

- tamis_rds: the production path, ``make_selector("rds", {"device": "cpu"})`` (numpy) on
  ``read_ids`` and ``iter_vector_blocks`` of the directory: ids and vectors are read from
  the Parquet parts inside the timed region (from the page cache once the files have been
  read; vectors straight from the data pages, see ``tamis.embeddings.parquet_pages``).
  After the timed runs one instrumented run splits the time into Parquet reading, the
  per-task GEMMs, the max over queries, top-k and the round robin.
- tamis_rds_torch: the same with ``device: torch`` (torch's GEMM and max on the CPU, the
  code path a GPU runs); its picks and task scores are compared with tamis_rds's.
- tamis_rds_torch_bf16: ``device: torch, precision: bfloat16``: its time, and how many of
  tamis_rds's picks it keeps (context: the cost of bfloat16 scores in picks).
- reference_full_matrix: the reference's approach: the pool in RAM (loaded from the same
  parts; loading is not timed but its memory counts), S = Q_all @ P.T as one float32
  (600 x N) matrix, each task's max over its query rows, a full stable argsort per task
  and the task round robin. (The reference also keeps per-pair Python dicts; not done
  here, which only makes this side cheaper.) Its picks must equal tamis's.
- numpy_gemm: just ``Q_all @ P.T`` on the in-RAM pool: the floor for any exact method.
- faiss_ivf: ``tamis.index.build_from_embeddings_dir`` with ``--ivf-factory`` (default
  "IVF1024,Flat", nprobe 16) and a search of the 600 queries at k=10; recall@10 against
  the exact top-10 from numpy_gemm's score matrix. For context only: an IVF top-10 is not
  the per-task score of every pool item that RDS+ ranks.

Memory: ``peak_rss_mib`` is the subprocess's peak RSS (VmHWM, see ``peak_rss_mib``) at the
end of its timed runs, ``rss_above_baseline_mib`` the part above its peak after imports
(before any data).
Targets: tamis's RSS above baseline <= 1/10 of reference_full_matrix's, tamis's time
<= 1.5x numpy_gemm's, tamis_rds_torch's time <= 1.2x tamis_rds's with at least 99.9% of
its picks (two float32 GEMMs round differently: near-ties may swap). Results go to
``bench/results/rds_select.json`` (see DESIGN.md, "Tests and benchmarks").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchlib import (
    chosen_sides,
    med,
    peak_rss_mib,
    run_side_process,
    thread_env,
    timed,
    timing_result,
    write_results,
    write_side_result,
)

BENCH = "rds_select"
DIM = 384
SHARD_ROWS = 50_000
N_CLUSTERS = 1000
N_TASKS = 3
QUERIES_PER_TASK = 200
CENTRES_PER_TASK = 4
# x = normalise(centre + SIGMA * g), g ~ N(0, I / dim): cos(x, centre) ~ 1 / sqrt(1 + SIGMA^2).
POOL_SIGMA = 1.0
QUERY_SIGMA = 0.8
COMMON_WEIGHT = 0.4  # a shared direction, as real sentence embeddings have (anisotropy)
DATA_VERSION = 1
MEMORY_TARGET = 0.1
TIME_TARGET = 1.5
TORCH_TARGET = 1.2  # torch on the CPU against numpy, same selection
TORCH_OVERLAP = 0.999  # of numpy's picks (float32 rounding may swap near-ties)
IVF_K = 10
RESULTS = Path(__file__).resolve().parent / "results" / f"{BENCH}.json"
SIDE_ORDER = (
    "tamis_rds",
    "tamis_rds_torch",
    "tamis_rds_torch_bf16",
    "numpy_gemm",
    "reference_full_matrix",
    "faiss_ivf",
)
# The selector's scoring params of each tamis side.
TAMIS_SIDES = {
    "tamis_rds": {"device": "cpu"},
    "tamis_rds_torch": {"device": "torch"},
    "tamis_rds_torch_bf16": {"device": "torch", "precision": "bfloat16"},
}


# ---------------------------------------------------------------------------------------------
# Synthetic data, cached on disk


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def clusters(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N_CLUSTERS, DIM) float32 unit centres and their sampling weights (lognormal)."""
    rng = np.random.default_rng([seed, 0])
    common = normalise(rng.standard_normal(DIM))
    centres = rng.standard_normal((N_CLUSTERS, DIM)) / np.sqrt(DIM) + COMMON_WEIGHT * common
    weights = rng.lognormal(0.0, 1.0, N_CLUSTERS)
    return normalise(centres), weights / weights.sum()


def pool_chunk(seed: int, part: int, rows: int, centres: np.ndarray, weights: np.ndarray):
    """Part `part`'s vectors (rows, DIM) float32, each near a centre drawn by weight."""
    rng = np.random.default_rng([seed, 1, part])
    assign = rng.choice(N_CLUSTERS, size=rows, p=weights)
    noise = rng.standard_normal((rows, DIM), dtype=np.float32)
    noise *= np.float32(POOL_SIGMA / np.sqrt(DIM))
    noise += centres[assign]
    return normalise(noise), rng.integers(16, 512, rows, dtype=np.int32)


def make_queries(seed: int) -> dict[str, np.ndarray]:
    """Task name -> (QUERIES_PER_TASK, DIM) float32 unit queries near the task's centres."""
    centres, _ = clusters(seed)
    rng = np.random.default_rng([seed, 2])
    chosen = rng.choice(N_CLUSTERS, size=(N_TASKS, CENTRES_PER_TASK), replace=False)
    out = {}
    for t in range(N_TASKS):
        near = centres[rng.choice(chosen[t], size=QUERIES_PER_TASK)]
        noise = rng.standard_normal((QUERIES_PER_TASK, DIM)) * (QUERY_SIGMA / np.sqrt(DIM))
        out[f"t{t}"] = normalise(near + noise)
    return out


def data_spec(n: int, seed: int) -> dict[str, Any]:
    from tamis.pipelines.embed import DATA_PAGE_BYTES, ROW_GROUP_ROWS

    return {
        "version": DATA_VERSION,
        "row_group_rows": ROW_GROUP_ROWS,  # the part layout: a new one means new files
        "data_page_bytes": DATA_PAGE_BYTES,
        "n": n,
        "dim": DIM,
        "shard_rows": SHARD_ROWS,
        "seed": seed,
        "clusters": N_CLUSTERS,
        "cluster_weights": "lognormal(0, 1)",
        "pool_sigma": POOL_SIGMA,
        "common_weight": COMMON_WEIGHT,
    }


def default_data_dir(n: int, seed: int) -> Path:
    return Path(tempfile.gettempdir()) / "tamis-bench-rds-select" / f"n{n}-seed{seed}"


def ensure_data(directory: Path, n: int, seed: int) -> float:
    """Write the synthetic embeddings dir unless it is there already; seconds spent."""

    from tamis.pipelines.embed import shard_parquet_bytes, shard_table
    from tamis.records import atomic_write

    spec = data_spec(n, seed)
    manifest_path = directory / "manifest.json"
    n_parts = -(-n // SHARD_ROWS)
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        parts = sorted(directory.glob("part-*.parquet"))
        if manifest.get("synthetic") == spec and len(parts) == n_parts:
            print(f"data: reusing {directory}", flush=True)
            return 0.0
        if "synthetic" not in manifest:
            raise SystemExit(f"{directory} holds another embeddings dir; pick another --data-dir")
    if directory.exists():
        ours = ("part-", "manifest.json")
        if not all(p.name.startswith(ours) for p in directory.iterdir()):
            raise SystemExit(f"{directory} is not empty and not ours; pick another --data-dir")
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    print(f"data: writing {n} x {DIM} in {n_parts} parts to {directory}", flush=True)
    started = time.perf_counter()
    centres, weights = clusters(seed)
    for part in range(n_parts):
        start = part * SHARD_ROWS
        rows = min(SHARD_ROWS, n - start)
        vectors, n_tokens = pool_chunk(seed, part, rows, centres, weights)
        ids = [f"s{i:08d}" for i in range(start, start + rows)]
        table = shard_table(ids, vectors, n_tokens, {"rows": rows, "synthetic": True})
        path = directory / f"part-{part:05d}.parquet"
        atomic_write(str(path), shard_parquet_bytes(table))
        del vectors, n_tokens, ids, table
    manifest = {
        "model": {"dim": DIM, "name": "synthetic"},
        "fingerprint": "synthetic",
        "counts": {"embedded": n},
        "synthetic": spec,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    seconds = time.perf_counter() - started
    print(f"data: written in {seconds:.1f}s", flush=True)
    return seconds


def load_pool(directory: str, n: int) -> np.ndarray:
    """The whole pool as one (n, DIM) float32 matrix, filled part by part."""
    from tamis.embeddings.store import iter_embedding_blocks

    pool = np.empty((n, DIM), dtype=np.float32)
    offset = 0
    for block in iter_embedding_blocks(directory):
        pool[offset : offset + len(block.vectors)] = block.vectors
        offset += len(block.vectors)
    if offset != n:
        raise RuntimeError(f"{directory}: {offset} vectors, expected {n}")
    return pool


# ---------------------------------------------------------------------------------------------
# Sides (each runs in its own subprocess: `--side NAME`)


def round_robin_full_sort(task_scores: list[np.ndarray], budget: int) -> np.ndarray:
    """Reference merge (get_top_aggregated_influences.py): full stable descending sort per
    task, tasks take turns, each turn pops the task's next item (one already taken: the turn
    is used up)."""
    orders = [np.argsort(-s, kind="stable") for s in task_scores]
    taken = np.zeros(len(task_scores[0]), dtype=bool)
    cursor = [0] * len(orders)
    picks: list[int] = []
    while len(picks) < budget:
        for t, order in enumerate(orders):
            if len(picks) == budget:
                break
            pick = int(order[cursor[t]])
            cursor[t] += 1
            if not taken[pick]:
                taken[pick] = True
                picks.append(pick)
    return np.asarray(picks, dtype=np.int64)


def time_tamis(args: argparse.Namespace, work: Path, name: str) -> tuple[dict, Callable]:
    """Time the rds selector with side `name`'s params on the Parquet parts; save its picks
    as NAME_index.npy. Returns the timing and the pool's block iterator."""
    from tamis.embeddings.store import iter_vector_blocks, read_ids
    from tamis.selectors import make_selector
    from tamis.selectors.base import SelectionInputs

    baseline = peak_rss_mib()
    directory = str(args.data_dir)
    queries = make_queries(args.seed)

    def blocks() -> Iterator[np.ndarray]:
        return iter_vector_blocks(directory)

    def run() -> tuple[np.ndarray, dict]:
        ids = read_ids(directory)
        selector = make_selector("rds", TAMIS_SIDES[name])
        inputs = SelectionInputs(ids=ids, blocks=blocks, dim=DIM, queries=queries)
        selection = selector.select(inputs, budget=args.budget, seed=0)
        return selection.index, selection.info

    seconds = []
    for rep in range(args.repeats):
        s, (index, info) = timed(run)
        seconds.append(s)
        print(f"    {name} run {rep + 1}: {s:.2f}s", file=sys.stderr, flush=True)
    np.save(work / f"{name}_index.npy", index)
    peak = peak_rss_mib()
    result = {
        **timing_result(args.n, seconds, peak, baseline),
        "device": info["device"],
        "precision": info["precision"],
    }
    return result, blocks


def side_tamis_torch(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    return torch_side(args, work, "tamis_rds_torch")


def side_tamis_torch_bf16(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    return torch_side(args, work, "tamis_rds_torch_bf16")


def torch_side(args: argparse.Namespace, work: Path, name: str) -> dict[str, Any]:
    """A tamis side on torch: its timing, torch's threads, and (untimed) its task scores."""
    import torch

    from tamis.selectors.rds import max_similarity_per_task

    result, blocks = time_tamis(args, work, name)
    scores = max_similarity_per_task(
        blocks(), list(make_queries(args.seed).values()), "max", **TAMIS_SIDES[name]
    )
    np.save(work / f"{name}_scores.npy", scores)
    return {**result, "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def side_tamis(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from tamis.embeddings.store import iter_vector_blocks, read_ids
    from tamis.selectors.rds import round_robin, top_k_indices

    result, _ = time_tamis(args, work, "tamis_rds")
    index = np.load(work / "tamis_rds_index.npy")
    directory = str(args.data_dir)
    queries = make_queries(args.seed)

    # One instrumented run of the same steps (RdsSelector.select with the default params:
    # max_similarity_per_task, then round_robin, whose first step is top_k_indices).
    phases: dict[str, float] = {}
    phases["read_ids_s"], ids = timed(lambda: read_ids(directory))
    task_queries = list(queries.values())
    parts: list[np.ndarray] = []
    read_s = gemm_s = max_s = 0.0
    stream = iter_vector_blocks(directory)
    while True:
        s, vectors = timed(lambda: next(stream, None))
        read_s += s
        if vectors is None:
            break
        rows = np.empty((len(task_queries), len(vectors)), dtype=np.float32)
        for t, q in enumerate(task_queries):
            s, sims = timed(lambda q=q, vectors=vectors: q @ vectors.T)
            gemm_s += s
            s, rows[t] = timed(lambda sims=sims: sims.max(axis=0))
            max_s += s
        parts.append(rows)
    phases["read_parquet_s"], phases["gemm_s"], phases["max_over_queries_s"] = (
        read_s,
        gemm_s,
        max_s,
    )
    started = time.perf_counter()
    scores = np.concatenate(parts, axis=1)
    phases["concat_s"] = time.perf_counter() - started
    del parts
    phases["top_k_s"], _ = timed(
        lambda: [top_k_indices(scores[t], args.budget) for t in range(len(scores))]
    )
    rr_s, picks = timed(lambda: round_robin(scores, args.budget))
    phases["round_robin_loop_s"] = rr_s - phases["top_k_s"]  # round_robin repeats top-k
    phases["ids_of_picks_s"], _ = timed(lambda: [ids[i] for i in picks.index])
    phases["total_s"] = sum(phases.values())
    np.save(work / "tamis_rds_scores.npy", scores)
    return {
        **result,
        "breakdown_one_run": {k: round(v, 3) for k, v in phases.items()},
        "breakdown_matches_selection": bool(np.array_equal(picks.index, index)),
        "breakdown_peak_rss_mib": peak_rss_mib(),
    }


def side_reference(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    baseline = peak_rss_mib()
    queries = make_queries(args.seed)
    q_all = np.concatenate(list(queries.values()))
    bounds = np.cumsum([0] + [len(q) for q in queries.values()])
    load_s, pool = timed(lambda: load_pool(str(args.data_dir), args.n))
    seconds, phases = [], {"gemm_s": [], "max_s": [], "argsort_and_rr_s": []}
    for rep in range(args.repeats_a):
        started = time.perf_counter()
        scores = q_all @ pool.T  # (600, N) float32, all of it at once
        t1 = time.perf_counter()
        task_scores = [
            scores[a:b].max(axis=0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        t2 = time.perf_counter()
        index = round_robin_full_sort(task_scores, args.budget)
        t3 = time.perf_counter()
        seconds.append(t3 - started)
        phases["gemm_s"].append(t1 - started)
        phases["max_s"].append(t2 - t1)
        phases["argsort_and_rr_s"].append(t3 - t2)
        del scores
        print(
            f"    reference_full_matrix run {rep + 1}: {t3 - started:.2f}s",
            file=sys.stderr,
            flush=True,
        )
    peak = peak_rss_mib()
    np.save(work / "reference_index.npy", index)
    np.save(work / "reference_scores.npy", np.stack(task_scores))
    return {
        **timing_result(args.n, seconds, peak, baseline),
        "load_pool_s_untimed": round(load_s, 3),
        "breakdown_median": {k: med(v) for k, v in phases.items()},
    }


def side_gemm(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from tamis.selectors.rds import top_k_indices

    baseline = peak_rss_mib()
    q_all = np.concatenate(list(make_queries(args.seed).values()))
    load_s, pool = timed(lambda: load_pool(str(args.data_dir), args.n))
    seconds = []
    scores = None
    for rep in range(args.repeats):
        scores = None  # free the last product first, as a fresh call would find it
        s, scores = timed(lambda: q_all @ pool.T)
        seconds.append(s)
        print(f"    numpy_gemm run {rep + 1}: {s:.2f}s", file=sys.stderr, flush=True)
    peak = peak_rss_mib()
    # Exact top-10 of each query (for the IVF recall), after the measurements.
    assert scores is not None
    exact = np.empty((len(scores), IVF_K), dtype=np.int64)
    for i, row in enumerate(scores):
        exact[i] = top_k_indices(row, IVF_K)
    np.save(work / "exact_top10.npy", exact)
    return {
        **timing_result(args.n, seconds, peak, baseline),
        "load_pool_s_untimed": round(load_s, 3),
        "gflops": round(2 * q_all.shape[0] * args.n * DIM / statistics.median(seconds) / 1e9, 1),
    }


def side_ivf(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import faiss

    from tamis.index import build_from_embeddings_dir

    faiss.omp_set_num_threads(args.threads)
    baseline = peak_rss_mib()
    q_all = np.concatenate(list(make_queries(args.seed).values()))
    build, search = [], []
    for rep in range(args.repeats):
        b, (index, _ids) = timed(
            lambda: build_from_embeddings_dir(
                str(args.data_dir),
                factory=args.ivf_factory,
                device="cpu",
                train_size=min(args.train_size, args.n),
                nprobe=args.nprobe,
                seed=0,
            )
        )
        s, (_scores, found) = timed(lambda index=index: index.search(q_all, IVF_K))
        build.append(b)
        search.append(s)
        del index, _ids
        print(
            f"    faiss_ivf run {rep + 1}: build {b:.2f}s, search {s:.3f}s",
            file=sys.stderr,
            flush=True,
        )
    peak = peak_rss_mib()
    np.save(work / "ivf_top10.npy", found)
    total = [b + s for b, s in zip(build, search, strict=True)]
    return {
        "median_s": med(total),
        "items_per_s": round(args.n / statistics.median(total), 1),
        "peak_rss_mib": peak,
        "rss_baseline_mib": baseline,
        "rss_above_baseline_mib": round(peak - baseline, 1),
        "all_s": [round(s, 3) for s in total],
        "build_median_s": med(build),
        "search_median_s": med(search),
        "queries_per_s": round(len(q_all) / statistics.median(search), 1),
        "all_build_s": [round(s, 3) for s in build],
        "all_search_s": [round(s, 4) for s in search],
        "factory": args.ivf_factory,
        "nprobe": args.nprobe,
        "train_size": min(args.train_size, args.n),
    }


SIDES: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "tamis_rds": side_tamis,
    "tamis_rds_torch": side_tamis_torch,
    "tamis_rds_torch_bf16": side_tamis_torch_bf16,
    "numpy_gemm": side_gemm,
    "reference_full_matrix": side_reference,
    "faiss_ivf": side_ivf,
}


def run_side(name: str, args: argparse.Namespace, work: Path) -> None:
    """Child process: run one side and write its result next to the arrays it saved."""
    import pyarrow as pa

    pa.set_cpu_count(args.threads)
    pa.set_io_thread_count(args.threads)
    # Imports every side may need, before its baseline RSS is read.
    import tamis.embeddings.store  # noqa: F401

    write_side_result(name, work, SIDES[name](args, work))


def spawn_side(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    flags = ("n", "budget", "repeats", "repeats_a", "threads", "seed", "data_dir",
             "ivf_factory", "nprobe", "train_size")  # fmt: skip
    print(f"  {name} ...", flush=True)
    result, before, after = run_side_process(
        str(Path(__file__).resolve()), name, work,
        {flag: getattr(args, flag) for flag in flags}, thread_env(args.threads),
    )  # fmt: skip
    result["loadavg_1min_per_round"] = [[round(before[0], 2), round(after[0], 2)]]
    print(
        f"  {name}: {result['median_s']:.2f}s, peak RSS {result['peak_rss_mib']:.0f} MiB "
        f"({result['rss_above_baseline_mib']:.0f} above baseline)",
        flush=True,
    )
    return result


def pooled(earlier: dict[str, Any] | None, result: dict[str, Any], n: int) -> dict[str, Any]:
    """A side's result over the rounds so far: its timed runs pooled (median of all), the
    peak memory the highest; other fields are the last round's."""
    result["median_s_per_round"] = [result["median_s"]]
    if earlier is None:
        return result
    runs = earlier["all_s"] + result["all_s"]
    return {
        **result,
        "median_s": med(runs),
        "items_per_s": round(n / statistics.median(runs), 1),
        "all_s": runs,
        "peak_rss_mib": max(earlier["peak_rss_mib"], result["peak_rss_mib"]),
        "rss_above_baseline_mib": max(
            earlier["rss_above_baseline_mib"], result["rss_above_baseline_mib"]
        ),
        "median_s_per_round": earlier["median_s_per_round"] + [result["median_s"]],
        "loadavg_1min_per_round": earlier["loadavg_1min_per_round"]
        + result["loadavg_1min_per_round"],
    }


# ---------------------------------------------------------------------------------------------
# Checks and report


def compare_picks(work: Path, side: str, against: str) -> dict[str, Any]:
    """One side's picks and task scores against another's (files NAME_index.npy and
    NAME_scores.npy): equal, or where and how they differ."""
    picks = np.load(work / f"{side}_index.npy")
    ref = np.load(work / f"{against}_index.npy")
    same = len(picks) == len(ref) and bool(np.array_equal(picks, ref))
    common = len(set(picks.tolist()) & set(ref.tolist()))
    out: dict[str, Any] = {"picks": len(picks), "picks_equal": same}
    if not same:
        width = min(len(picks), len(ref))
        differ = np.flatnonzero(picks[:width] != ref[:width])
        out["same_set"] = set(picks.tolist()) == set(ref.tolist())
        out["common_items"] = common
        out["ranks_that_differ"] = int(len(differ) + abs(len(picks) - len(ref)))
        out["first_differing_rank"] = int(differ[0]) if len(differ) else width
    out["pick_overlap"] = round(common / max(len(ref), 1), 4)
    scores = np.load(work / f"{side}_scores.npy")
    r_scores = np.load(work / f"{against}_scores.npy")
    out["task_scores_bitwise_equal"] = bool(np.array_equal(scores, r_scores))
    out["task_scores_differ_count"] = int((scores != r_scores).sum())
    out["task_scores_max_abs_diff"] = float(f"{np.abs(scores - r_scores).max():.3g}")
    return out


def ivf_recall(work: Path) -> float:
    from tamis.index import recall_at_k

    found = np.load(work / "ivf_top10.npy")
    exact = np.load(work / "exact_top10.npy")
    return round(recall_at_k(found, exact, IVF_K), 4)


def data_stats(directory: Path, seed: int) -> dict[str, float]:
    """How the queries relate to the pool: mean top-1 and mean similarity, first part only."""
    from tamis.embeddings.store import iter_embedding_blocks

    block = next(iter_embedding_blocks(str(directory))).vectors
    q_all = np.concatenate(list(make_queries(seed).values()))
    sims = q_all @ block.T
    return {
        "first_part_mean_query_item_cos": round(float(sims.mean()), 4),
        "first_part_mean_top1_cos": round(float(sims.max(axis=1).mean()), 4),
        "first_part_mean_item_item_cos": round(float((block[:2000] @ block[:2000].T).mean()), 4),
    }


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{'side':<24}{'median_s':>10}{'items/s':>12}{'peak_rss':>12}{'above_base':>12}")
    for side, r in results.items():
        print(
            f"{side:<24}{r['median_s']:>10.2f}{r['items_per_s']:>12.0f}"
            f"{r['peak_rss_mib']:>9.0f}MiB{r['rss_above_baseline_mib']:>9.0f}MiB"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="pool size")
    parser.add_argument("--budget", type=int, default=50_000, help="items to select")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side (median)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the sides this many times, in turn forward and backward, and pool each "
        "side's runs (a shared, noisy machine)",
    )
    parser.add_argument(
        "--repeats-a", type=int, default=None, help="runs of reference_full_matrix (--repeats)"
    )
    parser.add_argument("--threads", type=int, default=2, help="BLAS / OpenMP / Arrow threads")
    parser.add_argument("--seed", type=int, default=0, help="data and query seed")
    parser.add_argument("--data-dir", type=Path, default=None, help="synthetic data cache")
    parser.add_argument("--ivf-factory", default="IVF1024,Flat", help="FAISS factory")
    parser.add_argument("--nprobe", type=int, default=16, help="IVF lists searched")
    parser.add_argument("--train-size", type=int, default=100_000, help="IVF training sample")
    parser.add_argument(
        "--sides", default=",".join(SIDE_ORDER), help="comma-separated subset of the sides"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help=f"JSON report (default {RESULTS})"
    )
    # Internal: run one side in this process (the parent starts one subprocess per side).
    parser.add_argument("--side", choices=list(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.n < 1 or not 1 <= args.budget <= args.n:
        parser.error("need --n >= 1 and 1 <= --budget <= --n")
    if args.repeats < 1 or args.rounds < 1 or (args.repeats_a is not None and args.repeats_a < 1):
        parser.error("--repeats, --rounds and --repeats-a must be >= 1")
    args.chosen_sides = chosen_sides(parser, args.sides, SIDE_ORDER)
    args.repeats_a = args.repeats if args.repeats_a is None else args.repeats_a
    args.data_dir = args.data_dir or default_data_dir(args.n, args.seed)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.side:
        run_side(args.side, args, args.work)
        return 0
    sides = args.chosen_sides
    print(
        f"{BENCH}: pool {args.n} x {DIM}, {N_TASKS} tasks x {QUERIES_PER_TASK} queries, "
        f"budget {args.budget}, {args.threads} threads, {args.repeats} repeats "
        f"({args.repeats_a} for reference_full_matrix) x {args.rounds} round(s)",
        flush=True,
    )
    generate_s = ensure_data(args.data_dir, args.n, args.seed)
    load_before = tuple(round(x, 2) for x in os.getloadavg())
    results: dict[str, dict[str, Any]] = {}
    checks: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tamis-bench-rds-") as tmp:
        work = Path(tmp)
        for round_ in range(args.rounds):  # forward, backward, ...: drift hits all sides
            for name in sides if round_ % 2 == 0 else sides[::-1]:
                results[name] = pooled(results.get(name), spawn_side(name, args, work), args.n)
        if {"tamis_rds", "reference_full_matrix"} <= set(results):
            checks["tamis_vs_reference"] = compare_picks(work, "tamis_rds", "reference")
        for side in ("tamis_rds_torch", "tamis_rds_torch_bf16"):
            if {"tamis_rds", side} <= set(results):
                checks[f"{side}_vs_tamis_rds"] = compare_picks(work, side, "tamis_rds")
        if {"faiss_ivf", "numpy_gemm"} <= set(results):
            results["faiss_ivf"]["recall_at_10"] = ivf_recall(work)
    load_after = tuple(round(x, 2) for x in os.getloadavg())

    ratios: dict[str, float] = {}
    if {"tamis_rds", "reference_full_matrix"} <= set(results):
        ratios["memory_tamis_over_reference"] = round(
            results["tamis_rds"]["rss_above_baseline_mib"]
            / results["reference_full_matrix"]["rss_above_baseline_mib"],
            4,
        )
        ratios["time_tamis_over_reference"] = round(
            results["tamis_rds"]["median_s"] / results["reference_full_matrix"]["median_s"], 3
        )
    if {"tamis_rds", "numpy_gemm"} <= set(results):
        ratios["time_tamis_over_gemm"] = round(
            results["tamis_rds"]["median_s"] / results["numpy_gemm"]["median_s"], 3
        )
    for side, key in (
        ("tamis_rds_torch", "time_torch_over_numpy"),
        ("tamis_rds_torch_bf16", "time_torch_bf16_over_numpy"),
    ):
        if {"tamis_rds", side} <= set(results):
            ratios[key] = round(results[side]["median_s"] / results["tamis_rds"]["median_s"], 3)
    met_memory = ratios.get("memory_tamis_over_reference", float("inf")) <= MEMORY_TARGET
    met_time = ratios.get("time_tamis_over_gemm", float("inf")) <= TIME_TARGET
    picks_equal = checks.get("tamis_vs_reference", {}).get("picks_equal", False)
    met_torch = ratios.get("time_torch_over_numpy", float("inf")) <= TORCH_TARGET
    torch_overlap = checks.get("tamis_rds_torch_vs_tamis_rds", {}).get("pick_overlap", 0.0)
    met_torch = met_torch and torch_overlap >= TORCH_OVERLAP
    met = met_memory and met_time and picks_equal and met_torch

    print_table(results)
    if "breakdown_one_run" in results.get("tamis_rds", {}):
        breakdown = results["tamis_rds"]["breakdown_one_run"]
        print(f"tamis_rds breakdown (one instrumented run): {breakdown}")
    if "faiss_ivf" in results:
        r = results["faiss_ivf"]
        print(
            f"faiss_ivf {r['factory']} nprobe {r['nprobe']}: build {r['build_median_s']:.2f}s, "
            f"search {r['search_median_s']:.3f}s, recall@10 {r.get('recall_at_10')}"
        )
    print(f"checks: {checks}")
    print(
        f"ratios: {ratios}; memory target (<= {MEMORY_TARGET}) met: {met_memory}, "
        f"time target (<= {TIME_TARGET}x gemm) met: {met_time}, picks equal: {picks_equal}"
    )
    if "time_torch_over_numpy" in ratios:
        print(
            f"device torch / numpy (cpu): {ratios['time_torch_over_numpy']}x "
            f"with {torch_overlap:.2%} of its picks (target <= {TORCH_TARGET}x, >= "
            f"{TORCH_OVERLAP:.1%}) met: {met_torch}"
        )
    if "tamis_rds_torch_bf16_vs_tamis_rds" in checks:
        bf16 = checks["tamis_rds_torch_bf16_vs_tamis_rds"]
        print(
            f"bfloat16 on torch: {ratios['time_torch_bf16_over_numpy']}x numpy's time, "
            f"keeps {bf16['pick_overlap']:.2%} of its picks"
        )
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")
    payload = {
        "params": {
            "n": args.n,
            "dim": DIM,
            "dtype": "float32",
            "tasks": N_TASKS,
            "queries_per_task": QUERIES_PER_TASK,
            "budget": args.budget,
            "selector": "rds, max over queries, task round robin; device per side: "
            + ", ".join(f"{k} {v}" for k, v in TAMIS_SIDES.items()),
            "repeats": args.repeats,
            "rounds": args.rounds,
            "repeats_reference_full_matrix": args.repeats_a,
            "threads": args.threads,
            "seed": args.seed,
            "data": {
                **data_spec(args.n, args.seed),
                "queries": f"{N_TASKS} tasks x {QUERIES_PER_TASK}, each task near "
                f"{CENTRES_PER_TASK} centres, sigma {QUERY_SIGMA}",
                "parts": -(-args.n // SHARD_ROWS),
                "dir": str(args.data_dir),
                "generate_s": round(generate_s, 1),
                **data_stats(args.data_dir, args.seed),
            },
            "side_order": sides,
            "timing_note": "tamis_rds (device cpu: numpy), tamis_rds_torch (device torch) and "
            "tamis_rds_torch_bf16 (device torch, precision bfloat16) time read_ids + "
            "make_selector + select, reading the Parquet parts (warm page cache); "
            "reference_full_matrix and numpy_gemm time the in-RAM computation only (pool "
            "loading untimed, its memory counted); faiss_ivf median_s is build (reads the "
            "parts twice) + search",
            "rss_note": "each side in a fresh subprocess; peak_rss_mib is the peak RSS "
            "(VmHWM; ru_maxrss would carry the parent's peak across exec) after the timed "
            "runs, rss_baseline_mib the peak after imports, before any data",
            "reference_note": "the reference also keeps per-pair Python dicts; this side "
            "does not, so it is a lower bound on the reference's memory and time",
            "loadavg_before_after": [load_before[0], load_after[0]],
            "loadavg_1_5_15_before": list(load_before),
            "loadavg_1_5_15_after": list(load_after),
            "checks": checks,
        },
        "results": results,
        "ratios": ratios,
        "targets": {
            "memory_tamis_over_reference": f"<= {MEMORY_TARGET}",
            "time_tamis_over_gemm": f"<= {TIME_TARGET}",
            "picks_equal": "tamis picks == reference_full_matrix picks",
            "time_torch_over_numpy": f"<= {TORCH_TARGET}",
            "torch_pick_overlap": f">= {TORCH_OVERLAP} of tamis_rds's picks",
        },
        "met": met,
    }
    write_results(BENCH, payload, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
