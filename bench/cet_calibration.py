"""CET calibration across worlds: is ``p_false_negative`` calibrated whatever the world?

Run it from the repository root:

    python bench/cet_calibration.py              # 10 worlds (+1 for information) x 3 methods
    python bench/cet_calibration.py --quick      # 500 queries per world (a smoke run)

Each world (seeded by ``--seed`` and its index; the truth is known) is built as follows.

- Topics: ``super_topics`` random unit directions (dim ``--dim``); each query's latent topic
  is ``normalise(super + 0.8 u)`` around a random one of them (u: Gaussian of norm ~1), so
  queries of one super-topic compete for the same region.
- Corpus: for each query, ``rel_per_query`` documents (uniform in ``[lo, hi]``) planted
  around its topic with a random strength: ``normalise(s topic + u)``, s uniform in
  ``strength``. Plus ``background`` documents per query around the super-topics
  (``normalise(super + u)``): near-topic documents that are relevant to nobody. A document
  is relevant to a query iff it was planted for it (the ground truth).
- Queries: the strong (mining) retriever sees ``normalise(topic + query_noise u)``.
- Two pool-building retrievers, noisier: retriever j sees the query as
  ``normalise(topic + weak_noise u_j)`` and every document as ``normalise(d + doc_noise
  u_jd)`` (its own embedding); each ranks the whole corpus; its top ``--provenance-depth``
  (100) are its provenance list.
- Judging (the propensity's shape), per pool retriever rank r:
  ``cutoff``: ranks <= ``depth`` of either retriever are judged (the selector gets
  ``judged_depth``); ``decay``: judged with probability exp(-(r - 1) / depth);
  ``soft``: judged with probability 1 / (1 + (r / depth)^3); ``unequal``: retriever 0 to
  ``depth``, retriever 1 to ``depth / 3``, both cutoffs. For the random shapes the selector
  gets the judged pairs (``judged``). qrels: the judged relevant pairs.
  ``no_judged_info`` (reported, not a target): the base world with qrels and provenance
  alone, nothing saying which pairs were judged.
- Mining: the real ``tamis.index.mining.mine_top_k`` over a Flat FAISS index of the corpus,
  top ``--k`` (100) per query.

Estimation: the same code ``tamis select`` runs after mining: ``label_candidates`` (qrels,
judged pairs, provenance, judged_depth as Arrow tables, as ``load_retrieval`` gives them)
then ``CetSelector.estimate`` (``validate()`` first), parameters at their defaults but for:

- ``em``: method em (auto relevance features: score, log_rank and, with the judged pool
  known, pool_rank_summary: the best and worst log rank over the pool retrievers and how
  many did not rank the candidate);
- ``em_score_rank``: method em with ``relevance_features: [score, log_rank]``, the features
  em used by default before pool_rank_summary;
- ``em_pool_ranks``: method em with ``[score, log_rank, pool_ranks]`` (per pool retriever
  its log rank and a did-not-rank indicator);
- ``cet``: method cet (auto: score, log_rank).

Scores, over the mined candidates that are unlabelled and were not judged (the ones whose
relevance the labels say nothing about): expected calibration error of ``p_false_negative``
(``cet_core.reliability_error``, 10 equal-width bins) against "truly relevant", and AUC
(``cet_core.auc``). For scale, ``oracle_ece``: the ECE on odd queries of P(relevant |
unjudged, mining-score bin) taken from the truth of even queries (20 quantile bins): about
the noise floor of a score-only estimate. Target: the default (``em``) ECE <= 0.02 in every
target world. Results: ``bench/results/cet_calibration.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchlib import RESULTS_DIR, blas_info, write_results

BENCH = "cet_calibration"
RESULTS = RESULTS_DIR / f"{BENCH}.json"
TARGET_ECE = 0.02
# Name -> selector parameters over the world's own (qrels, provenance, judged pool).
METHODS = {
    "em": {"method": "em"},
    "em_score_rank": {"method": "em", "relevance_features": ["score", "log_rank"]},
    "em_pool_ranks": {"method": "em", "relevance_features": ["score", "log_rank", "pool_ranks"]},
    "cet": {"method": "cet"},
}


@dataclass(frozen=True)
class World:
    name: str
    queries: int = 2000
    rel_per_query: tuple[int, int] = (3, 12)
    strength: tuple[float, float] = (0.6, 2.5)
    background: int = 8  # near-topic documents relevant to nobody, per query
    super_topics: int = 100
    query_noise: float = 0.6
    weak_noise: float = 1.0  # query noise of the two pool-building retrievers
    doc_noise: float = 0.6  # their document-side noise
    depth: int = 10
    shape: str = "cutoff"
    judged_known: bool = True  # the selector is told which pairs were judged
    target: bool = True  # counts for the target (else reported for information)


WORLDS = (
    World("base"),
    World("noisy_pool", weak_noise=1.6, doc_noise=1.0),
    World("sharp_pool", weak_noise=0.5, doc_noise=0.3),
    World("deep_judging", depth=30),
    World("shallow_judging", depth=3),
    World("few_relevant", rel_per_query=(1, 3)),
    World("many_relevant", rel_per_query=(15, 40)),
    World("decay_propensity", shape="decay"),
    World("soft_propensity", shape="soft", depth=15),
    World("unequal_pools", shape="unequal", depth=15, query_noise=0.9),
    World("no_judged_info", judged_known=False, target=False),
)


# ---------------------------------------------------------------------------------------------
# The world


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def gaussian(rng: np.random.Generator, n: int, dim: int, scale: float = 1.0) -> np.ndarray:
    """Gaussian rows of norm about `scale`."""
    return rng.standard_normal((n, dim), dtype=np.float32) * np.float32(scale / np.sqrt(dim))


@dataclass
class WorldData:
    query_ids: list[str]
    doc_ids: list[str]
    owner: np.ndarray  # per document: the query it was planted for (-1: nobody's)
    query_vectors: np.ndarray
    doc_vectors: np.ndarray
    pool_ranks: list[np.ndarray]  # per pool retriever: (Q, provenance_depth) doc positions
    judged: list[np.ndarray]  # per pool retriever: (Q, provenance_depth) bool


def top_positions(index: Any, queries: np.ndarray, depth: int) -> np.ndarray:
    _, positions = index.search(queries, depth)
    return positions


def make_world(world: World, dim: int, provenance_depth: int, seed: int) -> WorldData:
    from tamis.index.faiss_index import EmbeddingIndex

    rng = np.random.default_rng([seed, sum(map(ord, world.name))])
    q = world.queries
    supers = normalise(rng.standard_normal((world.super_topics, dim)))
    super_of = rng.integers(0, world.super_topics, q)
    topic = normalise(supers[super_of] + gaussian(rng, q, dim, 0.8))
    lo, hi = world.rel_per_query
    n_rel = rng.integers(lo, hi + 1, q)
    owner = np.repeat(np.arange(q), n_rel)
    strength = rng.uniform(*world.strength, len(owner)).astype(np.float32)
    relevant_docs = normalise(strength[:, None] * topic[owner] + gaussian(rng, len(owner), dim))
    n_background = world.background * q
    background = normalise(
        supers[rng.integers(0, world.super_topics, n_background)] + gaussian(rng, n_background, dim)
    )
    docs = np.concatenate([relevant_docs, background])
    owner = np.r_[owner, np.full(n_background, -1)]
    shuffle = rng.permutation(len(docs))
    docs, owner = docs[shuffle], owner[shuffle]
    queries = normalise(topic + gaussian(rng, q, dim, world.query_noise))

    pool_ranks, judged = [], []
    ranks = np.arange(1, provenance_depth + 1)
    for j in range(2):
        view = normalise(topic + gaussian(rng, q, dim, world.weak_noise))
        doc_view = normalise(docs + gaussian(rng, len(docs), dim, world.doc_noise))
        index = EmbeddingIndex.build([doc_view], dim, factory="Flat", device="cpu")
        pool_ranks.append(top_positions(index, view, provenance_depth))
        if world.shape == "cutoff":
            probability = (ranks <= world.depth).astype(float)
        elif world.shape == "unequal":
            probability = (ranks <= (world.depth if j == 0 else max(world.depth // 3, 1))) * 1.0
        elif world.shape == "decay":
            probability = np.exp(-(ranks - 1) / world.depth)
        elif world.shape == "soft":
            probability = 1 / (1 + (ranks / world.depth) ** 3)
        else:
            raise ValueError(f"unknown propensity shape {world.shape!r}")
        judged.append(rng.random((q, provenance_depth)) < probability)
    return WorldData(
        query_ids=[f"q{i}" for i in range(q)],
        doc_ids=[f"d{i}" for i in range(len(docs))],
        owner=owner,
        query_vectors=queries,
        doc_vectors=docs,
        pool_ranks=pool_ranks,
        judged=judged,
    )


def retrieval_tables(data: WorldData, world: World) -> dict[str, dict]:
    """qrels (judged relevant pairs), judged pairs and provenance as `load_retrieval` reads
    them (Arrow id columns, float64 numbers)."""
    import pyarrow as pa

    queries = np.arange(len(data.query_ids))
    q_all, d_all, retriever, rank, judged = [], [], [], [], []
    for j, (positions, judged_j) in enumerate(zip(data.pool_ranks, data.judged, strict=True)):
        depth = positions.shape[1]
        q_all.append(np.repeat(queries, depth))
        d_all.append(positions.reshape(-1))
        retriever.append(np.full(positions.size, j))
        rank.append(np.tile(np.arange(1, depth + 1), len(queries)))
        judged.append(judged_j.reshape(-1))
    q_all, d_all, judged = np.concatenate(q_all), np.concatenate(d_all), np.concatenate(judged)
    retriever, rank = np.concatenate(retriever), np.concatenate(rank)
    query_ids = pa.array(data.query_ids, pa.string())
    doc_ids = pa.array(data.doc_ids, pa.string())

    def ids(qs: np.ndarray, ds: np.ndarray) -> dict[str, pa.Array]:
        return {"query_id": query_ids.take(pa.array(qs)), "doc_id": doc_ids.take(pa.array(ds))}

    relevant = data.owner[d_all] == q_all
    # A pair judged by both retrievers is one qrels row.
    key = np.unique(q_all[judged & relevant] * len(data.doc_ids) + d_all[judged & relevant])
    qrels = ids(key // len(data.doc_ids), key % len(data.doc_ids))
    names = pa.array(["pool_a", "pool_b"], pa.string())
    provenance = {
        **ids(q_all, d_all),
        "retriever": names.take(pa.array(retriever)),
        "rank": rank.astype(np.float64),
    }
    judged_key = np.unique(q_all[judged] * len(data.doc_ids) + d_all[judged])
    out = {"qrels": qrels, "provenance": provenance}
    if world.shape != "cutoff":  # random, or two depths: judged_depth cannot say it
        out["judged"] = ids(judged_key // len(data.doc_ids), judged_key % len(data.doc_ids))
    return out


def selector_params(world: World, method: str) -> dict[str, Any]:
    params: dict[str, Any] = {"qrels": "qrels", "provenance": "provenance", **METHODS[method]}
    if not world.judged_known:
        return params
    if world.shape == "cutoff":
        params["judged_depth"] = world.depth
    else:
        params["judged"] = "judged"
    return params


@dataclass
class Prepared:
    """A world's mined candidates, labelled as `tamis select` labels them, and its truth."""

    world: World
    mined: Any
    tables: dict[str, dict]
    relevant: np.ndarray  # per mined candidate
    judged: np.ndarray  # per mined candidate: judged by the pool (the truth)
    facts: dict[str, Any]
    data: WorldData


