"""CET hard-negative mining at scale: FAISS top-k mining (exact, then IVF) against estimation.

Run it from the repository root:

    python bench/cet.py             # 100,000 queries x top-100 over 150,000 docs (10M candidates)
    python bench/cet.py --quick     # 10,000 queries x top-100 over 30,000 docs (1M candidates)

Data (seeded by ``--seed``, generated untimed): ``--docs`` corpus vectors and ``--queries``
query vectors, unit-normalised float32 of dim ``--dim`` (384, the default encoder's). Both
are clustered: ``--topics`` random unit topic centres, ``--clusters`` cluster centres around
them (centre = normalise(topic + 0.8 u), u a random unit vector), cluster sizes lognormal
(sigma 1); a document is normalise(centre + noise of norm ~1), a query is drawn near a
cluster picked with the same weights (noise of norm ~0.8). So a query's top 100 is mostly
its cluster and its topic, and an IVF index's lists follow the clusters.

Mining (``tamis.index.mining.mine_top_k``, ``--k`` = 100, batches of ``--batch-size``
queries, device cpu, FAISS's own OpenMP threads):

- exact: ``EmbeddingIndex.build(..., factory="Flat")``, then ``mine_top_k`` of every query;
  the median of ``--mining-repeats`` (default 3) searches.
- IVF: ``factory="IVF{--nlist},Flat"`` (trained on FAISS's default sample of 100,000
  vectors), build time (train + add) once, then ``mine_top_k`` at each ``--nprobe``; the
  median of ``--ivf-repeats`` (default 3). recall@k against the exact top-k (``recall_at_k`` on the
  (queries, k) position arrays).

Labels (from the exact candidates, seeded, untimed): z = the score standardised over all
candidates; latent relevance r ~ Bernoulli(sigmoid(``--rel-slope`` z + ``--rel-bias``));
two weak "pool-building retrievers" rank each query's candidates by z + N(0, ``--weak-noise``)
(their ranks are the ``provenance_ranks``); judged = in either one's top ``--judged-depth``
(10); labelled = relevant and judged. ``judged`` is not given to the selector (None), as in
a qrels-only setup.

Estimation (``make_selector("cet", {"qrels": "unused", "method": ...})``, defaults
otherwise): ``estimate`` with method ``em`` (median of ``--em-repeats``, default 3) and
method ``cet`` (``--cet-repeats``, default 1; 0 skips it); the selector fits its models on
a seeded sample of whole queries (``fit_sample``, its default unless ``--fit-sample``) and
then scores every candidate. For comparison, ``em_full_fit``: method em fitted on every
candidate (``--full-fit-repeats``, default 1; 0 skips it). Then ``kept_negatives`` +
``review_queue`` on the em estimate (median of 3). Quality of ``p_false_negative`` on the
unlabelled candidates against the truth (relevant and unlabelled): expected calibration
error (``cet_core.reliability_error``, 10 bins) and AUC (``cet_core.auc``); the same for
the oracle (0 if judged, else the true sigmoid) under ``labels`` as the best reachable.

Target (the issue): estimation should not dominate mining: em estimation seconds / exact
mining seconds < 1 (``met.estimation_over_mining``). The ratios against IVF mining are
reported too. Peak RSS is this process's (VmHWM), read after each phase. Results go to
``bench/results/cet.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchlib import RESULTS_DIR, blas_info, med, peak_rss_mib, ratio, timed, write_results

BENCH = "cet"
RESULTS = RESULTS_DIR / f"{BENCH}.json"
GEN_CHUNK = 50_000
TOPIC_SPREAD = 0.8  # cluster centre = normalise(topic + TOPIC_SPREAD * unit noise)
DOC_NOISE = 1.0  # document = normalise(cluster centre + noise of about this norm)
QUERY_NOISE = 0.8
PARAM_KEYS = [
    "quick",
    "queries",
    "docs",
    "dim",
    "k",
    "clusters",
    "topics",
    "nlist",
    "nprobe",
    "batch_size",
    "mining_repeats",
    "ivf_repeats",
    "em_repeats",
    "cet_repeats",
    "fit_sample",
    "full_fit_repeats",
    "rel_slope",
    "rel_bias",
    "weak_noise",
    "judged_depth",
    "seed",
]
TARGET = 1.0  # estimation seconds / exact mining seconds must stay below this

DEFAULTS = {"queries": 100_000, "docs": 150_000, "clusters": 2000, "topics": 200, "nlist": 1024}
QUICK = {"queries": 10_000, "docs": 30_000, "clusters": 400, "topics": 40, "nlist": 256}


# ---------------------------------------------------------------------------------------------
# Synthetic data


def normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def around(
    rng: np.random.Generator, centres: np.ndarray, which: np.ndarray, noise: float
) -> np.ndarray:
    """normalise(centres[which] + noise * g / sqrt(dim)), g standard normal, in chunks."""
    dim = centres.shape[1]
    out = np.empty((len(which), dim), dtype=np.float32)
    for start in range(0, len(which), GEN_CHUNK):
        rows = which[start : start + GEN_CHUNK]
        g = rng.standard_normal((len(rows), dim), dtype=np.float32)
        out[start : start + len(rows)] = normalise(centres[rows] + g * (noise / np.sqrt(dim)))
    return out


def make_vectors(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(docs, queries), clustered as the module docstring says; facts about them."""
    rng = np.random.default_rng([args.seed, 0])
    dim = args.dim
    topics = normalise(rng.standard_normal((args.topics, dim)).astype(np.float32))
    topic_of = rng.integers(0, args.topics, args.clusters)
    spread = normalise(rng.standard_normal((args.clusters, dim)).astype(np.float32))
    centres = normalise(topics[topic_of] + TOPIC_SPREAD * spread)
    weight = rng.lognormal(0.0, 1.0, args.clusters)
    weight /= weight.sum()
    doc_cluster = rng.choice(args.clusters, args.docs, p=weight)
    query_cluster = rng.choice(args.clusters, args.queries, p=weight)
    docs = around(rng, centres, doc_cluster, DOC_NOISE)
    queries = around(rng, centres, query_cluster, QUERY_NOISE)
    sizes = np.bincount(doc_cluster, minlength=args.clusters)
    facts = {
        "cluster_size_median": int(np.median(sizes)),
        "cluster_size_max": int(sizes.max()),
        "empty_clusters": int((sizes == 0).sum()),
    }
    return docs, queries, facts


