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
    """The (features + 1, n) design, transposed and C-contiguous: every product below is
    then a BLAS GEMV/GEMM over long rows (the (n, d) layout took ~30 ms per Newton step
    at 200k rows)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    design = np.empty((x.shape[1] + 1, len(x)))
    design[:-1] = x.T
    design[-1] = 1.0
    return design


def _logistic_fit(
    design: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray,
    l2: float,
    start: np.ndarray | None,
    steps: int,
) -> np.ndarray:
    beta = np.zeros(design.shape[0]) if start is None else start.copy()
    penalty = np.full(design.shape[0], l2 * max(weight.sum(), 1.0))
    penalty[-1] = 0.0
    for _ in range(steps):
        p = _sigmoid(beta @ design)
        gradient = design @ (weight * (y - p)) - penalty * beta
        curvature = (design * (weight * p * (1 - p))) @ design.T + np.diag(penalty)
        step = np.linalg.solve(curvature + 1e-9 * np.eye(len(beta)), gradient)
        beta += step
        if np.abs(step).max() < 1e-8:
            break
    return beta


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
    return _logistic_fit(_design(x), y, weight, l2, start, steps)


def predict(beta: np.ndarray, x: np.ndarray) -> np.ndarray:
    return _sigmoid(beta @ _design(x))


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
    converged: bool  # False: stopped at the iteration cap
    constant_propensity: bool


def sar_probabilities(
    relevance_coef: np.ndarray,
    selection_coef: np.ndarray,
    constant_propensity: bool,
    relevance_features: np.ndarray,
    selection_features: np.ndarray | None,
    labelled: np.ndarray,
    known_negative: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p_relevant, p_selected, p_false_negative) of candidates under fitted coefficients,
    e.g. for all candidates after a fit on a sample of them."""
    labelled = np.asarray(labelled, dtype=bool)
    f = predict(relevance_coef, relevance_features)
    if constant_propensity:
        e = np.full(len(f), float(selection_coef[0]))
    else:
        e = predict(selection_coef, selection_features)
    p_fn = np.where(labelled, 0.0, false_negative_posterior(f, e))
    if known_negative is not None:
        p_fn = np.where(known_negative, 0.0, p_fn)
    return np.where(labelled, 1.0, p_fn), e, p_fn


def false_negative_posterior(f: np.ndarray, e: np.ndarray) -> np.ndarray:
    """P(r = 1 | o = 0) = f (1 - e) / (1 - f e)."""
    return f * (1 - e) / np.maximum(1 - f * e, 1e-12)


def fit_sar_em(
    labelled: np.ndarray,
    relevance_features: np.ndarray,
    selection_features: np.ndarray | None,
    iterations: int = 200,
    tol: float = 1e-4,
    known_negative: np.ndarray | None = None,
    l2: float = 1e-4,
    newton_steps: int = 3,
) -> PoolingBiasFit:
    """EM for o = r s with logistic f and e, until no posterior moves by `tol`.

    Without selection features, e is a constant propensity c, estimated once as Elkan and
    Noto (2008) do: the mean over labelled candidates of the naive classifier's
    P(labelled | x) (exact when labelling is completely at random). It stays fixed: refitted
    inside the EM it would run to the degenerate c = 1 (every unlabelled one negative), the
    likelihood's maximum when nothing separates selection from relevance.
    `constant_propensity` says the result rests on that assumption.

    `known_negative` marks candidates judged not relevant (e.g. qrels with relevance 0):
    their posterior is 0, not the model's, and (with selection features) the EM starts from
    the relevance model fitted on the candidates whose relevance is known. Each M-step
    takes at most `newton_steps` warm-started Newton steps per model (a generalised EM:
    every step still raises the likelihood, and the next E-step needs no exact maximum)."""
    o = np.asarray(labelled, dtype=np.float64)
    n = len(o)
    if n == 0 or o.sum() == 0:
        raise ValueError("no labelled positives among the candidates: nothing to learn from")
    fixed = o == 1
    fixed_value = np.where(fixed, 1.0, 0.0)
    if known_negative is not None:
        known = np.asarray(known_negative, dtype=bool)
        if (known & fixed).any():
            raise ValueError("a candidate is both labelled relevant and judged not relevant")
        fixed = fixed | known
    constant = selection_features is None
    ones = np.ones(n)
    design_r = _design(relevance_features)
    design_s = None if constant else _design(selection_features)
    beta_s = None
    if not constant and (fixed & (o == 0)).any():
        # Known negatives (the judged pool is known): the first posterior of the others is
        # the relevance model of the candidates whose relevance is known. The EM's fixed
        # point is near (with e = the judged indicator it is a fit on the judged ones); from
        # the start below it took up to 200+ iterations (bench/cet_calibration.py).
        beta_r = _logistic_fit(design_r, o, fixed.astype(np.float64), l2, None, 25)
        e = np.full(n, 0.5)
        posterior = np.where(fixed, fixed_value, _sigmoid(beta_r @ design_r))
    else:
        # Start away from the degenerate fixed point e = 1 (every unlabelled one negative):
        # the naive relevance model and an even propensity give the first posterior.
        beta_r = _logistic_fit(design_r, o, ones, l2, None, 25)
        naive = _sigmoid(beta_r @ design_r)
        e = np.full(n, float(naive[o == 1].mean()) if constant else 0.5)
        posterior = np.where(fixed, fixed_value, false_negative_posterior(naive, e))
    iteration, converged = 0, False
    for iteration in range(1, iterations + 1):  # noqa: B007  (reported below)
        # M-step, relevance: soft labels r = posterior (1 for labelled).
        beta_r = _logistic_fit(design_r, posterior, ones, l2, beta_r, newton_steps)
        f = _sigmoid(beta_r @ design_r)
        # M-step, selection: among (expected) relevant candidates, was it labelled?
        if not constant:
            beta_s = _logistic_fit(design_s, o, posterior, l2, beta_s, newton_steps)
            e = _sigmoid(beta_s @ design_s)
        # E-step: unlabelled candidates' posterior of being relevant.
        updated = np.where(fixed, fixed_value, false_negative_posterior(f, e))
        change = float(np.abs(updated - posterior).max())
        posterior = updated
        if change < tol:
            converged = True
            break
    p_fn = np.where(o == 1, 0.0, posterior)
    return PoolingBiasFit(
        p_relevant=posterior,
        p_selected=e,
        p_false_negative=p_fn,
        relevance_coef=beta_r,
        selection_coef=beta_s if beta_s is not None else np.array([e[0]]),
        iterations=iteration,
        converged=converged,
        constant_propensity=constant,
    )


