"""`cet`: hard negatives with pooling-bias correction (ALGORITHMS.md, CET; Cai et al. 2022).

Mined candidates (query, document, rank, score) are either labelled relevant (qrels) or
not. Unlabelled ones are mostly true (hard) negatives, but some are relevant documents the
annotators never saw, because only the pool-building retrievers' top results were judged.
This module turns candidate arrays into, per candidate:

- ``p_relevant``: P(relevant) (1 for labelled candidates),
- ``p_selected``: the selection propensity e (P(judged | relevant)),
- ``p_false_negative``: P(relevant | unlabelled) = f (1 - e) / (1 - f e) (0 for labelled and
  for judged-not-relevant candidates),
- ``negative_weight``: 1 - p_false_negative (``complement``), or CET's inverse propensity
  1 / (1 - e) normalised to mean 1 over each query's unlabelled candidates
  (``inverse_propensity``); 0 for labelled candidates,
- ``exclude``: p_false_negative above ``exclude_above`` (a likely false negative).

Two methods: ``em`` (selected-at-random PU EM, logistic f and e; calibrated; the default)
and ``cet`` (the reference's coupled reweighted updates of two scorers; their scores are
then calibrated by the same EM with each model's score as its only feature, because CET's
pairwise losses leave the scores without a probability scale). With the judged pool known,
em's relevance model also sees a summary of the pool retrievers' ranks
(``pool_rank_summary``; see `CetSelector.relevance_features` for why, and
bench/cet_calibration.py and bench/cet_bbc.py for the measurements).

The estimation is arrays in, arrays out; `select` mines the candidates with the FAISS layer
(on Beam workers with `select_distributed`), labels them (`cet_candidates`) and estimates.
Outputs beside the subset of kept hard negatives: ``candidates.parquet`` (every mined pair
with the columns above) and ``review_queue.parquet`` / ``.jsonl`` (the unlabelled candidates
most likely to be false negatives, for annotators).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from tamis.config import ConfigError
from tamis.index.faiss_index import build_from_embeddings_dir
from tamis.index.mining import mine_top_k
from tamis.inputs.embeddings import finite_blocks
from tamis.inputs.retrieval import positions_in
from tamis.selectors.base import (
    RETRIEVAL,
    BeamJob,
    Selection,
    SelectionInputs,
    Selector,
    register,
)
from tamis.selectors.cet_candidates import (
    CandidateArrays,
    CetEstimate,
    candidate_table,
    label_candidates,
)
from tamis.selectors.cet_core import fit_coupled, fit_sar_em, sar_probabilities

RELEVANCE_FEATURES = ("score", "log_rank", "score_gap", "pool_rank_summary", "pool_ranks")
POOL_FEATURES = ("pool_rank_summary", "pool_ranks")  # need provenance and the judged pool
CANDIDATES = "candidates.parquet"
REVIEW_PARQUET = "review_queue.parquet"
REVIEW_JSONL = "review_queue.jsonl"


def pool_log_ranks(candidates: CandidateArrays, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(log rank, unranked) per candidate and pool retriever: the log of the candidate's rank
    in the retriever's list, log(longest rank seen + 1) where it did not rank it."""
    if candidates.provenance_ranks is None:
        raise ConfigError(f"selection.params.relevance_features: {name} needs provenance")
    ranks = candidates.provenance_ranks.astype(np.float64)
    unranked = ranks <= 0
    longest = np.where(unranked, 0, ranks).max(axis=0) if len(ranks) else 0
    return np.log(np.where(unranked, longest + 1, np.maximum(ranks, 1))), unranked