# ---------------------------------------------------------------------------------------------
# Mining


def positions_matrix(mined: Any, n_queries: int, k: int) -> np.ndarray:
    """Flat mined rows -> (queries, k) corpus positions, -1 where nothing was found."""
    out = np.full((n_queries, k), -1, dtype=np.int64)
    out[mined.query, mined.rank.astype(np.int64) - 1] = mined.doc
    return out


def mine(index: Any, queries: np.ndarray, args: argparse.Namespace, repeats: int):
    """Seconds of `repeats` mine_top_k runs and the last run's candidates."""
    from tamis.index.mining import mine_top_k

    seconds, mined = [], None
    for _ in range(repeats):
        s, mined = timed(lambda: mine_top_k(index, queries, args.k, batch_size=args.batch_size))
        seconds.append(s)
    return seconds, mined


def run_mining(
    args: argparse.Namespace, docs: np.ndarray, queries: np.ndarray
) -> tuple[dict[str, Any], Any]:
    """Exact then IVF mining; results and the exact candidates."""
    from tamis.index.faiss_index import EmbeddingIndex, recall_at_k

    out: dict[str, Any] = {}
    build_s, flat = timed(
        lambda: EmbeddingIndex.build([docs], args.dim, factory="Flat", device="cpu")
    )
    seconds, exact = mine(flat, queries, args, args.mining_repeats)
    del flat
    out["exact"] = {
        "factory": "Flat",
        "build_s": round(build_s, 3),
        "median_s": med(seconds),
        "all_s": [round(s, 3) for s in seconds],
        "candidates": len(exact),
        "queries_per_s": round(len(queries) / statistics.median(seconds), 1),
    }
    print(
        f"  exact Flat: build {build_s:.2f}s, mining {med(seconds):.2f}s "
        f"({len(exact):,} candidates)",
        flush=True,
    )
    exact_positions = positions_matrix(exact, len(queries), args.k)

    factory = f"IVF{args.nlist},Flat"
    build_s, ivf = timed(
        lambda: EmbeddingIndex.build([docs], args.dim, factory=factory, device="cpu", seed=0)
    )
    out["ivf"] = {"factory": factory, "build_s": round(build_s, 3), "nprobe": {}}
    print(f"  {factory}: build (train + add) {build_s:.2f}s", flush=True)
    for nprobe in args.nprobe:
        ivf.set_search_params(nprobe=nprobe)
        seconds, approx = mine(ivf, queries, args, args.ivf_repeats)
        recall = recall_at_k(
            positions_matrix(approx, len(queries), args.k), exact_positions, args.k
        )
        search_s = statistics.median(seconds)
        out["ivf"]["nprobe"][str(nprobe)] = {
            "median_s": med(seconds),
            "all_s": [round(s, 3) for s in seconds],
            "build_plus_search_s": round(build_s + search_s, 3),
            f"recall_at_{args.k}": round(recall, 4),
            "candidates": len(approx),
            "queries_per_s": round(len(queries) / search_s, 1),
        }
        print(
            f"  {factory} nprobe {nprobe}: mining {search_s:.2f}s, recall@{args.k} {recall:.4f}",
            flush=True,
        )
    return out, exact


