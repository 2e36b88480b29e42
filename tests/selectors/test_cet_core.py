"""Pooling-bias correction: calibrated false-negative probabilities on synthetic pools."""

import numpy as np
import pytest

from tamis.selectors.cet_core import (
    auc,
    false_negative_posterior,
    fit_sar_em,
    predict,
    reliability_error,
    weighted_logistic,
)


def synthetic_pool(n: int = 50_000, seed: int = 0):
    """Retriever score x (relevance feature); latent relevance r ~ logistic(5x - 3); two weak
    pool-building retrievers score 0.8x + noise; a relevant candidate is judged (labelled)
    with a logistic propensity in the weak scores (selected at random given them)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    r = rng.random(n) < 1 / (1 + np.exp(-(5 * x - 3)))
    weak = np.stack([0.8 * x + rng.normal(size=n), 0.8 * x + rng.normal(size=n)], axis=1)
    propensity = 1 / (1 + np.exp(-(1.5 * weak[:, 0] + 1.5 * weak[:, 1] - 1)))
    selected = rng.random(n) < propensity
    labelled = r & selected
    return x, weak, r, labelled


def test_weighted_logistic_recovers_known_coefficients():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20_000, 2))
    y = rng.random(20_000) < 1 / (1 + np.exp(-(2 * x[:, 0] - x[:, 1] + 0.5)))
    beta = weighted_logistic(x, y.astype(float), np.ones(20_000), l2=0)
    np.testing.assert_allclose(beta, [2, -1, 0.5], atol=0.1)
    # Soft labels and weights: duplicating rows equals weight 2.
    twice = weighted_logistic(np.vstack([x, x]), np.r_[y, y].astype(float), np.ones(40_000), l2=0)
    weighted = weighted_logistic(x, y.astype(float), np.full(20_000, 2.0), l2=0)
    np.testing.assert_allclose(twice, weighted, rtol=1e-6)


def test_posterior_formula():
    f, e = np.array([0.5, 0.9, 0.0]), np.array([0.5, 0.9, 0.3])
    np.testing.assert_allclose(false_negative_posterior(f, e), [0.25 / 0.75, 0.09 / 0.19, 0.0])


def test_em_is_calibrated_and_ranks_false_negatives_first():
    x, weak, r, labelled = synthetic_pool()
    fit = fit_sar_em(labelled, x, weak)
    unlabelled = ~labelled
    p_fn = fit.p_false_negative[unlabelled]
    truth = r[unlabelled]  # relevant but not labelled: a false negative
    assert 0.05 < truth.mean() < 0.5  # the pool has plenty of both
    assert reliability_error(p_fn, truth) < 0.05
    assert auc(p_fn, truth) >= 0.9
    # The naive reading (every unlabelled candidate a true negative) says 0 for all of them.
    naive = np.zeros(unlabelled.sum())
    assert reliability_error(naive, truth) > 0.05
    assert (fit.p_false_negative[labelled] == 0).all() and not fit.constant_propensity
    # The propensity model sees the weak retrievers' scores: close to the generator's.
    true_e = 1 / (1 + np.exp(-(1.5 * weak[:, 0] + 1.5 * weak[:, 1] - 1)))
    assert np.abs(predict(fit.selection_coef, weak) - true_e).mean() < 0.05


def test_without_provenance_a_constant_propensity_is_used_and_said():
    x, _, r, labelled = synthetic_pool(20_000, seed=2)
    fit = fit_sar_em(labelled, x, None)
    assert fit.constant_propensity and np.ptp(fit.p_selected) == 0 and fit.converged
    # Estimated once (Elkan-Noto), not refitted: refitting runs it to the degenerate 1.
    true_share = labelled.sum() / r.sum()
    assert 0.3 < fit.p_selected[0] < 0.9 and abs(fit.p_selected[0] - true_share) < 0.2
    unlabelled = ~labelled
    p_fn, truth = fit.p_false_negative[unlabelled], r[unlabelled]
    assert reliability_error(p_fn, truth) < reliability_error(np.zeros_like(p_fn), truth) / 2
    with pytest.raises(ValueError, match="no labelled positives"):
        fit_sar_em(np.zeros(10, bool), np.arange(10.0), None)


def test_auc_and_reliability_helpers():
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == 0.75
    assert auc(np.array([1.0, 1.0]), np.array([0, 1], bool)) == 0.5  # a tie counts half
    assert reliability_error(np.array([0.2] * 5), np.array([0, 0, 0, 0, 1])) == pytest.approx(0)
