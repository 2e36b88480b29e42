"""Scaling-law fit and plan speed: tamis against the reference's grid search.

Run it from the repository root:

    python bench/scaling_laws.py

Data: 10 quality buckets (12.8M samples each) with known b in [-0.3, -0.075] and tau in
[2, 9.2], errors at 2, 4, 6, 8 and 10 passes from the law (a = 0.025, d = 0.1) with 0.2%
multiplicative noise (seeded).

Sides (same process, medians of ``--repeats``):

- tamis_fit_fixed_ad: ``fit_scaling_laws`` with a and d fixed (as the reference fixes them).
- tamis_fit_a: the same with a fitted jointly (d fixed).
- reference_grid: the reference's approach, re-implemented: per bucket, every (b, tau) of a
  shuffled grid (b in [-0.5, -0.005], 100 values; tau in [1, 10], 46 values) scored by the
  squared error of the law, the best kept (a and d fixed).
- tamis_plan: ``plan`` for the 10 buckets at 100 budgets (32M .. 12.8B).

Reported: seconds, the largest relative error of the recovered b and tau. Targets: fitting
10 buckets x 5 points under 5 s, planning 10 buckets x 100 budgets under 1 s.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchlib import RESULTS_DIR, machine, med, write_results
from tamis.selectors.scaling_laws import fit_scaling_laws, plan, single_pool_errors

S, A, D = 12.8e6, 0.025, 0.1
TRUTH = {f"bucket{i:02d}": (-0.3 + 0.025 * i, 2 + 0.8 * i) for i in range(10)}


def observations(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for name, (b, tau) in TRUTH.items():
        n = np.array([2, 4, 6, 8, 10]) * S
        out[name] = (n, single_pool_errors(n, A, b, tau, D, S) * (1 + rng.normal(0, 0.002, 5)))
    return out


def reference_grid(obs: dict, seed: int) -> dict:
    """Per bucket, the best (b, tau) of a shuffled grid, as the reference's grid_search."""
    rng = np.random.default_rng(seed)
    grid = [(b, tau) for b in np.linspace(-0.5, -0.005, 100) for tau in np.linspace(1, 10, 46)]
    rng.shuffle(grid)
    fitted = {}
    for name, (n, error) in obs.items():
        best = (np.inf, None, None)
        for b, tau in grid:
            loss = float(np.sum((single_pool_errors(n, A, b, tau, D, S) - error) ** 2))
            if loss < best[0]:
                best = (loss, b, tau)
        fitted[name] = {"b": best[1], "tau": best[2]}
    return fitted


def recovery(buckets: dict) -> dict:
    b = max(abs(buckets[k]["b"] / TRUTH[k][0] - 1) for k in TRUTH)
    tau = max(abs(buckets[k]["tau"] / TRUTH[k][1] - 1) for k in TRUTH)
    return {"max_rel_err_b": round(b, 4), "max_rel_err_tau": round(tau, 4)}


def timed(fn, repeats: int):
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return seconds, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per side (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "scaling_laws.json")
    args = parser.parse_args(argv)
    obs = observations(args.seed)
    sizes = {k: S for k in obs}
    budgets = np.geomspace(32e6, 12.8e9, 100)
    sides = {
        "tamis_fit_fixed_ad": lambda: fit_scaling_laws(obs, sizes, a=A, d=D).buckets,
        "tamis_fit_a": lambda: fit_scaling_laws(obs, sizes, d=D).buckets,
        "reference_grid": lambda: reference_grid(obs, args.seed),
        "tamis_plan": lambda: plan(
            {k: {"b": b, "tau": t, "pool_size": S} for k, (b, t) in TRUTH.items()}, A, D, budgets
        ),
    }
    results = {}
    for name, fn in sides.items():
        seconds, result = timed(fn, args.repeats)
        results[name] = {
            "median_s": round(med(seconds), 4),
            "all_s": [round(s, 4) for s in seconds],
        }
        if name != "tamis_plan":
            results[name].update(recovery(result))
        else:
            results[name]["rows"] = len(result)
        print(f"{name:<22}{med(seconds):>9.3f} s  {results[name]}")
    ratios = {
        "grid_over_tamis_fixed_ad": round(
            results["reference_grid"]["median_s"] / results["tamis_fit_fixed_ad"]["median_s"], 1
        )
    }
    met = {
        "fit_10x5_under_5s": results["tamis_fit_a"]["median_s"] < 5
        and results["tamis_fit_fixed_ad"]["median_s"] < 5,
        "plan_10x100_under_1s": results["tamis_plan"]["median_s"] < 1,
    }
    print(f"ratios: {ratios}; met: {met}")
    write_results(
        "scaling_laws",
        {
            "params": {
                "buckets": 10,
                "points": 5,
                "budgets": 100,
                "repeats": args.repeats,
                "seed": args.seed,
                "pool_size": S,
                "a": A,
                "d": D,
                "noise": 0.002,
            },  # fmt: skip
            "results": results,
            "ratios": ratios,
            "targets": {"fit_max_s": 5, "plan_max_s": 1},
            "met": met,
        },
        args.out,
    )
    print(f"wrote {args.out}; machine {machine()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
