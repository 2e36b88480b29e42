"""PCoreSet k-center greedy at pool scale: tamis against the reference's naive loop.

Run it from the repository root:

    python bench/coreset.py                                             # 1,000,000 x 100
    python bench/coreset.py --n 100000 --subsample 10000 --picks 200 --repeats 1  # quick

Data: ``--n`` (default 1,000,000) synthetic class-probability vectors over ``--classes``
(default 100) classes, like a classifier's softmax: each row draws a class y uniformly,
logits z ~ N(0, 1) with z[y] += U(0, 8), P = softmax(z) in float32 (seeded by ``--seed``,
made in chunks of 100,000 rows). ``--labeled`` (default 100) pool positions are the
labelled set (the initial centers, never picked); ``--picks`` (default 1,000) are selected.
The subsample: ``--subsample`` (default 50,000) rows drawn with the seed, always holding the
labelled ones, in pool order. Generating the data is not timed (``generate_s``).

Sides, each in its own fresh subprocess with ``--threads`` BLAS / OpenMP / torch threads
(default 2); loading the saved arrays is not timed but its memory counts:

- tamis_full: the production path, ``make_selector("pcoreset", {}).select(...)`` on the
  whole pool (ids as an Arrow string array), median of ``--repeats`` runs (default 3).
- tamis_subsample: the same on the subsample (for the identity check and a measured ratio).
- naive_float32_subsample: the PCoreSet reference's loop (erjui/PCoreSet strategies.py,
  'pcoreset'), re-written for CPU torch: every step takes the remaining indices (a Python
  list, ``.remove()`` after each pick) in batches of 1,000, ``torch.cdist`` of each batch to
  all centers so far, the min per point, the argmax over all, and appends the pick to the
  centers. float32, as the reference runs it. Run once (it takes minutes).
- naive_float64_subsample: the same loop in float64, once: the identity check's reference.
  float32 ``cdist`` (a GEMM-based formula at these sizes) errs by ~1e-7, while tamis takes
  exact float64 distances, so a near-tie may go the other way in float32 alone.

The naive loop costs O(b N (L + b/2) C) for b picks, L labelled, C classes: linear in N for
fixed b, L and C, so its time at N is extrapolated from the subsample by N / subsample (x20
by default; the remaining points are N - L - t, so the exact factor is a little over 20 and
x20 slightly flatters the naive loop). Memory: ``peak_rss_mib`` is the subprocess's peak RSS
(VmHWM) after its runs, ``rss_baseline_mib`` its peak after imports, before any data.

Targets: picks identical to the float64 naive loop's on the subsample, tamis >= 100x faster
than the (float32) naive loop at equal N, and the full run under 2 minutes. Results go to
``bench/results/coreset.json`` (see DESIGN.md, "Tests and benchmarks").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchlib import (
    RESULTS_DIR,
    chosen_sides,
    peak_rss_mib,
    ratio,
    run_side_process,
    thread_env,
    timed,
    timing_result,
    write_results,
    write_side_result,
)

BENCH = "coreset"
GEN_CHUNK = 100_000
BOOST_MAX = 8.0  # the true class's logit gets + U(0, BOOST_MAX): from unsure to confident
REFERENCE_BATCH = 1000  # the reference's batch of remaining points per cdist
SPEEDUP_TARGET = 100.0
FULL_RUN_MAX_S = 120.0
RESULTS = RESULTS_DIR / f"{BENCH}.json"
SIDE_ORDER = (
    "tamis_full",
    "tamis_subsample",
    "naive_float32_subsample",
    "naive_float64_subsample",
)


# ---------------------------------------------------------------------------------------------
# Synthetic data


def make_probabilities(n: int, classes: int, seed: int) -> np.ndarray:
    """(n, classes) float32 softmax rows: noise logits with a boosted class each."""
    out = np.empty((n, classes), dtype=np.float32)
    for chunk, start in enumerate(range(0, n, GEN_CHUNK)):
        rows = min(GEN_CHUNK, n - start)
        rng = np.random.default_rng([seed, 1, chunk])  # per chunk: same rows at any n
        y = rng.integers(0, classes, rows)
        z = rng.standard_normal((rows, classes), dtype=np.float32)
        z[np.arange(rows), y] += rng.uniform(0.0, BOOST_MAX, rows).astype(np.float32)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        out[start : start + rows] = z
    return out


def choose_positions(n: int, labeled: int, subsample: int, seed: int):
    """Sorted labelled positions, and the sorted subsample positions that include them."""
    lab = np.sort(np.random.default_rng([seed, 2]).choice(n, labeled, replace=False))
    if subsample == n:
        return lab, np.arange(n)
    rest = np.ones(n, dtype=bool)
    rest[lab] = False
    others = np.random.default_rng([seed, 3]).choice(
        np.flatnonzero(rest), subsample - labeled, replace=False
    )
    return lab, np.sort(np.concatenate([lab, others]))


def write_data(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Generate the pool and save what the sides load; facts about it."""
    started = time.perf_counter()
    probs = make_probabilities(args.n, args.classes, args.seed)
    labeled, sub = choose_positions(args.n, args.labeled, args.subsample, args.seed)
    generate_s = time.perf_counter() - started
    np.save(work / "probs.npy", probs)
    np.save(work / "labeled.npy", labeled)
    np.save(work / "probs_sub.npy", probs[sub])
    np.save(work / "labeled_sub.npy", np.searchsorted(sub, labeled))
    np.save(work / "sub_positions.npy", sub)
    top1 = probs.max(axis=1)
    return {
        "generate_s_untimed": round(generate_s, 2),
        "mean_top1_prob": round(float(top1.mean()), 4),
        "median_top1_prob": round(float(np.median(top1)), 4),
        "max_row_sum_error": float(f"{np.abs(probs.sum(axis=1, dtype=np.float64) - 1).max():.3g}"),
    }