@dataclass
class CoupledScores:
    """CET's two linear scorers after the joint updates (uncalibrated: pairwise losses fix
    no intercept) and the pairs trained on. Scores are taken on standardised features."""

    relevance_coef: np.ndarray
    selection_coef: np.ndarray
    relevance_standard: tuple[np.ndarray, np.ndarray]  # (mean, scale) of the features
    selection_standard: tuple[np.ndarray, np.ndarray]
    pairs: int

    def relevance(self, x: np.ndarray) -> np.ndarray:
        return _apply_standard(x, self.relevance_standard) @ self.relevance_coef

    def selection(self, x: np.ndarray) -> np.ndarray:
        return _apply_standard(x, self.selection_standard) @ self.selection_coef


def _standard(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    scale = x.std(axis=0)
    return x.mean(axis=0), np.where(scale > 0, scale, 1.0)


def _apply_standard(x: np.ndarray, standard: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    return (x - standard[0]) / standard[1]


def fit_coupled(
    labelled: np.ndarray,
    query: np.ndarray,
    relevance_features: np.ndarray,
    selection_features: np.ndarray,
    tau: float = 10.0,
    steps: int = 300,
    learning_rate: float = 0.05,
    seed: int = 0,
) -> CoupledScores:
    """The CET joint updates (Cai et al. 2022; ALGORITHMS.md) with linear scorers.

    Every labelled-negative pair (q, d+, d-) of the same query is a 2-way softmax
    cross-entropy example for both models; R's loss is weighted by
    w_R = 1 / (1 - sigmoid(S(q, d-) / tau)) and S's by w_S = 1 / (1 - sigmoid(R(q, d-) / tau)),
    both weights computed from the current models before the step, and both models step
    every time (full-batch Adam; each step pairs every unlabelled candidate with a random
    positive of its query, as the reference's (pos, neg) training rows do). Features are
    standardised; candidates of queries without a labelled positive get scores but give
    no pairs.
    """
    o = np.asarray(labelled, dtype=bool)
    query = np.asarray(query, dtype=np.int64)
    standard_r, standard_s = _standard(relevance_features), _standard(selection_features)
    xr = _apply_standard(relevance_features, standard_r)
    xs = _apply_standard(selection_features, standard_s)
    # Positives grouped by query: a random one per negative is a CSR lookup.
    positives = np.flatnonzero(o)
    positives = positives[np.argsort(query[positives], kind="stable")]
    n_queries = int(query.max()) + 1 if len(query) else 0
    count = np.bincount(query[positives], minlength=n_queries)
    start = np.r_[0, np.cumsum(count)[:-1]]
    negatives = np.flatnonzero(~o & (count[query] > 0))
    if len(negatives) == 0:
        raise ValueError("no (labelled positive, unlabelled) pairs within a query to learn from")
    rng = np.random.default_rng(seed)
    weights = [np.zeros(xr.shape[1]), np.zeros(xs.shape[1])]
    moments = [[np.zeros_like(w), np.zeros_like(w)] for w in weights]
    beta1, beta2 = 0.9, 0.999
    neg_q = query[negatives]
    neg_xr, neg_xs = xr[negatives], xs[negatives]
    for step in range(1, steps + 1):
        pos = positives[start[neg_q] + (rng.random(len(negatives)) * count[neg_q]).astype(int)]
        r_pos, r_neg = xr[pos] @ weights[0], neg_xr @ weights[0]
        s_pos, s_neg = xs[pos] @ weights[1], neg_xs @ weights[1]
        # Inverse-propensity weights from the other model (clipped: sigmoid -> 1 would
        # give an infinite weight).
        w_r = 1.0 / (1.0 - np.minimum(_sigmoid(s_neg / tau), 1 - 1e-6))
        w_s = 1.0 / (1.0 - np.minimum(_sigmoid(r_neg / tau), 1 - 1e-6))
        # d/dw softplus(neg - pos) = sigmoid(neg - pos) (x_neg - x_pos).
        g_r = (w_r * _sigmoid(r_neg - r_pos)) @ (neg_xr - xr[pos]) / len(negatives)
        g_s = (w_s * _sigmoid(s_neg - s_pos)) @ (neg_xs - xs[pos]) / len(negatives)
        for which, gradient in enumerate((g_r, g_s)):
            m, v = moments[which]
            m[:] = beta1 * m + (1 - beta1) * gradient
            v[:] = beta2 * v + (1 - beta2) * gradient**2
            m_hat, v_hat = m / (1 - beta1**step), v / (1 - beta2**step)
            weights[which] -= learning_rate * m_hat / (np.sqrt(v_hat) + 1e-8)
    return CoupledScores(
        relevance_coef=weights[0],
        selection_coef=weights[1],
        relevance_standard=standard_r,
        selection_standard=standard_s,
        pairs=len(negatives),
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