def relevance_feature_matrix(candidates: CandidateArrays, names: list[str]) -> np.ndarray:
    """Features of the relevance model f: what the mining retriever says about the pair
    (``score``, ``log_rank``, ``score_gap``) and what the retrievers that built the judged
    pool say (log ranks as `pool_log_ranks` gives them): ``pool_rank_summary``, the best and
    the worst log rank over the retrievers (one column with one retriever) and how many did
    not rank it; ``pool_ranks``, per retriever its log rank and a did-not-rank indicator."""
    columns = []
    for name in names:
        if name in POOL_FEATURES:
            log_rank, unranked = pool_log_ranks(candidates, name)
            if name == "pool_rank_summary":
                columns.append(log_rank.min(axis=1))
                if log_rank.shape[1] > 1:
                    columns.append(log_rank.max(axis=1))
                columns.append(unranked.sum(axis=1).astype(np.float64))
            else:
                for j in range(log_rank.shape[1]):
                    columns += [log_rank[:, j], unranked[:, j].astype(np.float64)]
        elif name == "score":
            columns.append(candidates.score.astype(np.float64))
        elif name == "log_rank":
            columns.append(np.log(candidates.rank.astype(np.float64)))
        elif name == "score_gap":  # distance below the query's best candidate
            best = np.full(int(candidates.query.max()) + 1, -np.inf)
            np.maximum.at(best, candidates.query, candidates.score.astype(np.float64))
            columns.append(candidates.score - best[candidates.query])
        else:
            known = ", ".join(RELEVANCE_FEATURES)
            raise ConfigError(
                f"selection.params.relevance_features: unknown feature {name!r}; known: {known}"
            )
    return np.stack(columns, axis=1)


def selection_feature_matrix(candidates: CandidateArrays) -> tuple[np.ndarray | None, list[str]]:
    """Features of the selection model e: the pool-building retrievers' reciprocal ranks
    (0 where a retriever did not rank the candidate) and the judged indicator. None when
    there is no provenance at all (e is then a constant)."""
    columns, names = [], []
    if candidates.provenance_ranks is not None:
        ranks = candidates.provenance_ranks.astype(np.float64)
        for j in range(ranks.shape[1]):
            columns.append(np.where(ranks[:, j] > 0, 1.0 / np.maximum(ranks[:, j], 1), 0.0))
            names.append(f"reciprocal_rank_{j}")
    if candidates.judged is not None:
        columns.append(candidates.judged.astype(np.float64))
        names.append("judged")
    if not columns:
        return None, []
    return np.stack(columns, axis=1), names


def fit_sample_rows(query: np.ndarray, size: int, seed: int) -> np.ndarray | None:
    """Rows of a seeded sample of whole queries with about `size` candidates in all (None:
    there are no more than `size` candidates, fit on all)."""
    if len(query) <= size:
        return None
    n_queries = int(query.max()) + 1
    chosen = np.random.default_rng(seed).random(n_queries) < size / len(query)
    return np.flatnonzero(chosen[query])


