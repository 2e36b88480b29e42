"""STAT-Sel at pool scale: skill table, Missing-Skill-Profile, weights and 1,000,000 draws.

Run it from the repository root:

    python bench/stat.py                                   # 5,000,000 examples, 200 skills
    python bench/stat.py --n 200000 --repeats 1            # quick check

Data (generated once, untimed, cached under the temp dir in a folder named by the sizes and
the seed, reused when its ``meta.json`` matches):

- ``pool.parquet``: ``--n`` (default 5,000,000) examples, ids ``ex{i}``, each with 1 to
  ``--max-skills`` (default 5, uniform) distinct skills out of ``--skills`` (default 200)
  names ``skill-{j:03d}``, drawn by weight without replacement (Gumbel top-k) from a
  Zipf-like popularity p_j ~ 1 / (j + 1)^1.3, so the last skills are rare.
- ``evaluation.jsonl``: ``--questions`` (default 10,000) questions, ``--difficult``
  (default 2,000) of them difficult. Half carry per-step ``rewards`` (difficult ones trip
  exactly one of the rules: last <= 0.85, mean <= 0.85 with the last above, an earlier
  step <= 0.7, some on the boundary; easy ones stay above, some with an earlier step in
  (0.7, 0.85]), the other half a ``correct`` bool. Difficult questions list 1-4 distinct
  missing skills (uniform over all skills, so rare ones are asked for too); easy ones 0-2,
  which must be ignored.

Timed, ``--repeats`` (default 3) times, each run in its own fresh subprocess (so its peak
RSS is its own) with ``--threads`` polars / BLAS threads (default 2): the whole chain
``read_frame`` (pool) -> ``skill_table`` -> ``skill_map`` -> ``read_evaluation`` ->
``missing_skill_counts`` + ``stat_weights`` -> ``stat_sample`` of ``--draws`` (default
1,000,000) with k = ``--k`` (default 3), per step and in total; the medians are reported.
Memory: ``peak_rss_mib`` is the run's peak RSS (VmHWM) at the end of the chain (the frame
still held, as a script holding it would), ``rss_baseline_mib`` its peak after imports.

Checks, in each run after the peak is read: the questions and difficult counts and the
Missing-Skill-Profile equal the generator's; the weights sum to 1 and, for a dozen
examples (some carrying the rarest skill), equal the closed form
sum_s c_s k / |Skill-Map(s)| / (k sum_s c_s) computed with polars on the frame; the draws
are valid positions with positive weight.

Targets: the chain under 30 s and under 4 GiB peak RSS on this machine. Results go to
``bench/results/stat.json`` (see DESIGN.md, "Tests and benchmarks").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchlib import RESULTS_DIR, med, peak_rss_mib, thread_env, timing_result, write_results

BENCH = "stat"
DATA_VERSION = 1
ZIPF_EXPONENT = 1.3
GEN_CHUNK = 200_000  # pool rows per Gumbel top-k block (200 float32 keys each)
TAU1, TAU2 = 0.85, 0.7  # the rule the generator builds to; tamis's own constants are checked
TOTAL_MAX_S = 30.0
PEAK_MAX_MIB = 4096.0
RESULTS = RESULTS_DIR / f"{BENCH}.json"
STEPS = (
    "read_pool",
    "skill_table",
    "skill_map",
    "evaluation",
    "profile_weights",
    "sampling",
)


# ---------------------------------------------------------------------------------------------
# Synthetic data, cached on disk


def skill_names(n_skills: int) -> list[str]:
    return [f"skill-{j:03d}" for j in range(n_skills)]


def popularity(n_skills: int) -> np.ndarray:
    p = 1.0 / np.arange(1, n_skills + 1, dtype=np.float64) ** ZIPF_EXPONENT
    return p / p.sum()


def pool_codes(n: int, n_skills: int, max_skills: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (offsets, codes) of 1..max_skills distinct skills per example, drawn by weight."""
    rng = np.random.default_rng([seed, 1])
    lengths = rng.integers(1, max_skills + 1, n)
    log_p = np.log(popularity(n_skills)).astype(np.float32)
    parts = []
    for start in range(0, n, GEN_CHUNK):
        rows = min(GEN_CHUNK, n - start)
        # Gumbel top-k: the k largest log p + Gumbel noise are a weighted draw without
        # replacement, in draw order once sorted; in blocks so the keys stay ~160 MB.
        u = rng.random((rows, n_skills), dtype=np.float32)
        with np.errstate(divide="ignore"):
            keys = log_p - np.log(-np.log(u))
        top = np.argpartition(-keys, max_skills - 1, axis=1)[:, :max_skills]
        order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        keep = np.arange(max_skills) < lengths[start : start + rows, None]
        parts.append(top[keep])  # row-major: each row's first `length` draws, rows in order
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, np.concatenate(parts).astype(np.int64)