def prepare(world: World, dim: int = 64, k: int = 100, provenance_depth: int = 100,
            seed: int = 0) -> Prepared:  # fmt: skip
    from tamis.index.faiss_index import EmbeddingIndex
    from tamis.index.mining import mine_top_k

    data = make_world(world, dim, provenance_depth, seed)
    index = EmbeddingIndex.build([data.doc_vectors], dim, factory="Flat", device="cpu")
    mined = mine_top_k(index, data.query_vectors, k)
    relevant = data.owner[mined.doc] == mined.query
    tables = retrieval_tables(data, world)
    judged_pairs = set()
    for positions, judged_j in zip(data.pool_ranks, data.judged, strict=True):
        rows, cols = np.nonzero(judged_j)
        judged_pairs.update((rows * len(data.doc_ids) + positions[rows, cols]).tolist())
    keys = mined.query * len(data.doc_ids) + mined.doc
    judged = np.isin(keys, np.fromiter(judged_pairs, np.int64))
    n_relevant = np.bincount(data.owner[data.owner >= 0], minlength=world.queries)
    unjudged = ~judged
    facts = {
        "corpus": len(data.doc_ids),
        "candidates": len(mined),
        "relevant_per_query_mean": round(float(n_relevant.mean()), 2),
        "relevant_mined_share": round(float(relevant.sum() / n_relevant.sum()), 4),
        "judged_candidates": int(judged.sum()),
        "labelled_candidates": int((relevant & judged).sum()),
        "qrels": len(tables["qrels"]["query_id"]),
        "unjudged_candidates": int(unjudged.sum()),
        "false_negative_rate_unjudged": round(float(relevant[unjudged].mean()), 4),
    }
    return Prepared(world, mined, tables, relevant, judged, facts, data)