# ---------------------------------------------------------------------------------------------
# Sides (each runs in its own subprocess: `--side NAME`)


def tamis_side(args: argparse.Namespace, work: Path, subsample: bool) -> dict[str, Any]:
    import pyarrow as pa

    from tamis.selectors import make_selector
    from tamis.selectors.base import SelectionInputs

    baseline = peak_rss_mib()
    suffix = "_sub" if subsample else ""
    load_s, probs = timed(lambda: np.load(work / f"probs{suffix}.npy"))
    labeled = np.load(work / f"labeled{suffix}.npy").astype(np.int64)
    n = len(probs)
    # Arrow ids, as the select stage passes them: no million Python strings.
    ids = pa.array(np.arange(n, dtype=np.int64)).cast(pa.string())
    inputs = SelectionInputs(ids=ids, probabilities=probs, labeled=labeled)

    def run() -> Any:
        return make_selector("pcoreset", {}).select(inputs, args.picks, args.seed)

    seconds = []
    selection = None
    for rep in range(args.repeats):
        selection = None  # free the last result first, as a fresh call would find it
        s, selection = timed(run)
        seconds.append(s)
        print(f"    {n} points run {rep + 1}: {s:.2f}s", file=sys.stderr, flush=True)
    peak = peak_rss_mib()
    assert selection is not None
    name = "tamis_subsample" if subsample else "tamis_full"
    np.save(work / f"{name}_index.npy", selection.index)
    np.save(work / f"{name}_radius.npy", selection.score)
    info_keys = (
        "exact_distances",
        "look_aheads",
        "coverage_radius_first",
        "coverage_radius_last",
        "coverage_radius_after",
    )
    return {
        **timing_result(n, seconds, peak, baseline),
        "n": n,
        "runs": len(seconds),
        "load_s_untimed": round(load_s, 3),
        "info": {k: selection.info[k] for k in info_keys},
    }