def write_pool(path: Path, n: int, names: list[str], offsets: np.ndarray, codes: np.ndarray):
    """Parquet with ``id`` (string) and ``skills`` (list<string>)."""
    import polars as pl
    import pyarrow as pa

    values = pa.array(names).take(pa.array(codes))
    skills = pa.LargeListArray.from_arrays(pa.array(offsets), values)
    ids = pl.select(pl.format("ex{}", pl.int_range(n, dtype=pl.Int64)).alias("id"))
    frame = ids.with_columns(pl.Series("skills", skills))
    frame.write_parquet(path)


def easy_rewards(rng: np.random.Generator) -> list[float]:
    """Not difficult: last and mean > 0.85, every earlier step > 0.7."""
    length = int(rng.integers(1, 7))
    if length >= 4 and rng.random() < 0.5:
        # An earlier step in (0.7, 0.85]: fails tau1 but not tau2, and the mean stays high.
        r = rng.uniform(0.95, 1.0, length)
        r[rng.integers(0, length - 1)] = rng.uniform(0.72, 0.85)
        return r.tolist()
    return rng.uniform(0.86, 1.0, length).tolist()


def hard_rewards(rng: np.random.Generator, mode: int) -> list[float]:
    """Difficult by one rule: 0 the last step, 1 an earlier step, 2 the mean alone."""
    if mode == 0:
        r = rng.uniform(0.86, 1.0, int(rng.integers(1, 7)))
        r[-1] = TAU1 if rng.random() < 0.1 else rng.uniform(0.3, TAU1)
    elif mode == 1:
        r = rng.uniform(0.95, 1.0, int(rng.integers(2, 7)))
        r[rng.integers(0, len(r) - 1)] = TAU2 if rng.random() < 0.1 else rng.uniform(0.2, TAU2)
    else:
        # Earlier steps in (0.7, 0.8], last in (0.85, 0.9]: mean <= (2 * 0.8 + 0.9) / 3 < 0.85.
        r = rng.uniform(0.71, 0.8, int(rng.integers(3, 7)))
        r[-1] = rng.uniform(0.86, 0.9)
    return r.tolist()