def estimate(prepared: Prepared, method: str, seed: int = 0, **overrides: Any):
    """(selector, candidates, estimate): labelled and estimated by the selector's own code."""
    import pyarrow as pa

    from tamis.selectors import make_selector
    from tamis.selectors.cet_candidates import label_candidates

    selector = make_selector("cet", {**selector_params(prepared.world, method), **overrides})
    selector.validate()
    p = selector.params
    retrieval = _Retrieval(
        qrels=prepared.tables["qrels"],
        judged=prepared.tables.get("judged") if p.judged else None,
        provenance=prepared.tables["provenance"],
    )
    queries = pa.array(prepared.data.query_ids, pa.string())
    corpus = pa.array(prepared.data.doc_ids, pa.string())
    counts: dict[str, Any] = {}
    candidates = label_candidates(p, retrieval, prepared.mined, queries, corpus, counts)
    return selector, candidates, selector.estimate(candidates, seed=seed)


@dataclass
class _Retrieval:
    """The judgement tables of `RetrievalInputs` (all `label_candidates` reads)."""

    qrels: dict
    judged: dict | None
    provenance: dict | None


def scores(prepared: Prepared, candidates: Any, result: Any) -> dict[str, Any]:
    from tamis.selectors.cet_core import auc, reliability_error

    truth_labelled = prepared.relevant & prepared.judged
    if not (candidates.labelled == truth_labelled).all():
        raise AssertionError("label_candidates disagrees with the world's labels")
    if candidates.judged is not None and not (candidates.judged == prepared.judged).all():
        raise AssertionError("label_candidates disagrees with the world's judged pool")
    unjudged = ~prepared.judged
    p_fn, truth = result.p_false_negative[unjudged], prepared.relevant[unjudged]
    return {
        "ece": round(reliability_error(p_fn, truth), 4),
        "auc": round(auc(p_fn, truth), 4),
        "expected_false_negatives": round(float(p_fn.sum()), 1),
        "true_false_negatives": int(truth.sum()),
        "expected_over_true": round(float(p_fn.sum() / max(truth.sum(), 1)), 3),
        "relevance_features": result.info["relevance_features"],
        "em_iterations": result.info["em_iterations"],
        "em_converged": result.info["em_converged"],
        "known_negatives_right": bool(
            (result.p_false_negative[prepared.judged & ~truth_labelled] == 0).all()
        ),
    }


