"""STAT-Sel core: the difficult rule, the profile, weights in closed form, sampling."""

import numpy as np
import pytest

from tamis.selectors.stat_core import (
    expected_draws,
    is_difficult,
    missing_skill_counts,
    skill_map,
    stat_sample,
    stat_weights,
)


@pytest.mark.parametrize(
    "rewards, difficult",
    [
        ([0.9, 0.95, 0.86], False),  # last > tau1, mean 0.903, earlier > tau2
        ([0.9, 0.95, 0.85], True),  # last exactly at tau1
        ([0.9, 0.95, 0.8500001], False),  # last just above tau1
        ([0.9, 0.7, 0.95], True),  # an earlier step exactly at tau2
        ([0.9, 0.7000001, 0.95], False),  # earlier just above tau2; mean 0.8500000333
        ([0.8, 0.8, 0.9], True),  # only the mean rule: 0.833 <= tau1
        ([1.0, 1.0, 0.86, 0.2, 0.86], True),  # an earlier step far below tau2
        ([0.6, 1.0, 1.0, 1.0, 1.0], True),  # the first step counts as earlier
        ([0.86], False),
        ([0.85], True),
    ],
)
def test_difficult_rule_at_and_around_the_thresholds(rewards, difficult):
    assert is_difficult(rewards) is difficult


@pytest.mark.parametrize("rewards", [[], [float("nan")], [0.9, float("nan")], [0.2, float("inf")]])
def test_no_rewards_or_non_finite_ones_are_refused_not_called_easy(rewards):
    # An empty or NaN reward list used to count as "not difficult", hiding a broken file.
    with pytest.raises(ValueError, match="rewards must be"):
        is_difficult(rewards)


def test_mean_rule_and_configurable_thresholds():
    assert is_difficult([0.8, 0.8, 0.9])  # last 0.9 > 0.85, earlier > 0.7, mean 0.833
    assert not is_difficult([0.8, 0.8, 0.9], tau1=0.8)  # mean 0.833 > 0.8, last 0.9
    assert is_difficult([0.75, 0.99], tau2=0.76)


def small_pool():
    # examples: 0:{a}, 1:{a,b}, 2:{b}, 3:{c}, 4:{} , 5:{a,a} (a listed twice counts once)
    skills = [[0], [0, 1], [1], [2], [], [0, 0]]
    offsets = np.cumsum([0] + [len(s) for s in skills])
    codes = np.asarray([c for s in skills for c in s])
    return offsets, codes, skill_map(offsets, codes, 4)


def test_weights_equal_the_closed_form():
    offsets, codes, smap = small_pool()
    assert smap.sizes.tolist() == [3, 2, 1, 0]  # a: 0,1,5; b: 1,2; c: 3; d: none
    # difficult questions' missing skills: q1 {a}, q2 {a, b}, q3 {d} (no example has d)
    counts = missing_skill_counts(np.asarray([0, 0, 1, 3]), 4)
    assert counts.tolist() == [2, 1, 0, 1]
    k = 3
    draws = expected_draws(counts, smap, k, 6)
    closed = [2 * k / 3, 2 * k / 3 + 1 * k / 2, k / 2, 0, 0, 2 * k / 3]
    np.testing.assert_allclose(draws, closed)
    weights = stat_weights(counts, smap, k, 6)
    np.testing.assert_allclose(weights, np.asarray(closed) / sum(closed))
    assert weights[3] == 0 and weights[4] == 0  # no missing skill: weight 0
    mixed = stat_weights(counts, smap, k, 6, mix_uniform=0.2)
    np.testing.assert_allclose(mixed, 0.8 * weights + 0.2 / 6)
    assert mixed.sum() == pytest.approx(1.0)


def test_sample_frequencies_converge_to_the_weights():
    rng = np.random.default_rng(0)
    n_examples, n_skills = 10, 5
    skills = [
        sorted(set(rng.integers(0, n_skills, rng.integers(1, 3)).tolist())) for _ in range(10)
    ]
    offsets = np.cumsum([0] + [len(s) for s in skills])
    smap = skill_map(offsets, np.asarray([c for s in skills for c in s]), n_skills)
    missing = rng.integers(0, n_skills, 200_000)  # (question, missing skill) pairs
    weights = stat_weights(missing_skill_counts(missing, n_skills), smap, 3, n_examples)
    picks = stat_sample(missing, smap, k=3, target=200_000, seed=1)
    frequency = np.bincount(picks, minlength=n_examples) / len(picks)
    carried = weights > 0
    # Two stages of sampling noise (the appended list, then 200k draws from it): the
    # frequencies are within 2% of the total mass of the weights (total variation), and
    # each within 5% of its own weight (sd here is ~0.8% of the smallest weight).
    assert 0.5 * np.abs(frequency - weights).sum() < 0.02 * 0.5
    np.testing.assert_allclose(frequency[carried], weights[carried], rtol=0.05)
    assert (frequency[~carried] == 0).all()
    again = stat_sample(missing, smap, k=3, target=200_000, seed=1)
    np.testing.assert_array_equal(picks, again)  # deterministic with a seed


def test_pairs_of_skills_no_example_has_add_nothing():
    _, _, smap = small_pool()
    with pytest.raises(ValueError, match="no difficult question misses a skill"):
        stat_sample(np.asarray([3, 3]), smap, 3, 10)
    picks = stat_sample(np.asarray([3, 2]), smap, 3, 6)
    assert set(picks.tolist()) == {3}  # only skill c's example