# ---------------------------------------------------------------------------------------------
# Labels and estimation


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def within_query_ranks(query: np.ndarray, values: np.ndarray) -> np.ndarray:
    """1-based rank of each row among its query's rows by `values`, highest first."""
    order = np.lexsort((-values, query))
    sorted_query = query[order]
    first = np.r_[0, np.flatnonzero(np.diff(sorted_query)) + 1]
    start = np.repeat(first, np.diff(np.r_[first, len(order)]))
    ranks = np.empty(len(query), dtype=np.int32)
    ranks[order] = np.arange(len(order)) - start + 1
    return ranks


def make_candidates(mined: Any, args: argparse.Namespace) -> tuple[Any, np.ndarray, dict]:
    """CandidateArrays with synthetic labels and provenance; the latent relevance; facts."""
    from tamis.selectors.cet import CandidateArrays
    from tamis.selectors.cet_core import auc, reliability_error

    rng = np.random.default_rng([args.seed, 1])
    score = mined.score.astype(np.float64)
    z = (score - score.mean()) / score.std()
    relevant = rng.random(len(z)) < sigmoid(args.rel_slope * z + args.rel_bias)
    provenance = np.stack(
        [
            within_query_ranks(mined.query, z + rng.normal(0.0, args.weak_noise, len(z)))
            for _ in range(2)
        ],
        axis=1,
    )
    judged = (provenance <= args.judged_depth).any(axis=1)
    labelled = relevant & judged
    # What a model knowing the truth would say: unlabelled and judged is not relevant,
    # unlabelled and not judged is relevant with the true probability.
    oracle = np.where(judged, 0.0, sigmoid(args.rel_slope * z + args.rel_bias))
    candidates = CandidateArrays(
        query=mined.query,
        rank=mined.rank,
        score=mined.score,
        labelled=labelled,
        judged=None,
        provenance_ranks=provenance,
    )
    unlabelled = ~labelled
    facts = {
        "candidates": len(z),
        "relevant_rate": round(float(relevant.mean()), 4),
        "judged_rate": round(float(judged.mean()), 4),
        "labelled": int(labelled.sum()),
        "queries_with_a_label": int(len(np.unique(mined.query[labelled]))),
        "false_negatives": int((relevant & unlabelled).sum()),
        "false_negative_share_of_unlabelled": round(float(relevant[unlabelled].mean()), 4),
        "oracle_ece": round(reliability_error(oracle[unlabelled], relevant[unlabelled]), 4),
        "oracle_auc": round(auc(oracle[unlabelled], relevant[unlabelled]), 4),
    }
    return candidates, relevant, facts