def oracle_ece(prepared: Prepared) -> float:
    """ECE on odd queries of P(relevant | unjudged, score bin) taken from the truth of even
    queries (20 quantile bins of the mining score): the noise floor, roughly."""
    from tamis.selectors.cet_core import reliability_error

    unjudged = ~prepared.judged
    even = unjudged & (prepared.mined.query % 2 == 0)
    odd = unjudged & (prepared.mined.query % 2 == 1)
    score = prepared.mined.score
    edges = np.quantile(score[even], np.linspace(0, 1, 21)[1:-1])
    which = np.searchsorted(edges, score)
    rate = np.bincount(which[even], weights=prepared.relevant[even], minlength=20) / np.maximum(
        np.bincount(which[even], minlength=20), 1
    )
    return round(reliability_error(rate[which[odd]], prepared.relevant[odd]), 4)


# ---------------------------------------------------------------------------------------------
# Run


def print_table(rows: list[dict[str, Any]], methods: list[str]) -> None:
    head = "".join(f"{m + ' ECE':>19}{'AUC':>7}" for m in methods)
    print(f"\n{'world':<18}{'FN rate':>8}{'oracle':>8}{head}")
    for row in rows:
        cells = "".join(
            f"{row[m]['ece']:>19.4f}{row[m]['auc']:>7.3f}" if row[m]["ece"] is not None
            else f"{'-':>19}{'-':>7}"
            for m in methods
        )  # fmt: skip
        name = row["world"]["name"] + ("" if row["world"]["target"] else " *")
        facts = row["facts"]
        print(f"{name:<18}{facts['false_negative_rate_unjudged']:>8.3f}"
              f"{facts['oracle_ece']:>8.4f}{cells}")  # fmt: skip
    if not all(row["world"]["target"] for row in rows):
        print("* for information, not a target: nothing tells the selector what was judged")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="500 queries per world")
    parser.add_argument("--queries", type=int, help="queries per world (default 2000)")
    parser.add_argument("--dim", type=int, default=64, help="vector dimension")
    parser.add_argument("--k", type=int, default=100, help="candidates mined per query")
    parser.add_argument("--provenance-depth", type=int, default=100, help="pool list length")
    parser.add_argument("--methods", default=",".join(METHODS), help="methods (see above)")
    parser.add_argument("--worlds", help="comma-separated world names (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="world and estimation seed")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.queries is None:
        args.queries = 500 if args.quick else 2000
    args.methods = [m for m in args.methods.split(",") if m]
    names = [w.name for w in WORLDS]
    wanted = args.worlds.split(",") if args.worlds else names
    unknown = set(wanted) - set(names)
    if unknown or set(args.methods) - set(METHODS):
        parser.error(f"known worlds: {', '.join(names)}; methods: {', '.join(METHODS)}")
    args.worlds = [replace(w, queries=args.queries) for w in WORLDS if w.name in wanted]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tamis.config import ConfigError
    from tamis.selectors.cet import CetSelector

    # The column whose parameters are the selector's defaults.
    default = CetSelector.Params().method
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows = []
    print(f"{BENCH}: {len(args.worlds)} worlds x {args.methods}; default method {default!r}")
    for world in args.worlds:
        t0 = time.perf_counter()
        prepared = prepare(world, args.dim, args.k, args.provenance_depth, args.seed)
        row: dict[str, Any] = {
            "world": asdict(world),
            "facts": {**prepared.facts, "oracle_ece": oracle_ece(prepared)},
            "generate_s": round(time.perf_counter() - t0, 2),
        }
        for method in args.methods:
            t1 = time.perf_counter()
            try:
                _, candidates, result = estimate(prepared, method, args.seed)
            except ConfigError as err:  # e.g. pool_ranks asked for without the judged pool
                row[method] = {"ece": None, "auc": None, "not_run": str(err)}
                continue
            row[method] = {**scores(prepared, candidates, result),
                           "seconds": round(time.perf_counter() - t1, 2)}  # fmt: skip
        rows.append(row)
        cells = "  ".join(
            f"{m} ECE {row[m]['ece']:.4f} AUC {row[m]['auc']:.4f} ({row[m]['seconds']:.1f}s)"
            if row[m]["ece"] is not None
            else f"{m} not run"
            for m in args.methods
        )
        print(
            f"  {world.name:<18} FN rate {prepared.facts['false_negative_rate_unjudged']:.3f} "
            f"oracle ECE {row['facts']['oracle_ece']:.4f}  {cells}",
            flush=True,
        )
    total_s = time.perf_counter() - started
    load_after = os.getloadavg()

    print_table(rows, args.methods)
    targets = [row for row in rows if row["world"]["target"]]
    worst = {m: max((row[m]["ece"] for row in targets), default=None) for m in args.methods}
    met = {
        f"{m}_ece_le_{TARGET_ECE}_every_world": worst[m] is not None and worst[m] <= TARGET_ECE
        for m in args.methods
    }
    if default in args.methods:
        met["default_ece_le_target_every_world"] = met[f"{default}_ece_le_{TARGET_ECE}_every_world"]
    print(f"\nworst ECE over the target worlds: {worst}; met: {met}; {total_s:.0f}s")

    command = " ".join(["python", "bench/cet_calibration.py", *(argv or sys.argv[1:])])
    path = write_results(
        BENCH,
        {
            "command": command,
            "params": {
                "queries": args.queries,
                "dim": args.dim,
                "k": args.k,
                "provenance_depth": args.provenance_depth,
                "methods": args.methods,
                "default_method": default,
                "seed": args.seed,
                "threads": blas_info(),
            },
            "results": {
                "worlds": rows,
                "worst_ece": worst,
                "total_s": round(total_s, 1),
                "loadavg_before_after": [
                    [round(x, 2) for x in load_before],
                    [round(x, 2) for x in load_after],
                ],
            },
            "targets": {
                "ece": f"<= {TARGET_ECE} in every target world (10 equal-width bins), "
                f"for the default method ({default})"
            },
            "met": met,
        },
        args.out,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
