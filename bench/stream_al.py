"""Stream active learning decisions at 1,000,000 items: tamis against scikit-activeml.

Run it from the repository root:

    python bench/stream_al.py                                    # 1,000,000 items, prefix 20,000
    python bench/stream_al.py --n 100000 --prefix 2000 --repeats 2 --ref-repeats 1  # quick

Data: ``--n`` (default 1,000,000) utilities u = 1 - max p, where p is the softmax of
classifier-like logits over ``--classes`` (default 10) classes: each row draws a class y
uniformly, z ~ N(0, 1) and z[y] += U(0, 4); float64, seeded by ``--seed``, made in chunks of
100,000 rows (the same rows at any n). Budget B = ``--budget`` (default 0.1). Generating the
data is not timed.

Strategies: variable uncertainty (theta = 1.0, s = 0.01, w = 100) and BIQF (w = 100,
w_tol = 50), each library's defaults, which agree. Sides, each in its own fresh subprocess
(one per side and strategy, ``--threads`` thread-pool threads, default 1: both are
sequential loops); loading the saved utilities is not timed:

- tamis: ``StreamDecider(strategy, B).decide(utility=u)``. A warm-up call on 1,000 items
  first, on its own decider, timed apart (``warmup_first_call_s``): numba compiles the loop
  there (into a fresh, empty ``NUMBA_CACHE_DIR`` by default, so it is a real compile;
  ``--numba-cache project`` loads the project's cache instead). Then, each on a fresh
  decider and the median of ``--repeats`` (default 5):
  ``one_call``, all n items in one ``decide``; ``chunked``, ``--chunk`` (default 1,000)
  items per call, as a streaming consumer would call it (per-call overhead included); and,
  for information only, ``one_item_per_call`` on the prefix, exactly the reference's
  calling pattern.
- skactiveml: scikit-activeml 1.0.1's budget managers fed ONE item at a time, as a stream
  consumer would, on the first ``--prefix`` items (default 20,000), the median of
  ``--ref-repeats`` runs (default 3). Variable uncertainty:
  ``q = VariableUncertaintyBudgetManager(budget=B).query_by_utility(np.array([u]))`` then
  ``bm.update(np.array([[0.0]]), q)``; BIQF: ``BalancedIncrementalQuantileFilter(budget=B)``,
  ``bm.update(np.array([[0.0]]), q, utilities=np.array([u]))``. Its per-item cost does not
  depend on how many items came before (a fixed window of w), so its time at n is
  extrapolated linearly: prefix time x n / prefix (``extrapolated``: true, with the factor).

Checks: tamis's first ``--prefix`` decisions of the one-call run (same first item) against
skactiveml's, per strategy (``decisions_equal``); tamis's chunked and one-item-per-call
decisions against its one-call decisions (the state carries over between calls).

Targets: per strategy, tamis items/s (one call over n) >= 100x skactiveml's items/s, with
identical decisions on the prefix. Results go to ``bench/results/stream_al.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchlib import (
    RESULTS_DIR,
    chosen_sides,
    med,
    peak_rss_mib,
    ratio,
    run_side_process,
    thread_env,
    timed,
    timing_result,
    write_results,
    write_side_result,
)

BENCH = "stream_al"
GEN_CHUNK = 100_000
BOOST_MAX = 4.0  # the true class's logit gets + U(0, BOOST_MAX): from unsure to confident
WARMUP_ITEMS = 1000
SPEEDUP_TARGET = 100.0
STRATEGIES = ("variable_uncertainty", "biqf")
SHORT = {"variable_uncertainty": "vu", "biqf": "biqf"}
SIDE_ORDER = tuple(f"{side}_{SHORT[s]}" for s in STRATEGIES for side in ("tamis", "skactiveml"))
RESULTS = RESULTS_DIR / f"{BENCH}.json"


# ---------------------------------------------------------------------------------------------
# Synthetic data


def make_utilities(n: int, classes: int, seed: int) -> np.ndarray:
    """(n,) float64 utilities 1 - max p of softmax rows with a boosted class each."""
    out = np.empty(n, dtype=np.float64)
    for chunk, start in enumerate(range(0, n, GEN_CHUNK)):
        rows = min(GEN_CHUNK, n - start)
        rng = np.random.default_rng([seed, 1, chunk])  # per chunk: same rows at any n
        y = rng.integers(0, classes, rows)
        z = rng.standard_normal((rows, classes))
        z[np.arange(rows), y] += rng.uniform(0.0, BOOST_MAX, rows)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        out[start : start + rows] = 1.0 - z.max(axis=1)
    return out


def write_data(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Generate the utilities and save them for the sides; facts about them."""
    generate_s, u = timed(lambda: make_utilities(args.n, args.classes, args.seed))
    np.save(work / "utilities.npy", u)
    return {
        "generate_s_untimed": round(generate_s, 2),
        "mean_utility": round(float(u.mean()), 4),
        "median_utility": round(float(np.median(u)), 4),
        "quantile_1_minus_budget": round(float(np.quantile(u, 1 - args.budget)), 4),
    }