def quality(estimate: Any, candidates: Any, relevant: np.ndarray) -> dict[str, Any]:
    from tamis.selectors.cet_core import auc, reliability_error

    unlabelled = ~candidates.labelled
    p_fn = estimate.p_false_negative[unlabelled]
    truth = relevant[unlabelled]
    return {
        "ece": round(reliability_error(p_fn, truth), 4),
        "auc": round(auc(p_fn, truth), 4),
        "expected_false_negatives": round(float(p_fn.sum()), 1),
        "true_false_negatives": int(truth.sum()),
        "excluded": int(estimate.exclude.sum()),
        "em_iterations": estimate.info["em_iterations"],
        "em_converged": estimate.info.get("em_converged"),
        "fit_candidates": estimate.info.get("fit_candidates"),
    }


def run_estimation(
    args: argparse.Namespace, candidates: Any, relevant: np.ndarray
) -> dict[str, Any]:
    from tamis.selectors import make_selector

    out: dict[str, Any] = {}
    runs = [("em", "em", args.em_repeats, None), ("cet", "cet", args.cet_repeats, None)]
    if args.full_fit_repeats:
        # The models fitted on every candidate, not the selector's query sample.
        runs.append(("em_full_fit", "em", args.full_fit_repeats, len(candidates)))
    em_selector, em_estimate = None, None
    for name, method, repeats, fit_sample in runs:
        if repeats < 1:
            continue
        params: dict[str, Any] = {"qrels": "unused", "method": method}
        fit_sample = fit_sample or args.fit_sample
        if fit_sample is not None:
            params["fit_sample"] = fit_sample
        selector = make_selector("cet", params)
        seconds, estimate = [], None
        for _ in range(repeats):
            s, estimate = timed(lambda sel=selector: sel.estimate(candidates, seed=args.seed))
            seconds.append(s)
            print(f"  estimate {name}: {s:.2f}s", flush=True)
        assert estimate is not None
        out[name] = {
            "median_s": med(seconds),
            "all_s": [round(s, 3) for s in seconds],
            "candidates_per_s": round(len(candidates) / statistics.median(seconds), 1),
            **quality(estimate, candidates, relevant),
        }
        r = out[name]
        print(
            f"  {name}: median {r['median_s']:.2f}s, ECE {r['ece']:.4f}, AUC {r['auc']:.4f}, "
            f"{r['em_iterations']} EM iterations, fit on {r['fit_candidates']:,} candidates",
            flush=True,
        )
        if name == "em":
            em_selector, em_estimate = selector, estimate
        del estimate
    if em_selector is not None:
        seconds = []
        for _ in range(3):
            started = time.perf_counter()
            kept = em_selector.kept_negatives(candidates, em_estimate)
            queue = em_selector.review_queue(candidates, em_estimate)
            seconds.append(time.perf_counter() - started)
        out["outputs"] = {
            "median_s": med(seconds),
            "all_s": [round(s, 3) for s in seconds],
            "kept_negatives": len(kept),
            "review_queue": len(queue),
        }
        print(f"  kept_negatives + review_queue: {med(seconds):.2f}s", flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# Report


def print_table(mining: dict[str, Any], estimation: dict[str, Any], k: int) -> None:
    print(f"\n{'step':<34}{'seconds':>10}{'recall@' + str(k):>12}{'ECE':>8}{'AUC':>8}")
    exact = mining["exact"]
    print(f"{'mine exact (Flat)':<34}{exact['median_s']:>10.2f}{1.0:>12.4f}")
    ivf = mining["ivf"]
    print(f"{ivf['factory'] + ' build':<34}{ivf['build_s']:>10.2f}")
    for nprobe, r in ivf["nprobe"].items():
        recall = r[f"recall_at_{k}"]
        print(f"{'mine IVF nprobe ' + nprobe:<34}{r['median_s']:>10.2f}{recall:>12.4f}")
    for method in ("em", "cet", "em_full_fit"):
        if method in estimation:
            r = estimation[method]
            name = f"estimate {method}"
            print(f"{name:<34}{r['median_s']:>10.2f}{'':>12}{r['ece']:>8.4f}{r['auc']:>8.4f}")
    if "outputs" in estimation:
        print(f"{'kept_negatives + review_queue':<34}{estimation['outputs']['median_s']:>10.2f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run: " + str(QUICK))
    parser.add_argument("--queries", type=int, help=f"queries (default {DEFAULTS['queries']})")
    parser.add_argument("--docs", type=int, help=f"corpus size (default {DEFAULTS['docs']})")
    parser.add_argument("--clusters", type=int, help=f"clusters ({DEFAULTS['clusters']})")
    parser.add_argument("--topics", type=int, help=f"topics ({DEFAULTS['topics']})")
    parser.add_argument("--nlist", type=int, help=f"IVF lists ({DEFAULTS['nlist']})")
    parser.add_argument("--dim", type=int, default=384, help="vector dimension")
    parser.add_argument("--k", type=int, default=100, help="candidates per query")
    parser.add_argument(
        "--nprobe", default="2,8,32", help="comma-separated IVF nprobe values (default 2,8,32)"
    )
    parser.add_argument("--batch-size", type=int, default=4096, help="queries per FAISS call")
    parser.add_argument("--mining-repeats", type=int, default=3, help="exact mining runs")
    parser.add_argument("--ivf-repeats", type=int, default=3, help="IVF mining runs per nprobe")
    parser.add_argument("--em-repeats", type=int, default=3, help="estimate(method=em) runs")
    parser.add_argument("--cet-repeats", type=int, default=1, help="estimate(method=cet) runs")
    parser.add_argument(
        "--fit-sample", type=int, help="the selector's fit_sample (default: its own default)"
    )
    parser.add_argument(
        "--full-fit-repeats",
        type=int,
        default=1,
        help="runs of method em fitted on every candidate (fit_sample = all; 0 skips)",
    )
    parser.add_argument("--rel-slope", type=float, default=3.0, help="relevance logit slope")
    parser.add_argument("--rel-bias", type=float, default=-3.0, help="relevance logit bias")
    parser.add_argument("--weak-noise", type=float, default=1.0, help="weak retrievers' noise")
    parser.add_argument("--judged-depth", type=int, default=10, help="weak ranks judged")
    parser.add_argument("--seed", type=int, default=0, help="data and label seed")
    parser.add_argument("--verbose", action="store_true", help="INFO logs (mining progress)")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help=f"JSON report (default {RESULTS})"
    )
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.nprobe = [int(p) for p in args.nprobe.split(",") if p]
    if args.k < 1 or args.docs < args.k or args.queries < 1 or args.mining_repeats < 1:
        parser.error("need --k >= 1, --docs >= --k, --queries >= 1, --mining-repeats >= 1")
    if args.ivf_repeats < 1 or not args.nprobe or min(args.nprobe) < 1:
        parser.error("need --ivf-repeats >= 1 and positive --nprobe values")
    return args