def write_evaluation(path: Path, args: argparse.Namespace, names: list[str]) -> np.ndarray:
    """The evaluation JSONL; the Missing-Skill-Profile counts it should give."""
    from tamis.selectors.stat_core import is_difficult

    rng = np.random.default_rng([args.seed, 2])
    q = args.questions
    hard = np.zeros(q, dtype=bool)
    hard[rng.choice(q, args.difficult, replace=False)] = True
    by_rewards = np.zeros(q, dtype=bool)
    by_rewards[rng.choice(q, q // 2, replace=False)] = True
    counts = np.zeros(len(names), dtype=np.int64)
    lines = []
    for i in range(q):  # 10,000 rows, untimed: a plain loop is clearest
        row: dict[str, Any] = {"id": f"q{i}"}
        if by_rewards[i]:
            rewards = hard_rewards(rng, i % 3) if hard[i] else easy_rewards(rng)
            assert is_difficult(rewards) == hard[i], (i, rewards)
            row["rewards"] = rewards
        else:
            row["correct"] = not hard[i]
        missing = rng.choice(len(names), int(rng.integers(1, 5) if hard[i] else rng.integers(0, 3)))
        missing = np.unique(missing)
        if hard[i]:
            counts[missing] += 1
        row["missing_skills"] = [names[j] for j in missing]
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return counts


def data_spec(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "version": DATA_VERSION,
        "n": args.n,
        "skills": args.skills,
        "max_skills": args.max_skills,
        "questions": args.questions,
        "difficult": args.difficult,
        "seed": args.seed,
        "zipf_exponent": ZIPF_EXPONENT,
    }


def default_data_dir(args: argparse.Namespace) -> Path:
    name = (
        f"n{args.n}-s{args.skills}-m{args.max_skills}-q{args.questions}"
        f"-d{args.difficult}-seed{args.seed}"
    )
    return Path(tempfile.gettempdir()) / "tamis-bench-stat" / name


def ensure_data(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Write the pool and evaluation unless the cache holds them; the meta facts."""
    meta_path = work / "meta.json"
    spec = data_spec(args)
    if meta_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("spec") == spec and (work / "pool.parquet").exists():
            print(f"data: reusing {work}", flush=True)
            return meta
    work.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # meta.json is written last: it marks a whole cache
    print(f"data: writing {args.n} examples and {args.questions} questions to {work}", flush=True)
    started = time.perf_counter()
    names = skill_names(args.skills)
    offsets, codes = pool_codes(args.n, args.skills, args.max_skills, args.seed)
    # Temporary names first so an interrupted run never leaves a half cache.
    write_pool(work / "pool.parquet.tmp", args.n, names, offsets, codes)
    counts = write_evaluation(work / "evaluation.jsonl.tmp", args, names)
    os.replace(work / "pool.parquet.tmp", work / "pool.parquet")
    os.replace(work / "evaluation.jsonl.tmp", work / "evaluation.jsonl")
    examples_per_skill = np.bincount(codes, minlength=args.skills)
    meta = {
        "spec": spec,
        "generate_s_untimed": round(time.perf_counter() - started, 2),
        "skill_assignments": len(codes),
        "examples_per_skill_min_median_max": [
            int(examples_per_skill.min()),
            int(np.median(examples_per_skill)),
            int(examples_per_skill.max()),
        ],
        "missing_pairs": int(counts.sum()),
        "missing_counts": counts.tolist(),
        "pool_parquet_mib": round((work / "pool.parquet").stat().st_size / 2**20, 1),
    }
    meta_path.write_text(json.dumps(meta) + "\n", encoding="utf-8")
    print(f"data: written in {meta['generate_s_untimed']:.1f}s (untimed)", flush=True)
    return meta


# ---------------------------------------------------------------------------------------------
# One timed run (in its own subprocess: `--run R`)


def closed_form_check(
    frame: Any, weights: np.ndarray, counts_by_name: dict[str, int], k: int, seed: int
) -> dict[str, Any]:
    """Weights of a dozen examples against c_s k / |Skill-Map(s)|, normalised, in polars."""
    import polars as pl

    rows = frame.select(pl.int_range(pl.len()).alias("row"), "skills").explode("skills")
    pairs = rows.drop_nulls("skills").unique(["row", "skills"])
    sizes = pairs.group_by("skills").agg(pl.len().alias("size"))
    c = pl.DataFrame(
        {"skills": list(counts_by_name), "c": list(counts_by_name.values())},
        schema={"skills": pl.String, "c": pl.Int64},
    )
    per_skill = sizes.join(c, on="skills", how="left").with_columns(
        (pl.col("c").fill_null(0) * k / pl.col("size")).alias("value")
    )
    # Each example of Skill-Map(s) gets c_s k / |Skill-Map(s)|: over all examples, c_s k.
    total = k * per_skill.get_column("c").fill_null(0).sum()
    rarest = per_skill.sort("size").get_column("skills")[0]
    rare_rows = pairs.filter(pl.col("skills") == rarest).get_column("row").head(4).to_list()
    rng = np.random.default_rng([seed, 3])
    n = len(frame)
    picked = sorted({0, n - 1, *rng.choice(n, 6, replace=False).tolist(), *rare_rows})
    expected = (
        pl.DataFrame({"row": picked}, schema={"row": pairs.schema["row"]})
        .join(pairs, on="row", how="left")
        .join(per_skill.select("skills", "value"), on="skills", how="left")
        .group_by("row")
        .agg(pl.col("value").fill_null(0).sum())
        .sort("row")
    )
    want = expected.get_column("value").to_numpy() / total
    got = weights[np.asarray(picked)]
    err = np.abs(got - want) / np.maximum(np.abs(want), 1e-300)
    return {
        "examples": picked,
        "rarest_skill": rarest,
        "max_rel_err": float(f"{err.max():.3g}"),
        "ok": bool(np.allclose(got, want, rtol=1e-9, atol=0)),
    }


def run_chain(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Time the chain once, step by step; then check what it produced."""
    import polars as pl

    from tamis.inputs.skills import read_evaluation, read_frame, skill_table
    from tamis.selectors.stat_core import (
        missing_skill_counts,
        skill_map,
        stat_sample,
        stat_weights,
    )

    baseline = peak_rss_mib()
    pool, evaluation = str(work / "pool.parquet"), str(work / "evaluation.jsonl")
    steps: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        steps[step] = now - clock
        clock = now

    frame = read_frame(pool)
    lap("read_pool")
    table = skill_table(frame, pool)
    lap("skill_table")
    smap = skill_map(table.offsets, table.codes, len(table.names))
    lap("skill_map")
    ev = read_evaluation(evaluation, table.names, TAU1, TAU2)
    lap("evaluation")
    counts = missing_skill_counts(ev.missing_codes, len(table.names))
    weights = stat_weights(counts, smap, k=args.k, n_examples=len(table.ids))
    lap("profile_weights")
    draws = stat_sample(ev.missing_codes, smap, k=args.k, target=args.draws, seed=args.seed)
    lap("sampling")
    total = sum(steps.values())
    peak = peak_rss_mib()

    meta = json.loads((work / "meta.json").read_text(encoding="utf-8"))
    want_counts = dict(zip(skill_names(args.skills), meta["missing_counts"], strict=True))
    got_counts = dict(zip(table.names, counts.tolist(), strict=True))
    checks = {
        "questions_ok": ev.questions == args.questions,
        "difficult": ev.difficult,
        "difficult_ok": ev.difficult == args.difficult,
        "skills_in_pool": len(table.names),
        "unknown_skills": ev.unknown_skills,
        "difficult_without_skills": ev.difficult_without_skills,
        "profile_equals_generated": {s: c for s, c in want_counts.items() if c}
        == {s: c for s, c in got_counts.items() if c},
        "weights_sum_minus_1": float(f"{weights.sum() - 1:.3g}"),
        "weights_sum_ok": bool(abs(weights.sum() - 1) <= 1e-9),
        "closed_form": closed_form_check(frame, weights, want_counts, args.k, args.seed),
        "draws": len(draws),
        "draws_distinct": int(len(np.unique(draws))),
        "draws_valid": bool(
            len(draws) == args.draws
            and draws.min() >= 0
            and draws.max() < len(table.ids)
            and (weights[draws] > 0).all()
        ),
    }
    checks["all_ok"] = all(
        (
            checks["questions_ok"],
            checks["difficult_ok"],
            checks["profile_equals_generated"],
            checks["weights_sum_ok"],
            checks["closed_form"]["ok"],
            checks["draws_valid"],
        )
    )
    return {
        "steps_s": {s: round(v, 3) for s, v in steps.items()},
        "total_s": round(total, 3),
        "peak_rss_mib": peak,
        "rss_baseline_mib": baseline,
        "polars_threads": pl.thread_pool_size(),
        "checks": checks,
    }


def spawn_run(run: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--run", str(run)]
    command += ["--data-dir", str(work)]
    for flag in ("n", "skills", "max_skills", "questions", "difficult", "draws", "k", "seed"):
        command += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    env = thread_env(args.threads) | {"POLARS_MAX_THREADS": str(args.threads)}
    before = os.getloadavg()[0]
    # stdout carries the result line; stderr (warnings, a traceback) goes straight through.
    out = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # Other work on the machine slows a 2-core run: note it per run.
    result["loadavg_1min_before_after"] = [round(before, 2), round(os.getloadavg()[0], 2)]
    print(
        f"  run {run + 1}: {result['total_s']:.2f}s, peak RSS {result['peak_rss_mib']:.0f} MiB"
        f" ({result['peak_rss_mib'] - result['rss_baseline_mib']:.0f} above baseline), "
        f"checks {'ok' if result['checks']['all_ok'] else 'FAILED'}",
        flush=True,
    )
    return result


# ---------------------------------------------------------------------------------------------
# Report


def print_table(steps: dict[str, float], total: float, peak: float, base: float) -> None:
    print(f"\n{'step':<18}{'median_s':>10}{'share':>8}")
    for step, s in steps.items():
        print(f"{step:<18}{s:>10.2f}{s / total:>8.0%}")
    print(f"{'total':<18}{total:>10.2f}")
    print(f"peak RSS {peak:.0f} MiB ({peak - base:.0f} above the {base:.0f} MiB baseline)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=5_000_000, help="training examples")
    parser.add_argument("--skills", type=int, default=200, help="distinct skill names")
    parser.add_argument("--max-skills", type=int, default=5, help="most skills per example")
    parser.add_argument("--questions", type=int, default=10_000, help="evaluation questions")
    parser.add_argument("--difficult", type=int, default=2_000, help="difficult questions")
    parser.add_argument("--draws", type=int, default=1_000_000, help="examples to sample")
    parser.add_argument("--k", type=int, default=3, help="draws per (question, skill) pair")
    parser.add_argument("--repeats", type=int, default=3, help="runs, each a fresh process")
    parser.add_argument("--threads", type=int, default=2, help="polars / BLAS threads")
    parser.add_argument("--seed", type=int, default=0, help="data and sampling seed")
    parser.add_argument("--data-dir", type=Path, default=None, help="synthetic data cache")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help=f"JSON report (default {RESULTS})"
    )
    # Internal: one timed run in this process (the parent starts one subprocess per run).
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.max_skills <= args.skills or args.n < 1:
        parser.error("need --n >= 1 and 1 <= --max-skills <= --skills")
    if not 1 <= args.difficult <= args.questions:
        parser.error("need 1 <= --difficult <= --questions")
    if args.repeats < 1 or args.draws < 1 or args.k < 1:
        parser.error("need --repeats, --draws and --k >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.data_dir or default_data_dir(args)
    if args.run is not None:
        print(json.dumps(run_chain(args, work)))
        return 0
    print(
        f"{BENCH}: {args.n} examples, {args.skills} skills (1-{args.max_skills} each), "
        f"{args.questions} questions ({args.difficult} difficult), {args.draws} draws, "
        f"k={args.k}, {args.threads} threads, {args.repeats} runs",
        flush=True,
    )
    meta = ensure_data(args, work)
    load_before = os.getloadavg()
    runs = [spawn_run(r, args, work) for r in range(args.repeats)]
    load_after = os.getloadavg()

    steps = {s: med([r["steps_s"][s] for r in runs]) for s in STEPS}
    totals = [r["total_s"] for r in runs]
    peak = max(r["peak_rss_mib"] for r in runs)  # the worst run: the memory target is a bound
    base = statistics.median(r["rss_baseline_mib"] for r in runs)
    total = med(totals)
    chain = timing_result(args.n, totals, peak, base)
    chain["peak_rss_mib_all"] = [r["peak_rss_mib"] for r in runs]
    chain["steps_median_s"] = steps
    slowest = max(steps, key=steps.__getitem__)
    chain["slowest_step"] = slowest
    checks_ok = all(r["checks"]["all_ok"] for r in runs)
    met = {
        "total_max_s": total <= TOTAL_MAX_S,
        "peak_rss_max_mib": peak <= PEAK_MAX_MIB,
        "checks": checks_ok,
    }
    met["all"] = all(met.values())

    print_table(steps, total, peak, base)
    print(f"checks: {json.dumps(runs[0]['checks'])}")
    print(f"met: {met}")
    payload = {
        "params": {
            "n": args.n,
            "skills": args.skills,
            "max_skills": args.max_skills,
            "questions": args.questions,
            "difficult": args.difficult,
            "draws": args.draws,
            "k": args.k,
            "repeats": args.repeats,
            "threads": args.threads,
            "seed": args.seed,
            "data": {
                "kind": f"1-{args.max_skills} distinct skills per example, Zipf-like "
                f"p_j ~ 1/(j+1)^{ZIPF_EXPONENT} without replacement (Gumbel top-k); "
                "evaluation JSONL, half rewards half correct",
                "dir": str(work),
                **{key: v for key, v in meta.items() if key not in ("spec", "missing_counts")},
            },
            "timing_note": "each run a fresh subprocess timing the whole chain from reading "
            "the files to the draws (page cache warm after the first run); medians per step "
            "and of the totals",
            "rss_note": "peak_rss_mib: the largest VmHWM over the runs at the end of the "
            "chain, the frame still held; rss_baseline_mib: peak after imports",
            "loadavg_before_after": [
                [round(x, 2) for x in load_before],
                [round(x, 2) for x in load_after],
            ],
        },
        "results": {"chain": chain, "runs": runs},
        "targets": {"total_max_s": TOTAL_MAX_S, "peak_rss_max_mib": PEAK_MAX_MIB},
        "met": met,
    }
    print(f"wrote {write_results(BENCH, payload, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