# ---------------------------------------------------------------------------------------------
# Sides (each runs in its own subprocess: `--side NAME`)


def rate(n: int, seconds: list[float]) -> float:
    return round(n / statistics.median(seconds), 1)


def tamis_side(args: argparse.Namespace, work: Path, strategy: str) -> dict[str, Any]:
    from tamis.selectors.stream_budget import StreamDecider

    baseline = peak_rss_mib()
    u = np.load(work / "utilities.npy")
    n, prefix = len(u), args.prefix

    def fresh() -> StreamDecider:
        return StreamDecider(strategy, args.budget)

    # The first call compiles the loop (or loads numba's cache): timed apart, never again.
    warm = fresh()
    first_s, _ = timed(lambda: warm.decide(utility=u[:WARMUP_ITEMS]))
    second_s, _ = timed(lambda: warm.decide(utility=u[WARMUP_ITEMS : 2 * WARMUP_ITEMS]))

    one_call_s, queried = [], None
    for _ in range(args.repeats):
        decider = fresh()  # built outside the timed call, as the reference's manager is
        s, out = timed(lambda d=decider: d.decide(utility=u))
        one_call_s.append(s)
        queried = out.queried
    assert queried is not None
    np.save(work / f"tamis_{SHORT[strategy]}_queried.npy", queried)

    def chunked(d: StreamDecider, items: np.ndarray, size: int) -> np.ndarray:
        # A streaming consumer's loop: one decide per arriving batch, results kept.
        return np.concatenate(
            [d.decide(utility=items[i : i + size]).queried for i in range(0, len(items), size)]
        )

    chunk_s, chunk_equal = [], True
    for _ in range(args.repeats):
        decider = fresh()
        s, got = timed(lambda d=decider: chunked(d, u, args.chunk))
        chunk_s.append(s)
        chunk_equal &= bool(np.array_equal(got, queried))

    item_s, item_equal = [], True
    for _ in range(args.repeats):
        decider = fresh()
        s, got = timed(lambda d=decider: chunked(d, u[:prefix], 1))
        item_s.append(s)
        item_equal &= bool(np.array_equal(got, queried[:prefix]))
    peak = peak_rss_mib()
    calls = -(-n // args.chunk)
    overhead_us = (statistics.median(chunk_s) - statistics.median(one_call_s)) / calls * 1e6
    return {
        **timing_result(n, one_call_s, peak, baseline),
        "n": n,
        "runs": len(one_call_s),
        "all_ms": [round(s * 1e3, 3) for s in one_call_s],
        "ns_per_item": round(statistics.median(one_call_s) / n * 1e9, 2),
        "warmup_first_call_s": round(first_s, 3),
        "warmup_first_call_items": WARMUP_ITEMS,
        "warmup_second_call_ms": round(second_s * 1e3, 3),
        "numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR", "project __pycache__"),
        "query_rate": round(float(queried.mean()), 5),
        "query_rate_prefix": round(float(queried[:prefix].mean()), 5),
        "chunked": {
            "chunk": args.chunk,
            "calls": calls,
            "median_s": med(chunk_s),
            "items_per_s": rate(n, chunk_s),
            "all_ms": [round(s * 1e3, 3) for s in chunk_s],
            "per_call_overhead_us": round(overhead_us, 2),
            "decisions_equal_one_call": chunk_equal,
        },
        "one_item_per_call_prefix": {
            "n": prefix,
            "median_s": med(item_s),
            "items_per_s": rate(prefix, item_s),
            "us_per_item": round(statistics.median(item_s) / prefix * 1e6, 2),
            "all_s": [round(s, 3) for s in item_s],
            "decisions_equal_one_call": item_equal,
        },
    }


