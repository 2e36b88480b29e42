"""Data-filtering scaling laws: the formulas by hand, fits that recover parameters, plans."""

import re

import numpy as np
import pytest

from tamis.selectors.scaling_laws import (
    Z,
    fit_from_json,
    fit_scaling_laws,
    mixture_error,
    parse_count,
    plan,
    single_pool_error,
    single_pool_errors,
)

S = 12.8e6
A, D = 0.025, 0.1


def test_single_pool_formula_by_hand():
    b, tau = -0.3, 2.0
    first = (A * S / Z) ** b + D
    # No repetition: half a pass.
    assert single_pool_error(S / 2, A, b, tau, D, S) == pytest.approx((A * S / 2 / Z) ** b + D)
    # Exactly one pass: K = 1, the repeat factor (S / S)^(..) is 1.
    assert single_pool_error(S, A, b, tau, D, S) == pytest.approx(first)
    # One and a half passes: one partial repeat worth b 0.5^(1 / tau).
    expected = first * 1.5 ** (b * 0.5 ** (1 / tau))
    assert single_pool_error(1.5 * S, A, b, tau, D, S) == pytest.approx(expected)
    # Three full passes: repeats 1 and 2, each decayed further.
    expected = first * 2 ** (b * 0.5 ** (1 / tau)) * 1.5 ** (b * 0.5 ** (2 / tau))
    assert single_pool_error(3 * S, A, b, tau, D, S) == pytest.approx(expected)
    many = single_pool_errors(np.array([S / 2, S, 1.5 * S, 3 * S]), A, b, tau, D, S)
    assert many.tolist() == [single_pool_error(n, A, b, tau, D, S) for n in many * 0 + [
        S / 2, S, 1.5 * S, 3 * S]]  # fmt: skip


def test_a_mixture_of_one_pool_is_the_single_pool():
    for n in (S / 3, S, 2.5 * S, 40 * S):
        assert mixture_error(n, A, [-0.2], [3.0], D, S) == single_pool_error(n, A, -0.2, 3.0, D, S)


def test_mixture_by_hand():
    # Two pools: pass length 2S, tau doubled, b averaged per repeat.
    b, tau = np.array([-0.3, -0.1]), np.array([1.0, 4.0])
    n = 3 * S  # one full pass of 2S, half a repeat
    b1 = np.mean(b * 0.5 ** (1 / (2 * tau)))
    expected = ((A * 2 * S / Z) ** b.mean() + D) * 1.5**b1
    assert mixture_error(n, A, b, tau, D, S) == pytest.approx(expected)