def source_facts() -> dict[str, Any]:
    """Which code was measured: git HEAD, whether src/ differs from it, hashes of the CET
    modules as imported (other work may edit them between runs)."""
    import tamis.selectors.cet
    import tamis.selectors.cet_core

    root = Path(__file__).resolve().parent.parent

    def git(*command: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *command], cwd=root, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    status = git("status", "--porcelain", "--", "src")
    return {
        "git_head": git("rev-parse", "HEAD"),
        "src_modified": None if status is None else bool(status),
        **{
            f"{Path(m.__file__).stem}_sha256": hashlib.sha256(
                Path(m.__file__).read_bytes()
            ).hexdigest()[:16]
            for m in (tamis.selectors.cet, tamis.selectors.cet_core)
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    import faiss

    import tamis.selectors.cet  # noqa: F401  (imports before the baseline RSS)

    source = source_facts()  # now: the modules just imported are what runs
    started = time.perf_counter()
    baseline = peak_rss_mib()
    load_before = os.getloadavg()
    print(
        f"{BENCH}: {args.queries:,} queries x top-{args.k} over {args.docs:,} docs "
        f"(dim {args.dim}, {args.clusters} clusters in {args.topics} topics), "
        f"FAISS threads {faiss.omp_get_max_threads()}",
        flush=True,
    )
    generate_s, (docs, queries, data_facts) = timed(lambda: make_vectors(args))
    print(f"data: generated in {generate_s:.1f}s (untimed)", flush=True)
    rss = {"baseline": baseline, "after_data": peak_rss_mib()}

    mining, exact = run_mining(args, docs, queries)
    rss["after_mining"] = peak_rss_mib()
    del docs, queries

    label_started = time.perf_counter()
    candidates, relevant, label_facts = make_candidates(exact, args)
    label_s = time.perf_counter() - label_started
    del exact
    print(
        f"labels: {label_facts['labelled']:,} labelled, false-negative share of unlabelled "
        f"{label_facts['false_negative_share_of_unlabelled']:.3f}, oracle ECE "
        f"{label_facts['oracle_ece']:.4f} AUC {label_facts['oracle_auc']:.4f} "
        f"({label_s:.1f}s, untimed)",
        flush=True,
    )
    estimation = run_estimation(args, candidates, relevant)
    rss["after_estimation"] = peak_rss_mib()
    load_after = os.getloadavg()
    total_s = time.perf_counter() - started

    exact_s = mining["exact"]["median_s"]
    ivf = mining["ivf"]
    em_s = estimation.get("em", {}).get("median_s")
    cet_s = estimation.get("cet", {}).get("median_s")
    ratios: dict[str, Any] = {
        "em_estimation_over_exact_mining": ratio(em_s, exact_s, 3),
        "cet_estimation_over_exact_mining": ratio(cet_s, exact_s, 3),
    }
    for nprobe, r in ivf["nprobe"].items():
        ratios[f"em_estimation_over_ivf_nprobe{nprobe}_search"] = ratio(em_s, r["median_s"], 3)
        ratios[f"em_estimation_over_ivf_nprobe{nprobe}_build_plus_search"] = ratio(
            em_s, r["build_plus_search_s"], 3
        )
    met = {
        "estimation_over_mining": em_s is not None and em_s / exact_s < TARGET,
    }
    print_table(mining, estimation, args.k)
    print(f"\nratios: {ratios}\nmet: {met}")
    print(f"peak RSS {rss['after_estimation']:.0f} MiB; total {total_s:.0f}s", flush=True)

    params = {key: getattr(args, key) for key in PARAM_KEYS}
    params |= {
        "candidates": args.queries * args.k,
        "topic_spread": TOPIC_SPREAD,
        "doc_noise": DOC_NOISE,
        "query_noise": QUERY_NOISE,
        "device": "cpu",
        "faiss_version": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
        "threads": blas_info(),
        "source": source,
    }
    path = write_results(
        BENCH,
        {
            "params": params,
            "results": {
                "data": {"generate_s_untimed": round(generate_s, 2), **data_facts},
                "mining": mining,
                "labels": {"generate_s_untimed": round(label_s, 2), **label_facts},
                "estimation": estimation,
                "peak_rss_mib": rss,
                "total_s": round(total_s, 1),
                "loadavg_before_after": [
                    [round(x, 2) for x in load_before],
                    [round(x, 2) for x in load_after],
                ],
            },
            "ratios": ratios,
            "targets": {"estimation_over_mining": f"< {TARGET:g}"},
            "met": met,
        },
        args.out,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