def skactiveml_side(args: argparse.Namespace, work: Path, strategy: str) -> dict[str, Any]:
    from skactiveml.stream.budgetmanager import (
        BalancedIncrementalQuantileFilter,
        VariableUncertaintyBudgetManager,
    )

    baseline = peak_rss_mib()
    u = np.load(work / "utilities.npy")[: args.prefix]

    def run() -> np.ndarray:
        candidates = np.array([[0.0]])  # the managers only count the candidates
        queried = np.zeros(len(u), dtype=bool)
        if strategy == "variable_uncertainty":
            bm = VariableUncertaintyBudgetManager(budget=args.budget)
            for i, value in enumerate(u):
                q = bm.query_by_utility(np.array([value]))
                bm.update(candidates, q)
                queried[i] = len(q) > 0
        else:
            bm = BalancedIncrementalQuantileFilter(budget=args.budget)
            for i, value in enumerate(u):
                utilities = np.array([value])
                q = bm.query_by_utility(utilities)
                bm.update(candidates, q, utilities=utilities)
                queried[i] = len(q) > 0
        return queried

    seconds, runs_agree, first = [], True, None
    for rep in range(args.ref_repeats):
        s, queried = timed(run)
        seconds.append(s)
        print(f"    {len(u)} items run {rep + 1}: {s:.2f}s", file=sys.stderr, flush=True)
        first = queried if first is None else first
        runs_agree &= bool(np.array_equal(queried, first))
    peak = peak_rss_mib()
    assert first is not None
    np.save(work / f"skactiveml_{SHORT[strategy]}_queried.npy", first)
    return {
        **timing_result(len(u), seconds, peak, baseline),
        "n": len(u),
        "runs": len(seconds),
        "us_per_item": round(statistics.median(seconds) / len(u) * 1e6, 2),
        "query_rate": round(float(first.mean()), 5),
        "runs_agree": runs_agree,
    }


SIDES: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    f"{side}_{SHORT[strategy]}": (
        lambda args, work, f=fn, s=strategy: f(args, work, s)  # bind now, not at call time
    )
    for strategy in STRATEGIES
    for side, fn in (("tamis", tamis_side), ("skactiveml", skactiveml_side))
}


def run_side(name: str, args: argparse.Namespace, work: Path) -> None:
    """Child process: run one side and write its result next to the arrays it saved."""
    # Imports either side may need, before its baseline RSS is read.
    import numba  # noqa: F401
    import skactiveml.stream.budgetmanager  # noqa: F401

    import tamis.selectors.stream_budget  # noqa: F401

    write_side_result(name, work, SIDES[name](args, work))