def observations(truth: dict, noise: float, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for name, (b, tau) in truth.items():
        n = np.array([2, 4, 6, 8, 10]) * S
        error = single_pool_errors(n, A, b, tau, D, S)
        out[name] = (n, error * (1 + rng.normal(0, noise, len(n))))
    return out


TRUTH = {f"top{10 * (i + 1)}": (-0.3 + 0.025 * i, 2 + 0.8 * i) for i in range(10)}


@pytest.mark.parametrize("fixed", [{"a": A, "d": D}, {"d": D}])
def test_fit_recovers_known_parameters(fixed):
    fit = fit_scaling_laws(observations(TRUTH, 0.002), {k: S for k in TRUTH}, **fixed)
    for name, (b, tau) in TRUTH.items():
        assert fit.buckets[name]["b"] == pytest.approx(b, rel=0.05)
        assert fit.buckets[name]["tau"] == pytest.approx(tau, rel=0.2)
        assert fit.buckets[name]["rmse"] < 0.01
    assert fit.a == pytest.approx(A, rel=0.1) and fit.d == D
    assert set(fit.to_json()) == {"a", "d", "z", "buckets", "loss", "method"}


def test_planner_picks_the_known_best_mixture():
    # a S / Z = 3.2: in one pass the best bucket alone wins (its b is lower); with tau ~ 0
    # repeats are worthless, so at large budgets two buckets (twice the fresh data) win.
    buckets = {
        "best": {"b": -0.3, "tau": 0.01, "pool_size": S},
        "good": {"b": -0.25, "tau": 0.01, "pool_size": S},
    }
    rows = plan(buckets, A, D, [S, 20 * S])
    best = {(r.samples_seen, r.top_m) for r in rows if r.best}
    assert best == {(S, 1), (20 * S, 2)}
    one = [r for r in rows if r.samples_seen == S and r.top_m == 1][0]
    assert one.buckets == ["best"] and one.predicted_error == pytest.approx((A * S / Z) ** -0.3 + D)
    with pytest.raises(ValueError, match="equal-size buckets"):
        plan({**buckets, "odd": {"b": -0.2, "tau": 1.0, "pool_size": 2 * S}}, A, D, [S])


def test_meaningless_fits_are_refused():
    few = {"x": (np.array([S, 2 * S]), np.array([0.5, 0.4]))}
    with pytest.raises(ValueError, match="bucket 'x': 2 observations; a fit needs at least 3"):
        fit_scaling_laws(few, {"x": S}, a=A, d=D)
    rising = {"x": (np.array([S, 2 * S, 4 * S]), np.array([0.4, 0.5, 0.6]))}
    with pytest.raises(ValueError, match="bucket 'x': error does not fall .* not a meaningful"):
        fit_scaling_laws(rising, {"x": S}, a=A, d=D)
    with pytest.raises(ValueError, match="samples seen must be positive"):
        single_pool_errors(np.array([S, -1.0]), A, -0.2, 1.0, D, S)


def test_fits_out_of_the_laws_range_are_refused_naming_the_key():
    good = {"a": A, "d": D, "buckets": {"x": {"b": -0.2, "tau": 2.0, "pool_size": S}}}
    fit = fit_from_json(good)  # loss, z and method may be absent
    assert fit.z == Z and np.isnan(fit.loss) and fit.method == "unknown"
    bad = [
        ({"a": -1.0}, "'a' must be a positive number"),
        ({"a": float("nan")}, "'a' must be a positive number"),
        ({"a": True}, "'a' must be a positive number"),
        ({"d": -0.1}, "'d' must be a number >= 0"),
        ({"d": float("inf")}, "'d' must be a number >= 0"),
        ({"z": 0}, "'z' must be a positive number"),
        ({"loss": "low"}, "'loss' must be a number"),
        ({"buckets": {"x": {"b": -0.2, "tau": -1.0, "pool_size": S}}}, "buckets.x.tau must be"),
        ({"buckets": {"x": {"b": -0.2, "tau": float("nan"), "pool_size": S}}}, "buckets.x.tau"),
        ({"buckets": {"x": {"b": 0.0, "tau": 1.0, "pool_size": S}}}, "buckets.x.b must be a neg"),
        ({"buckets": {"x": {"b": -0.2, "tau": 1.0, "pool_size": 0}}}, "buckets.x.pool_size must"),
        ({"buckets": {"x": {"b": -0.2, "tau": 1.0}}}, "buckets.x.pool_size must"),
        ({"buckets": {"x": 3}}, "buckets.x must be an object"),
        ({"buckets": {}}, "'buckets' must map bucket names"),
    ]
    for change, message in bad:
        with pytest.raises(ValueError, match=re.escape(message)):
            fit_from_json({**good, **change})
    with pytest.raises(ValueError, match="expected a JSON object"):
        fit_from_json([good])


def test_budgets_must_be_finite_and_plans_never_hold_non_finite_errors():
    with pytest.raises(ValueError, match="k: must be positive and finite"):
        parse_count(float("inf"), "k")
    with pytest.raises(ValueError, match="k: must be positive and finite"):
        parse_count(float("nan"), "k")
    # a tiny enough a overflows (a S / Z)^b: refused, not planned as inf or NaN.
    buckets = {"x": {"b": -3.0, "tau": 1.0, "pool_size": S}}
    with pytest.raises(ValueError, match="the fit's parameters are out of range"):
        plan(buckets, 1e-300, D, [S])