def naive_pcoreset(probs: Any, labeled: list[int], picks: int) -> tuple[list[int], list[float]]:
    """The reference's loop: all distances to all centers again at every step."""
    import torch

    selected_probs = probs[labeled]
    taken = set(labeled)
    remaining_indices = [i for i in range(len(probs)) if i not in taken]
    chosen: list[int] = []
    radius: list[float] = []
    with torch.no_grad():
        for _ in range(picks):
            min_distances = []
            for start in range(0, len(remaining_indices), REFERENCE_BATCH):
                # Indexed by a Python list, as the reference does.
                batch_probs = probs[remaining_indices[start : start + REFERENCE_BATCH]]
                distances = torch.cdist(batch_probs, selected_probs, p=2)
                min_distances.append(distances.min(dim=1).values)
            nearest = torch.cat(min_distances)
            best = int(torch.argmax(nearest))  # the first maximum: lowest remaining index
            pick = remaining_indices[best]
            chosen.append(pick)
            radius.append(float(nearest[best]))
            selected_probs = torch.cat([selected_probs, probs[pick].unsqueeze(0)])
            remaining_indices.remove(pick)
    return chosen, radius


def naive_side(args: argparse.Namespace, work: Path, dtype_name: str) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    baseline = peak_rss_mib()
    load_s, array = timed(lambda: np.load(work / "probs_sub.npy"))
    probs = torch.from_numpy(array).to(getattr(torch, dtype_name))
    labeled = np.load(work / "labeled_sub.npy").tolist()
    s, (index, radius) = timed(lambda: naive_pcoreset(probs, labeled, args.picks))
    print(f"    {len(probs)} points, 1 run: {s:.2f}s", file=sys.stderr, flush=True)
    peak = peak_rss_mib()
    name = f"naive_{dtype_name}_subsample"
    np.save(work / f"{name}_index.npy", np.asarray(index, dtype=np.int64))
    np.save(work / f"{name}_radius.npy", np.asarray(radius, dtype=np.float64))
    return {
        **timing_result(len(probs), [s], peak, baseline),
        "n": len(probs),
        "runs": 1,
        "dtype": dtype_name,
        "torch_threads": torch.get_num_threads(),
        "load_s_untimed": round(load_s, 3),
    }


SIDES: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "tamis_full": lambda args, work: tamis_side(args, work, subsample=False),
    "tamis_subsample": lambda args, work: tamis_side(args, work, subsample=True),
    "naive_float32_subsample": lambda args, work: naive_side(args, work, "float32"),
    "naive_float64_subsample": lambda args, work: naive_side(args, work, "float64"),
}


def run_side(name: str, args: argparse.Namespace, work: Path) -> None:
    """Child process: run one side and write its result next to the arrays it saved."""
    # Imports every side may need, before its baseline RSS is read.
    import pyarrow  # noqa: F401
    import torch  # noqa: F401

    import tamis.selectors.coreset  # noqa: F401

    write_side_result(name, work, SIDES[name](args, work))