def spawn_side(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    flags = ("n", "prefix", "chunk", "budget", "repeats", "ref_repeats", "threads", "seed")
    env = thread_env(args.threads)
    if name.startswith("tamis") and args.numba_cache == "fresh":
        # An empty cache per side: the warm-up call is a real compile, not a cache load.
        env["NUMBA_CACHE_DIR"] = str(work / f"numba_cache_{name}")
    print(f"  {name} ...", flush=True)
    result, before, after = run_side_process(
        str(Path(__file__).resolve()), name, work, {f: getattr(args, f) for f in flags}, env
    )
    # Other work on the machine slows the loops: note it per side.
    result["loadavg_before_after"] = [
        [round(x, 2) for x in before],
        [round(x, 2) for x in after],
    ]
    print(
        f"  {name}: {result['n']} items, median {result['median_s']:.3f}s, "
        f"{result['items_per_s']:,.0f} items/s, load {before[0]:.2f} -> {after[0]:.2f}",
        flush=True,
    )
    return result


# ---------------------------------------------------------------------------------------------
# Checks and report


def compare_decisions(work: Path, short: str, prefix: int) -> dict[str, Any]:
    """tamis's first `prefix` one-call decisions against skactiveml's one-item ones."""
    tamis = np.load(work / f"tamis_{short}_queried.npy")[:prefix]
    ref = np.load(work / f"skactiveml_{short}_queried.npy")
    differ = np.flatnonzero(tamis != ref)
    out: dict[str, Any] = {
        "items": len(ref),
        "decisions_equal": len(tamis) == len(ref) and not len(differ),
        "queried_tamis": int(tamis.sum()),
        "queried_skactiveml": int(ref.sum()),
    }
    if len(differ):
        out |= {"differing_items": len(differ), "first_differing_item": int(differ[0])}
    return out


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print(
        f"\n{'side':<16}{'n':>9}{'runs':>6}{'median_s':>10}{'items/s':>15}"
        f"{'chunked items/s':>17}{'1/call items/s':>16}{'query':>8}"
    )
    for side, r in results.items():
        chunk = r.get("chunked", {}).get("items_per_s")
        item = r.get("one_item_per_call_prefix", {}).get("items_per_s")
        print(
            f"{side:<16}{r['n']:>9}{r['runs']:>6}{r['median_s']:>10.3f}{r['items_per_s']:>15,.0f}"
            f"{'-' if chunk is None else f'{chunk:,.0f}':>17}"
            f"{'-' if item is None else f'{item:,.0f}':>16}{r['query_rate']:>8.4f}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="stream length")
    parser.add_argument("--prefix", type=int, default=20_000, help="skactiveml's items")
    parser.add_argument("--chunk", type=int, default=1000, help="items per tamis chunked call")
    parser.add_argument("--budget", type=float, default=0.1, help="budget fraction B")
    parser.add_argument("--classes", type=int, default=10, help="classes of the softmax")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each tamis timing")
    parser.add_argument("--ref-repeats", type=int, default=3, help="runs of skactiveml")
    parser.add_argument("--threads", type=int, default=1, help="BLAS / OpenMP threads")
    parser.add_argument("--seed", type=int, default=0, help="data seed")
    parser.add_argument(
        "--numba-cache",
        choices=("fresh", "project"),
        default="fresh",
        help="tamis warm-up: compile into an empty cache (fresh) or load the project's",
    )
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
    if not 1 <= args.prefix <= args.n or args.n < 2 * WARMUP_ITEMS:
        parser.error(f"need 1 <= --prefix <= --n and --n >= {2 * WARMUP_ITEMS}")
    if not 0 < args.budget <= 1 or args.chunk < 1 or args.classes < 2:
        parser.error("need 0 < --budget <= 1, --chunk >= 1 and --classes >= 2")
    if args.repeats < 1 or args.ref_repeats < 1:
        parser.error("need --repeats >= 1 and --ref-repeats >= 1")
    args.chosen_sides = chosen_sides(parser, args.sides, SIDE_ORDER)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.side:
        run_side(args.side, args, args.work)
        return 0
    sides = args.chosen_sides
    factor = args.n / args.prefix
    print(
        f"{BENCH}: {args.n} items, {args.classes} classes, budget {args.budget:g}, "
        f"skactiveml one item at a time on {args.prefix} (x{factor:g} to n), tamis in one call "
        f"and in chunks of {args.chunk}, {args.repeats} / {args.ref_repeats} repeats",
        flush=True,
    )
    load_before = os.getloadavg()
    results: dict[str, dict[str, Any]] = {}
    checks: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tamis-bench-stream-al-") as tmp:
        work = Path(tmp)
        data = write_data(args, work)
        print(f"data: generated in {data['generate_s_untimed']:.1f}s (untimed)", flush=True)
        for name in sides:
            results[name] = spawn_side(name, args, work)
        for short in SHORT.values():
            if {f"tamis_{short}", f"skactiveml_{short}"} <= set(results):
                checks[short] = compare_decisions(work, short, args.prefix)
    load_after = os.getloadavg()

    ref_full: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    met: dict[str, Any] = {}
    for strategy, short in SHORT.items():
        tamis, ref = results.get(f"tamis_{short}"), results.get(f"skactiveml_{short}")
        if ref is not None:
            ref_full[short] = {
                "n": args.n,
                "median_s": round(ref["median_s"] * factor, 1),
                "items_per_s": ref["items_per_s"],
                "extrapolated": True,
                "factor": factor,
                "from_n": args.prefix,
                "cost_model": "linear in n (a fixed window of w per item)",
            }
        if tamis is None or ref is None:
            continue
        ratios[short] = {
            "one_call_vs_skactiveml": ratio(tamis["items_per_s"], ref["items_per_s"]),
            "chunked_vs_skactiveml": ratio(tamis["chunked"]["items_per_s"], ref["items_per_s"]),
            # Information only: tamis called exactly as the reference is, one item per call.
            "one_item_per_call_vs_skactiveml": ratio(
                tamis["one_item_per_call_prefix"]["items_per_s"], ref["items_per_s"]
            ),
        }
        equal = checks[short]["decisions_equal"]
        speedup = ratios[short]["one_call_vs_skactiveml"]
        met[strategy] = {
            "speedup_min": speedup is not None and speedup >= SPEEDUP_TARGET,
            "decisions_identical_on_prefix": equal,
            "all": speedup is not None and speedup >= SPEEDUP_TARGET and equal,
        }
    met["all"] = bool(met) and all(m["all"] for m in met.values())
    results["skactiveml_extrapolated_full_n"] = ref_full

    print_table({k: v for k, v in results.items() if k in SIDE_ORDER})
    for short, r in ref_full.items():
        print(f"skactiveml {short} at n={args.n}: {r['median_s']:.0f}s (extrapolated x{factor:g})")
    print(f"checks: {json.dumps(checks)}")
    print(f"ratios: {ratios}")
    print(f"met: {met}")
    print(f"load average before / after: {load_before} / {load_after}")
    payload = {
        "params": {
            "n": args.n,
            "prefix": args.prefix,
            "chunk": args.chunk,
            "budget": args.budget,
            "classes": args.classes,
            "strategies": {
                "variable_uncertainty": {"theta": 1.0, "s": 0.01, "w": 100},
                "biqf": {"w": 100, "w_tol": 50},
            },
            "repeats_tamis": args.repeats,
            "repeats_skactiveml": args.ref_repeats,
            "threads": args.threads,
            "seed": args.seed,
            "numba_cache": args.numba_cache,
            "data": {
                "kind": f"u = 1 - max softmax(z), z ~ N(0, 1), true class + U(0, {BOOST_MAX:g}), "
                "float64",
                "chunk_rows": GEN_CHUNK,
                **data,
            },
            "side_order": sides,
            "timing_note": "tamis: decide() on the in-RAM utilities, a fresh StreamDecider per "
            "run built outside the timing, after an untimed-for-rate warm-up call "
            "(warmup_first_call_s: the numba compile); one_call = all n items in one decide, "
            "chunked = one decide per --chunk items, one_item_per_call = one decide per item "
            "on the prefix. skactiveml: query_by_utility + update per item, on the prefix. "
            "decide allocates its n-long outputs (queried, threshold, budget estimate, two "
            "uniforms per item) per call: in one call over n their first-touch page faults "
            "count (np.full(1e6, nan) alone takes ~6 ms here), while chunked calls reuse "
            "small, already-mapped blocks, so chunked can beat one call on the cheap loops",
            "extrapolation_note": "skactiveml time at n = prefix time x n / prefix: each item "
            "costs the same (variable uncertainty: O(1); BIQF: a quantile over a window of w), "
            "so it is linear in n; items/s is measured on the prefix and used as is",
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
        "targets": {"speedup_min": SPEEDUP_TARGET, "decisions_identical_on_prefix": True},
        "met": met,
    }
    print(f"wrote {write_results(BENCH, payload, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
