"""Pooling-bias correction for mined hard negatives (ALGORITHMS.md, CET), pure numpy.

A candidate (query, document) is labelled relevant only if it is relevant (r) AND was
selected for judging (s) by the retrievers that built the judged pool: o = r s. With a
relevance model f(x_r) = P(r = 1 | x_r) and a selection model e(x_s) = P(s = 1 | x_s, r = 1)
that sees other features (e.g. ranks in the pool-building retrievers), an unlabelled
candidate is relevant (a false negative) with probability

    P(r = 1 | o = 0) = f (1 - e) / (1 - f e)            (selected-at-random PU learning)

`fit_sar_em` alternates the two (Bekker et al. 2019): the E-step computes that posterior, the
M-step refits both logistic models with it as soft labels. Logistic fits are Newton steps on
a handful of features, so millions of candidates take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for large |z|


def _design(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    return np.hstack([x, np.ones((len(x), 1))])


def weighted_logistic(
    x: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray,
    l2: float = 1e-4,
    start: np.ndarray | None = None,
    steps: int = 25,
) -> np.ndarray:
    """Coefficients (features..., intercept) maximising sum w [y log p + (1 - y) log(1 - p)]
    with a small L2 penalty (not on the intercept); y may be soft (in [0, 1])."""
    design = _design(x)
    beta = np.zeros(design.shape[1]) if start is None else start.copy()
    penalty = np.full(design.shape[1], l2 * max(weight.sum(), 1.0))
    penalty[-1] = 0.0
    for _ in range(steps):
        p = _sigmoid(design @ beta)
        gradient = design.T @ (weight * (y - p)) - penalty * beta
        curvature = (design * (weight * p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        step = np.linalg.solve(curvature + 1e-9 * np.eye(len(beta)), gradient)
        beta += step
        if np.abs(step).max() < 1e-8:
            break
    return beta


def predict(beta: np.ndarray, x: np.ndarray) -> np.ndarray:
    return _sigmoid(_design(x) @ beta)


@dataclass
class PoolingBiasFit:
    """Per candidate: P(relevant), P(selected | relevant), P(false negative) (0 for labelled
    candidates), and the fitted coefficients."""

    p_relevant: np.ndarray
    p_selected: np.ndarray
    p_false_negative: np.ndarray
    relevance_coef: np.ndarray
    selection_coef: np.ndarray
    iterations: int
    constant_propensity: bool


def false_negative_posterior(f: np.ndarray, e: np.ndarray) -> np.ndarray:
    """P(r = 1 | o = 0) = f (1 - e) / (1 - f e)."""
    return f * (1 - e) / np.maximum(1 - f * e, 1e-12)


def fit_sar_em(
    labelled: np.ndarray,
    relevance_features: np.ndarray,
    selection_features: np.ndarray | None,
    iterations: int = 50,
    tol: float = 1e-6,
) -> PoolingBiasFit:
    """EM for o = r s with logistic f and e. Without selection features, e is a constant
    propensity: the labelled share of the candidates the relevance model calls relevant
    (identifiable only through that assumption; `constant_propensity` says so)."""
    o = np.asarray(labelled, dtype=np.float64)
    n = len(o)
    if n == 0 or o.sum() == 0:
        raise ValueError("no labelled positives among the candidates: nothing to learn from")
    constant = selection_features is None
    ones = np.ones(n)
    # Start away from the degenerate fixed point e = 1 (every unlabelled one negative): the
    # naive relevance model and an even propensity give the first posterior.
    beta_r = weighted_logistic(relevance_features, o, ones)
    beta_s = None
    e = np.full(n, 0.5)
    posterior = np.where(
        o == 1, 1.0, false_negative_posterior(predict(beta_r, relevance_features), e)
    )
    iteration = 0
    for iteration in range(1, iterations + 1):  # noqa: B007  (reported below)
        # M-step, relevance: soft labels r = posterior (1 for labelled).
        beta_r = weighted_logistic(relevance_features, posterior, ones, start=beta_r)
        f = predict(beta_r, relevance_features)
        # M-step, selection: among (expected) relevant candidates, was it labelled?
        if constant:
            share = o.sum() / max(posterior.sum(), 1e-12)
            e = np.full(n, min(share, 1 - 1e-9))
        else:
            beta_s = weighted_logistic(selection_features, o, posterior, start=beta_s)
            e = predict(beta_s, selection_features)
        # E-step: unlabelled candidates' posterior of being relevant.
        updated = np.where(o == 1, 1.0, false_negative_posterior(f, e))
        change = float(np.abs(updated - posterior).max())
        posterior = updated
        if change < tol:
            break
    p_fn = np.where(o == 1, 0.0, posterior)
    return PoolingBiasFit(
        p_relevant=posterior,
        p_selected=e,
        p_false_negative=p_fn,
        relevance_coef=beta_r,
        selection_coef=beta_s if beta_s is not None else np.array([e[0]]),
        iterations=iteration,
        constant_propensity=constant,
    )


def reliability_error(predicted: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: |mean prediction - observed rate| per equal-width bin,
    weighted by the bin's share."""
    predicted = np.asarray(predicted, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    which = np.minimum((predicted * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            error += mask.mean() * abs(predicted[mask].mean() - truth[mask].mean())
    return float(error)


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (ties counted half), by ranks."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both classes")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average ranks over ties.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