def spawn_side(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    flags = ("n", "picks", "labeled", "classes", "subsample", "repeats", "threads", "seed")
    print(f"  {name} ...", flush=True)
    result, before, after = run_side_process(
        str(Path(__file__).resolve()), name, work,
        {flag: getattr(args, flag) for flag in flags}, thread_env(args.threads),
    )  # fmt: skip
    # Other work on the machine slows the 2-thread loops badly: note it per side.
    result["loadavg_1min_before_after"] = [round(before[0], 2), round(after[0], 2)]
    print(
        f"  {name}: {result['median_s']:.2f}s, peak RSS {result['peak_rss_mib']:.0f} MiB "
        f"({result['rss_above_baseline_mib']:.0f} above baseline)",
        flush=True,
    )
    return result


# ---------------------------------------------------------------------------------------------
# Checks and report


def nearest_distance(points: np.ndarray, candidate: int, centers: np.ndarray) -> float:
    """Exact float64 distance from one point to its nearest center."""
    diff = points[centers].astype(np.float64) - points[candidate].astype(np.float64)
    return float(np.sqrt((diff * diff).sum(axis=1)).min())


def compare_picks(work: Path, naive: str) -> dict[str, Any]:
    """tamis's subsample picks against one naive run's: equal, or where and by how much."""
    tamis = np.load(work / "tamis_subsample_index.npy")
    ref = np.load(work / f"{naive}_index.npy")
    t_radius = np.load(work / "tamis_subsample_radius.npy")
    r_radius = np.load(work / f"{naive}_radius.npy")
    same = len(tamis) == len(ref) and bool(np.array_equal(tamis, ref))
    width = min(len(tamis), len(ref))
    differ = np.flatnonzero(tamis[:width] != ref[:width])
    prefix = width if same or not len(differ) else int(differ[0])
    out: dict[str, Any] = {
        "picks": len(tamis),
        "picks_equal": same,
        # Same picks so far, so the same centers: the radii differ only by rounding.
        "radius_max_abs_diff_common_prefix": float(
            f"{np.abs(t_radius[:prefix] - r_radius[:prefix]).max(initial=0.0):.3g}"
        ),
    }
    if not same:
        points = np.load(work / "probs_sub.npy")
        centers = np.concatenate([np.load(work / "labeled_sub.npy"), tamis[:prefix]])
        d_tamis = nearest_distance(points, int(tamis[prefix]), centers)
        d_naive = nearest_distance(points, int(ref[prefix]), centers)
        out |= {
            "first_differing_step": prefix,
            "tamis_pick": int(tamis[prefix]),
            "naive_pick": int(ref[prefix]),
            "exact_nearest_distance_tamis_pick": d_tamis,
            "exact_nearest_distance_naive_pick": d_naive,
            "exact_gap": float(f"{d_tamis - d_naive:.3g}"),
            "naive_reported_radius": float(r_radius[prefix]),
            "common_picks": len(set(tamis.tolist()) & set(ref.tolist())),
        }
    return out


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print(f"\n{'side':<26}{'n':>9}{'runs':>6}{'median_s':>10}{'peak_rss':>12}{'above_base':>12}")
    for side, r in results.items():
        print(
            f"{side:<26}{r['n']:>9}{r['runs']:>6}{r['median_s']:>10.2f}"
            f"{r['peak_rss_mib']:>9.0f}MiB{r['rss_above_baseline_mib']:>9.0f}MiB"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="pool size")
    parser.add_argument("--picks", type=int, default=1000, help="points to select")
    parser.add_argument("--labeled", type=int, default=100, help="labelled pool points")
    parser.add_argument("--classes", type=int, default=100, help="classes (dimension)")
    parser.add_argument("--subsample", type=int, default=50_000, help="naive loop's pool")
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each tamis side (median); naive: 1"
    )
    parser.add_argument("--threads", type=int, default=2, help="BLAS / OpenMP / torch threads")
    parser.add_argument("--seed", type=int, default=0, help="data seed (and selection seed)")
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
    if not 1 <= args.labeled <= args.subsample <= args.n:
        parser.error("need 1 <= --labeled <= --subsample <= --n")
    if not 1 <= args.picks <= args.subsample - args.labeled:
        parser.error("need 1 <= --picks <= --subsample - --labeled")
    if args.repeats < 1 or args.classes < 2:
        parser.error("need --repeats >= 1 and --classes >= 2")
    args.chosen_sides = chosen_sides(parser, args.sides, SIDE_ORDER)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.side:
        run_side(args.side, args, args.work)
        return 0
    sides = args.chosen_sides
    factor = args.n / args.subsample
    print(
        f"{BENCH}: pool {args.n} x {args.classes}, {args.labeled} labelled, {args.picks} picks, "
        f"naive on {args.subsample} (x{factor:g} to N), {args.threads} threads, "
        f"{args.repeats} repeats for tamis, 1 per naive precision",
        flush=True,
    )
    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    checks: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tamis-bench-coreset-") as tmp:
        work = Path(tmp)
        data = write_data(args, work)
        print(f"data: generated in {data['generate_s_untimed']:.1f}s (untimed)", flush=True)
        for name in sides:
            results[name] = spawn_side(name, args, work)
        for naive in ("naive_float64_subsample", "naive_float32_subsample"):
            if {"tamis_subsample", naive} <= set(results):
                checks[f"tamis_vs_{naive}"] = compare_picks(work, naive)
    load_after = os.getloadavg()

    def seconds(side: str) -> float | None:
        return results[side]["median_s"] if side in results else None

    naive_full: dict[str, Any] = {}
    for precision in ("float32", "float64"):
        side = f"naive_{precision}_subsample"
        if side in results:
            naive_full[precision] = {
                "median_s": round(results[side]["median_s"] * factor, 1),
                "extrapolated": True,
                "factor": factor,
                "from_n": args.subsample,
                "cost_model": "b N (L + b/2) C",
            }
    results["naive_extrapolated_full_n"] = naive_full  # type: ignore[assignment]
    ratios = {
        "speedup_vs_naive_float32_at_full_n": ratio(
            naive_full.get("float32", {}).get("median_s"), seconds("tamis_full")
        ),
        "speedup_vs_naive_float64_at_full_n": ratio(
            naive_full.get("float64", {}).get("median_s"), seconds("tamis_full")
        ),
        "speedup_vs_naive_float32_at_subsample_measured": ratio(
            seconds("naive_float32_subsample"), seconds("tamis_subsample")
        ),
        "speedup_vs_naive_float64_at_subsample_measured": ratio(
            seconds("naive_float64_subsample"), seconds("tamis_subsample")
        ),
    }
    f64 = checks.get("tamis_vs_naive_float64_subsample", {})
    f32 = checks.get("tamis_vs_naive_float32_subsample", {})
    checks["picks_equal_float64_reference"] = f64.get("picks_equal")
    checks["picks_equal_float32_reference"] = f32.get("picks_equal")
    speedup = ratios["speedup_vs_naive_float32_at_full_n"]
    full_s = seconds("tamis_full")
    met = {
        "picks_identical_on_subsample": f64.get("picks_equal") is True,
        "speedup_vs_naive_at_equal_n_min": speedup is not None and speedup >= SPEEDUP_TARGET,
        "full_run_max_s": full_s is not None and full_s <= FULL_RUN_MAX_S,
    }
    met["all"] = all(met.values())

    print_table({k: v for k, v in results.items() if k in SIDE_ORDER})
    for precision, r in naive_full.items():
        print(f"naive {precision} at N={args.n}: {r['median_s']:.0f}s (extrapolated x{factor:g})")
    print(f"checks: {json.dumps(checks)}")
    print(f"ratios: {ratios}")
    print(f"met: {met}")
    payload = {
        "params": {
            "n": args.n,
            "classes": args.classes,
            "labeled": args.labeled,
            "picks": args.picks,
            "subsample": args.subsample,
            "selector": "pcoreset, default params (Euclidean k-center greedy)",
            "repeats_tamis": args.repeats,
            "runs_naive": 1,
            "threads": args.threads,
            "seed": args.seed,
            "data": {
                "kind": f"softmax of N(0, 1) logits, true class + U(0, {BOOST_MAX:g}), float32",
                "chunk_rows": GEN_CHUNK,
                **data,
            },
            "reference_batch": REFERENCE_BATCH,
            "side_order": sides,
            "timing_note": "tamis times make_selector + select on the in-RAM probabilities "
            "(loading the .npy untimed); the naive sides time the whole loop, including "
            "building the remaining-index list, once each (float32: the reference's "
            "precision, used for the speed target; float64: the identity check's reference)",
            "extrapolation_note": "naive time at N = subsample time x N / subsample: its cost "
            "b N (L + b/2) C is linear in N for fixed b, L, C (the remaining points are "
            "N - L - t, so the exact factor is slightly above; x N / subsample flatters the "
            "naive loop a little). Naive memory is the subsample's, not extrapolated",
            "rss_note": "each side in a fresh subprocess; peak_rss_mib is the peak RSS "
            "(VmHWM) after its runs, rss_baseline_mib the peak after imports, before any data",
            "loadavg_before_after": [
                [round(x, 2) for x in load_before],
                [round(x, 2) for x in load_after],
            ],
            "checks": checks,
        },
        "results": results,
        "ratios": ratios,
        "targets": {
            "picks_identical_on_subsample": True,
            "speedup_vs_naive_at_equal_n_min": SPEEDUP_TARGET,
            "full_run_max_s": FULL_RUN_MAX_S,
        },
        "met": met,
    }
    print(f"wrote {write_results(BENCH, payload, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