def per_query_mean_one(values: np.ndarray, query: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`values` scaled so their mean over each query's `mask` rows is 1 (0 elsewhere)."""
    n_queries = int(query.max()) + 1 if len(query) else 0
    total = np.bincount(query[mask], weights=values[mask], minlength=n_queries)
    count = np.bincount(query[mask], minlength=n_queries)
    scale = np.where(total > 0, count / np.where(total > 0, total, 1), 0.0)
    return np.where(mask, values * scale[query], 0.0)


@register
class CetSelector(Selector):
    name = "cet"
    needs = frozenset({RETRIEVAL})
    pool_input = RETRIEVAL
    distributed = True  # mining runs on Beam workers
    accepts_candidates = False  # candidates are mined from the whole corpus
    budget_required = False

    @dataclass
    class Params:
        qrels: str | None = None  # Parquet/JSONL: query_id, doc_id[, relevance]
        # Ranked lists of the retrievers that built the judged pool:
        # query_id, doc_id, retriever, rank (1-based).
        provenance: str | None = None
        judged: str | None = None  # Parquet/JSONL of judged (query_id, doc_id) pairs
        judged_depth: int | None = None  # provenance ranks <= this were judged
        min_relevance: float = 1.0  # qrels rows below this are judged not relevant
        k: int = 100  # candidates mined per query
        method: Literal["em", "cet"] = "em"
        # None (auto): score and log_rank, plus (method em) pool_rank_summary when the judged
        # pool is known (judged_depth, judged pairs or qrels with relevance below
        # min_relevance).
        relevance_features: list[str] | None = None
        negative_weight: Literal["complement", "inverse_propensity"] = "complement"
        exclude_above: float = 0.5
        negatives_per_query: int = 8
        review_size: int = 1000
        drop_query_itself: bool = True  # a query that is a corpus document is not its own hit
        # EM iterations at most (stops when no posterior moves 1e-4; with the auto features
        # the BBC example takes ~340, the planted-topic worlds of bench/cet_calibration.py
        # 13-300).
        iterations: int = 1000
        # Fit the models on a seeded sample of whole queries holding about this many
        # candidates (all of them when there are fewer); every candidate is then scored.
        fit_sample: int = 200_000
        tau: float = 10.0  # CET temperature
        steps: int = 300  # CET joint update steps
        learning_rate: float = 0.05

    def validate(self) -> None:
        p = self.params
        if p.qrels is None:
            raise ConfigError("selection.params.qrels: cet needs the labelled positives")
        for key in ("k", "negatives_per_query", "iterations", "steps", "fit_sample"):
            if getattr(p, key) < 1:
                raise ConfigError(f"selection.params.{key}: must be >= 1, got {getattr(p, key)}")
        if p.review_size < 0:
            raise ConfigError(f"selection.params.review_size: must be >= 0, got {p.review_size}")
        if not 0 <= p.exclude_above <= 1:
            raise ConfigError(
                f"selection.params.exclude_above: must be in [0, 1], got {p.exclude_above}"
            )
        if p.judged_depth is not None and p.provenance is None:
            raise ConfigError("selection.params.judged_depth: needs provenance (ranked lists)")
        if p.tau <= 0:
            raise ConfigError(f"selection.params.tau: must be > 0, got {p.tau}")
        if p.relevance_features is not None and not p.relevance_features:
            raise ConfigError("selection.params.relevance_features: name at least one")
        for name in p.relevance_features or []:
            if name not in RELEVANCE_FEATURES:
                raise ConfigError(
                    f"selection.params.relevance_features: unknown feature {name!r}; "
                    f"known: {', '.join(RELEVANCE_FEATURES)}"
                )
        for name in POOL_FEATURES:
            if name in (p.relevance_features or []) and p.provenance is None:
                raise ConfigError(f"selection.params.relevance_features: {name} needs provenance")

    def relevance_features(self, candidates: CandidateArrays) -> list[str]:
        """The relevance model's features: as configured, or (auto) score and log_rank, plus
        for method em ``pool_rank_summary`` when the judged pool is known.

        Why: the pool retrievers' ranks say something about relevance that the mining score
        does not (a relevant document they both missed is rarer than the score alone
        suggests); left out of f, p_false_negative of the unjudged candidates comes out
        1.5-5x too high (bench/cet_calibration.py: ECE 0.012-0.134). The summary (best and
        worst rank, how many retrievers missed it) rather than per-retriever ranks
        (``pool_ranks``): both are calibrated on the planted-topic worlds (ECE <= 0.02),
        but per-retriever coefficients add up the evidence of retrievers that are not
        independent; on BBC News (TF-IDF and a truncated embedding, bench/cet_bbc.py) they
        underestimate false negatives and keep same-topic articles as hard negatives, the
        summary does not. The selection model must keep a feature f lacks (ALGORITHMS.md,
        CET): the judged indicator, known only with the judged pool; without it the ranks
        stay the selection model's alone. Method cet keeps the reference's split (its
        relevance model is the ranker, which sees the pair alone)."""
        p = self.params
        names = p.relevance_features
        judged_known = candidates.judged is not None
        if names is None:
            pool = ["pool_rank_summary"] if p.method == "em" and judged_known else []
            return ["score", "log_rank", *pool]
        for name in POOL_FEATURES:
            if name in names and not judged_known:
                raise ConfigError(
                    f"selection.params.relevance_features: {name} needs the judged pool "
                    "(judged_depth, judged, or qrels with a relevance column holding judged "
                    "non-relevant pairs): without it the selection model has no feature the "
                    "relevance model lacks and the propensity is not identifiable"
                )
        return list(names)

    def estimate(
        self,
        candidates: CandidateArrays,
        known_negative: np.ndarray | None = None,
        seed: int = 0,
    ) -> CetEstimate:
        """Relevance, propensity and false-negative probability of every candidate."""
        p = self.params
        if len(candidates) == 0:
            raise ConfigError("selection.params.qrels: no candidates were mined")
        labelled = candidates.labelled
        known = np.zeros(len(candidates), bool) if known_negative is None else known_negative
        if candidates.judged is not None:
            # Judged and not labelled relevant: judged not relevant.
            known = known | (candidates.judged & ~labelled)
        if not labelled.any():
            raise ConfigError(
                "selection.params.qrels: no labelled positive is among the mined candidates "
                f"(top {p.k}); check that qrels ids match the query and corpus ids"
            )
        relevance_names = self.relevance_features(candidates)
        x_relevance = relevance_feature_matrix(candidates, relevance_names)
        x_selection, selection_names = selection_feature_matrix(candidates)
        info: dict = {
            "method": p.method,
            "relevance_features": relevance_names,
            "selection_features": selection_names,
        }
        # The models have a handful of coefficients: a sample of whole queries pins them
        # down; every candidate is then scored with them (one pass).
        rows = fit_sample_rows(candidates.query, p.fit_sample, seed)
        if rows is not None and not labelled[rows].any():
            rows = None  # labels too sparse for the sample to hold one: fit on everything
        info["fit_candidates"] = len(candidates) if rows is None else len(rows)

        def fit_part(values: np.ndarray | None) -> np.ndarray | None:
            return values if rows is None or values is None else values[rows]

        if p.method == "cet":
            if x_selection is None:
                raise ConfigError(
                    "selection.params.method: cet needs provenance or judged pairs for its "
                    "selection model; use method: em (constant propensity) without them"
                )
            coupled = fit_coupled(
                fit_part(labelled), fit_part(candidates.query), fit_part(x_relevance),
                fit_part(x_selection), tau=p.tau, steps=p.steps,
                learning_rate=p.learning_rate, seed=seed,
            )  # fmt: skip
            info["cet"] = {
                "pairs": coupled.pairs,
                "relevance_coef": coupled.relevance_coef.tolist(),
                "selection_coef": coupled.selection_coef.tolist(),
                "tau": p.tau,
                "steps": p.steps,
            }
            x_relevance = coupled.relevance(x_relevance)
            x_selection = coupled.selection(x_selection)
        fit = fit_sar_em(
            fit_part(labelled), fit_part(x_relevance), fit_part(x_selection),
            iterations=p.iterations, known_negative=fit_part(known),
        )  # fmt: skip
        p_relevant, p_selected, p_fn = sar_probabilities(
            fit.relevance_coef, fit.selection_coef, fit.constant_propensity,
            x_relevance, x_selection, labelled, known,
        )  # fmt: skip
        info.update(
            constant_propensity=fit.constant_propensity,
            em_iterations=fit.iterations,
            em_converged=fit.converged,
            relevance_coef=fit.relevance_coef.tolist(),
            selection_coef=fit.selection_coef.tolist(),
        )
        warnings = []
        if not fit.converged:
            warnings.append(
                f"the EM stopped at its cap of {p.iterations} iterations before converging; "
                "raise selection.params.iterations"
            )
        if fit.constant_propensity:
            warnings.append(
                "no provenance or judged pairs: the selection propensity is one constant "
                "(Elkan-Noto: labelling completely at random); p_false_negative rests on "
                "that assumption"
            )
        if warnings:
            info["warning"] = "; ".join(warnings)
        unlabelled = ~labelled
        if p.negative_weight == "complement":
            weight = np.where(unlabelled, 1.0 - p_fn, 0.0)
        else:
            inverse = 1.0 / np.maximum(1.0 - p_selected, 1e-6)
            weight = per_query_mean_one(inverse, candidates.query, unlabelled)
        exclude = unlabelled & (p_fn > p.exclude_above)
        info.update(
            expected_false_negatives=float(p_fn.sum()),
            excluded=int(exclude.sum()),
            known_negatives=int(known.sum()),
        )
        return CetEstimate(
            p_relevant=p_relevant,
            p_selected=p_selected,
            p_false_negative=p_fn,
            negative_weight=weight,
            exclude=exclude,
            known_negative=known,
            info=info,
        )

    def kept_negatives(self, candidates: CandidateArrays, estimate: CetEstimate) -> np.ndarray:
        """Candidate rows of the hard negatives kept: per query, the best-ranked unlabelled
        candidates not excluded, at most `negatives_per_query`, in query then rank order."""
        keep = ~candidates.labelled & ~estimate.exclude
        rows = np.flatnonzero(keep)
        rows = rows[np.lexsort((candidates.rank[rows], candidates.query[rows]))]
        query = candidates.query[rows]
        first_of_query = np.r_[0, np.flatnonzero(np.diff(query)) + 1]
        position_in_query = np.arange(len(rows)) - np.repeat(
            first_of_query, np.diff(np.r_[first_of_query, len(rows)])
        )
        return rows[position_in_query < self.params.negatives_per_query]

    def review_queue(self, candidates: CandidateArrays, estimate: CetEstimate) -> np.ndarray:
        """Candidate rows most likely to be false negatives, most likely first (ties: query,
        then rank), for annotators."""
        rows = np.flatnonzero(~candidates.labelled & ~estimate.known_negative)
        order = np.lexsort(
            (candidates.rank[rows], candidates.query[rows], -estimate.p_false_negative[rows])
        )
        return rows[order][: self.params.review_size]

    def resolve_budget(self, budget, inputs: SelectionInputs) -> None:
        if budget is not None:
            raise ConfigError(
                "selection.budget: cet keeps selection.params.negatives_per_query hard "
                "negatives per query; remove budget"
            )
        return None

    def select(self, inputs: SelectionInputs, budget: None, seed: int) -> Selection:
        return self._mine_and_estimate(inputs, seed, None)

    def select_distributed(
        self, inputs: SelectionInputs, budget: None, seed: int, job: BeamJob
    ) -> Selection:
        """The same, with the candidates mined on Beam workers."""
        return self._mine_and_estimate(inputs, seed, job)

    def _mine_and_estimate(
        self, inputs: SelectionInputs, seed: int, job: BeamJob | None
    ) -> Selection:
        p, r = self.params, inputs.retrieval
        mine_started = time.perf_counter()
        ic = r.index_config
        try:
            index, corpus_list = build_from_embeddings_dir(
                r.corpus_dir, factory=ic.factory, device=ic.device, train_size=ic.train_size,
                nprobe=ic.nprobe, ef_search=ic.ef_search, seed=seed,
            )  # fmt: skip
        except ValueError as err:
            if "NaN or infinite" in str(err):
                # Which vectors, and how many: the pool loader's check, over the corpus.
                for _ in finite_blocks(r.corpus_dir, inputs.ids):
                    pass
            raise ConfigError(f"index: {err}") from err
        if index.dim != r.query_vectors.shape[1]:
            raise ConfigError(
                f"queries: query dimension {r.query_vectors.shape[1]} does not match the corpus "
                f"embeddings ({index.dim}, {r.corpus_dir})"
            )
        queries = pa.array(r.query_ids, pa.string())
        corpus = pa.array(corpus_list, pa.string())
        self_positions = None
        if p.drop_query_itself:
            self_positions = positions_in(queries, corpus)
            if not (self_positions >= 0).any():
                self_positions = None  # queries are not corpus documents: nothing to drop
        if job is not None:
            from tamis.index.mining_beam import mine_on_beam

            mined = mine_on_beam(
                job.runner, job.beam_args, ic, p.k, index, r.query_parts, self_positions,
                job.work_dir,
            )  # fmt: skip
        else:
            mined = mine_top_k(index, r.query_vectors, p.k, self_positions, ic.batch_size)
        mine_seconds = time.perf_counter() - mine_started

        # Labels and provenance, as pair keys over (query row, corpus position).
        estimate_started = time.perf_counter()
        counts: dict[str, Any] = {"queries": len(r.query_ids), "corpus": len(corpus_list)}
        candidates = label_candidates(p, r, mined, queries, corpus, counts)
        estimate = self.estimate(candidates, seed=seed)
        kept = self.kept_negatives(candidates, estimate)
        review = self.review_queue(candidates, estimate)
        estimate_seconds = time.perf_counter() - estimate_started

        review_table = candidate_table(queries, corpus, mined, candidates, estimate, review)
        unlabelled = ~candidates.labelled
        counts.update(
            candidates=len(mined),
            labelled_candidates=int(candidates.labelled.sum()),
            unlabelled_candidates=int(unlabelled.sum()),
            known_negatives=int(estimate.known_negative.sum()),
            excluded=int(estimate.exclude.sum()),
            kept_negatives=len(kept),
            queries_without_kept_negatives=len(r.query_ids) - len(np.unique(mined.query[kept])),
            review_queue=len(review),
            queries_with_a_labelled_candidate=int(len(np.unique(mined.query[candidates.labelled]))),
        )
        return Selection(
            selector=self.name,
            index=mined.doc[kept],
            ids=corpus.take(pa.array(mined.doc[kept])).to_pylist(),
            score=mined.score[kept],
            weight=estimate.negative_weight[kept],
            columns={
                "query_id": queries.take(pa.array(mined.query[kept])).to_pylist(),
                "retrieval_rank": mined.rank[kept],
                "p_false_negative": estimate.p_false_negative[kept],
            },
            info={
                **estimate.info,
                "seconds": {
                    "mine": round(mine_seconds, 3),
                    "estimate": round(estimate_seconds, 3),
                },
                "index": {"factory": index.factory, "device": index.device, "nprobe": ic.nprobe},
            },
            counts=counts,
            outputs={
                CANDIDATES: candidate_table(queries, corpus, mined, candidates, estimate),
                REVIEW_PARQUET: review_table,
                REVIEW_JSONL: review_table,
            },
        )

    def summary(self, manifest: dict, output: str) -> list[str]:
        c, info = manifest["counts"], manifest["info"]
        lines = [
            f"cet ({info['method']}): mined {c['candidates']:,} candidates for "
            f"{c['queries']:,} queries ({c['labelled_candidates']:,} labelled) in "
            f"{info['seconds']['mine']:.1f} s, estimated in {info['seconds']['estimate']:.1f} s",
            f"  expected false negatives among the unlabelled: "
            f"{info['expected_false_negatives']:,.0f} of {c['unlabelled_candidates']:,}; "
            f"{c['excluded']:,} excluded, {c['kept_negatives']:,} hard negatives kept"
            + (
                f" ({c['queries_without_kept_negatives']:,} queries keep none)"
                if c["queries_without_kept_negatives"]
                else ""
            ),
        ]
        if "warning" in info:
            lines.append(f"  note: {info['warning']}")
        lines.append(f"  candidates: {output}/{CANDIDATES}")
        lines.append(f"  review queue: {output}/{REVIEW_PARQUET} ({c['review_queue']:,})")
        return lines
