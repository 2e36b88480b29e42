"""Compute-aware data-filtering scaling laws (Goyal et al. 2024), pure numpy/scipy.

A quality bucket (pool) of S samples has utility b < 0 (more negative: better data), a
repetition half-life tau (in passes), a shared scale a and floor d. After N samples seen
(K = floor(N / S) full passes, Z = 1e5):

    err(N) = [(a min(S, N) / Z)^b + d] * prod_{e=1..K} (min((e + 1) S, N) / (e S))^(b_e)

with b_e = b 0.5^(e / tau): every repeat of the data is worth less. A mixture of p
equal-size buckets is the same law with S -> p S, tau_i -> p tau_i and b_e the mean over the
buckets of b_i 0.5^(e / (p tau_i)) (the reference's "effective utility" objective).

The reference's "effective data" objective (samples discounted per repeat, then one power
law) is not implemented: its mixture form mixes per-bucket deltas and a running ratio in a
way its paper does not define, so it could not be made to match a specification.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z = 1e5


def _errors(n_seen, a: float, b_of_pass, d: float, pass_size: float, z: float) -> np.ndarray:
    """The law at several budgets; b_of_pass(e) gives the utility of pass e (0: first)."""
    n = np.atleast_1d(np.asarray(n_seen, dtype=np.float64))
    if (n <= 0).any() or not np.isfinite(n).all():
        raise ValueError(f"samples seen must be positive and finite, got {n[n <= 0][:3]}")
    full_passes = (n // pass_size).astype(np.int64)
    first = a * np.minimum(pass_size, n) / z
    error = first ** b_of_pass(np.zeros(1))[0] + d
    most = int(full_passes.max())
    if most >= 1:
        e = np.arange(1, most + 1, dtype=np.float64)
        ratio = np.minimum((e[None, :] + 1) * pass_size, n[:, None]) / (e[None, :] * pass_size)
        # Passes beyond a budget's own K contribute a factor of 1.
        ratio = np.where(e[None, :] <= full_passes[:, None], ratio, 1.0)
        error = error * np.prod(ratio ** b_of_pass(e)[None, :], axis=1)
    return error


def single_pool_errors(
    n_seen, a: float, b: float, tau: float, d: float, pool_size: float, z: float = Z
) -> np.ndarray:
    """Predicted error of training on one bucket, at each budget in `n_seen`."""
    return _errors(n_seen, a, lambda e: b * 0.5 ** (e / tau), d, pool_size, z)


def single_pool_error(
    n_seen: float, a: float, b: float, tau: float, d: float, pool_size: float, z: float = Z
) -> float:
    """Predicted error of training on one bucket for `n_seen` samples."""
    return float(single_pool_errors(n_seen, a, b, tau, d, pool_size, z)[0])


def mixture_errors(
    n_seen, a: float, b: Sequence[float], tau: Sequence[float], d: float, pool_size: float,
    z: float = Z,
) -> np.ndarray:  # fmt: skip
    """Predicted error of training on the union of p equal-size buckets, at each budget."""
    bs = np.asarray(b, dtype=np.float64)
    with np.errstate(over="ignore"):  # a huge tau is an infinite one: no decay
        taus = np.asarray(tau, dtype=np.float64) * len(bs)  # a pass is p times longer

    def b_of_pass(e: np.ndarray) -> np.ndarray:
        return (bs[:, None] * 0.5 ** (e[None, :] / taus[:, None])).mean(axis=0)

    return _errors(n_seen, a, b_of_pass, d, pool_size * len(bs), z)


def mixture_error(
    n_seen: float, a: float, b: Sequence[float], tau: Sequence[float], d: float,
    pool_size: float, z: float = Z,
) -> float:  # fmt: skip
    """Predicted error of training on the union of p equal-size buckets."""
    return float(mixture_errors(n_seen, a, b, tau, d, pool_size, z)[0])


@dataclass
class PlanRow:
    samples_seen: float
    top_m: int
    buckets: list[str]
    predicted_error: float
    best: bool


def plan(
    buckets: dict[str, dict],
    a: float,
    d: float,
    budgets: Sequence[float],
    z: float = Z,
) -> list[PlanRow]:
    """Predicted error of every top-m mixture (buckets sorted by b, best first) at every
    budget; `best` marks the argmin m of each budget (ties: the smaller m)."""
    order = sorted(buckets, key=lambda name: (buckets[name]["b"], name))
    sizes = {buckets[name]["pool_size"] for name in order}
    if len(sizes) != 1:
        raise ValueError(f"the mixture law needs equal-size buckets, got sizes {sorted(sizes)}")
    pool_size = sizes.pop()
    budgets = np.asarray(budgets, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # checked below
        errors = np.stack(
            [
                mixture_errors(
                    budgets,
                    a,
                    [buckets[name]["b"] for name in order[:m]],
                    [buckets[name]["tau"] for name in order[:m]],
                    d,
                    pool_size,
                    z,
                )
                for m in range(1, len(order) + 1)
            ],
            axis=1,
        )  # (budgets, m)
    if not np.isfinite(errors).all():
        i, m = np.argwhere(~np.isfinite(errors))[0]
        raise ValueError(
            f"the law gives error {errors[i, m]} for the top {m + 1} buckets at "
            f"{budgets[i]:.3g} samples seen; the fit's parameters are out of range"
        )
    best = errors.argmin(axis=1)  # the first minimum: the smaller m on ties
    rows = []
    for i, n_seen in enumerate(budgets):
        rows += [
            PlanRow(float(n_seen), m + 1, order[: m + 1], float(errors[i, m]), bool(m == best[i]))
            for m in range(len(order))
        ]
    return rows


@dataclass
class ScalingFit:
    """Shared a and d, per-bucket b and tau (and pool size, fit rmse), the total loss."""

    a: float
    d: float
    buckets: dict[str, dict]
    loss: float
    z: float = Z
    method: str = "least_squares"

    def to_json(self) -> dict:
        return {
            "a": self.a,
            "d": self.d,
            "z": self.z,
            "buckets": self.buckets,
            "loss": self.loss,
            "method": self.method,
        }


def _number(value, key: str, check, wanted: str) -> float:
    """`value` as a float, or a ValueError naming `key` (booleans are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be {wanted}, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and check(number)):
        raise ValueError(f"{key} must be {wanted}, got {value!r}")
    return number


def fit_from_json(data: dict) -> ScalingFit:
    """A fit from fit.json's mapping; a missing, non-numeric or out-of-range key is a
    ValueError naming it: a > 0, d >= 0, z > 0 and per bucket b < 0, tau > 0 and
    pool_size > 0, all finite (a negative or NaN tau, say, would plan nonsense errors).
    `loss`, `z` and `method` may be absent from a hand-written fit."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    a = _number(data.get("a"), "'a'", lambda x: x > 0, "a positive number")
    d = _number(data.get("d"), "'d'", lambda x: x >= 0, "a number >= 0")
    z = _number(data.get("z", Z), "'z'", lambda x: x > 0, "a positive number")
    loss = data.get("loss")
    if loss is not None and (isinstance(loss, bool) or not isinstance(loss, int | float)):
        raise ValueError(f"'loss' must be a number, got {loss!r}")
    buckets = data.get("buckets")
    if not isinstance(buckets, dict) or not buckets:
        raise ValueError("'buckets' must map bucket names to {b, tau, pool_size}")
    wanted = {
        "b": (lambda x: x < 0, "a negative number (more negative: better data)"),
        "tau": (lambda x: x > 0, "a positive number (passes)"),
        "pool_size": (lambda x: x > 0, "a positive number (samples)"),
    }
    for name, bucket in buckets.items():
        if not isinstance(bucket, dict):
            raise ValueError(f"buckets.{name} must be an object {{b, tau, pool_size}}")
        for key, (check, what) in wanted.items():
            _number(bucket.get(key), f"buckets.{name}.{key}", check, what)
    return ScalingFit(
        a, d, buckets, float("nan") if loss is None else float(loss), z,
        str(data.get("method", "unknown")),
    )  # fmt: skip


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kKmMbBtT]?)\s*$")
_UNIT = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def parse_count(value: int | float | str, key: str) -> float:
    """A sample count: 12800000, 1.28e9, "12.8M", "1.28B", "100k" (ValueError naming key)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        count = float(value)
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f"{key}: expected a count like 32M or 1.28B, got {value!r}")
        count = float(match[1]) * _UNIT[match[2].lower()]
    if not (count > 0 and math.isfinite(count)):
        raise ValueError(f"{key}: must be positive and finite, got {value!r}")
    return count


MIN_POINTS = 3
_B_BOUNDS = (-3.0, -1e-6)
_TAU_BOUNDS = (0.05, 1e4)


def fit_scaling_laws(
    observations: dict[str, tuple[np.ndarray, np.ndarray]],
    pool_size: dict[str, float],
    a: float | None = None,
    d: float | None = None,
    z: float = Z,
    starts: int = 8,
    seed: int = 0,
) -> ScalingFit:
    """Fit b and tau per bucket with a shared a and d (each fitted unless given).

    `observations` maps a bucket to (samples seen, error) arrays. Bounded least squares on
    the errors from several starts; the best fit wins. Should no start succeed, the
    reference's grid (b in [-0.5, -0.005], tau in [1, 10]) with a and d fixed is used.
    Raises ValueError for buckets with fewer than 3 points or a fit with b >= 0.
    """
    from scipy.optimize import least_squares

    names = sorted(observations)
    for name in names:
        n_seen, error = observations[name]
        if len(n_seen) < MIN_POINTS:
            raise ValueError(
                f"bucket {name!r}: {len(n_seen)} observations; a fit needs at least "
                f"{MIN_POINTS} (e.g. 2, 4, 6, 8, 10 passes)"
            )
        order = np.argsort(n_seen)
        if error[order[-1]] >= error[order[0]]:
            raise ValueError(
                f"bucket {name!r}: error does not fall from the fewest to the most samples "
                f"seen ({error[order[0]]:.4g} -> {error[order[-1]]:.4g}); the law needs b < 0, "
                "so this is not a meaningful fit"
            )
    errors_all = np.concatenate([observations[n][1] for n in names])
    fit_a, fit_d = a is None, d is None

    def unpack(x):
        i = 0
        a_value = np.exp(x[i]) if fit_a else a
        i += fit_a
        d_value = x[i] if fit_d else d
        i += fit_d
        bs, taus = x[i : i + len(names)], x[i + len(names) :]
        return a_value, d_value, bs, taus

    def residuals(x):
        a_value, d_value, bs, taus = unpack(x)
        out = []
        for j, name in enumerate(names):
            n_seen, error = observations[name]
            predicted = single_pool_errors(
                n_seen, a_value, bs[j], taus[j], d_value, pool_size[name], z
            )
            out.append(predicted - error)
        return np.concatenate(out)

    lower = [np.log(1e-9)] * fit_a + [0.0] * fit_d + [_B_BOUNDS[0]] * len(names)
    lower += [_TAU_BOUNDS[0]] * len(names)
    upper = [np.log(1e9)] * fit_a + [float(errors_all.min())] * fit_d
    upper += [_B_BOUNDS[1]] * len(names) + [_TAU_BOUNDS[1]] * len(names)
    rng = np.random.default_rng(seed)
    best = None
    for start in range(starts):
        x0 = []
        if fit_a:
            x0.append(np.log([0.025, 0.1, 1.0, 10.0][start % 4]))
        if fit_d:
            x0.append(float(errors_all.min()) * rng.uniform(0.0, 0.9))
        x0 += list(rng.uniform(-0.5, -0.01, len(names)))
        x0 += list(np.exp(rng.uniform(np.log(0.5), np.log(20), len(names))))
        try:
            result = least_squares(residuals, x0, bounds=(lower, upper), method="trf")
        except (ValueError, FloatingPointError, OverflowError):
            continue
        if np.isfinite(result.cost) and (best is None or result.cost < best.cost):
            best = result
    if best is not None:
        a_value, d_value, bs, taus = unpack(best.x)
        method = "least_squares"
    else:
        a_value, d_value, bs, taus = _grid_fit(observations, names, pool_size, a, d, z)
        method = "grid"
    buckets = {}
    for j, name in enumerate(names):
        n_seen, error = observations[name]
        predicted = np.asarray(
            [
                single_pool_error(n, a_value, bs[j], taus[j], d_value, pool_size[name], z)
                for n in n_seen
            ]
        )
        if bs[j] >= -2e-6:
            raise ValueError(
                f"bucket {name!r}: fitted b = {bs[j]:.3g} (error does not fall with more data); "
                "not a meaningful fit"
            )
        buckets[name] = {
            "b": float(bs[j]),
            "tau": float(taus[j]),
            "pool_size": float(pool_size[name]),
            "rmse": float(np.sqrt(np.mean((predicted - error) ** 2))),
        }
    loss = float(np.sum([b["rmse"] ** 2 * len(observations[n][0]) for n, b in buckets.items()]))
    return ScalingFit(float(a_value), float(d_value), buckets, loss, z, method)


def _grid_fit(observations, names, pool_size, a, d, z):
    """The reference's fallback: per bucket, the best (b, tau) on a grid; a and d fixed."""
    if a is None or d is None:
        raise ValueError("the grid fallback needs a and d fixed (fit: {a: .., d: ..})")
    grid_b = np.linspace(-0.5, -0.005, 100)
    grid_tau = np.linspace(1, 10, 46)
    bs, taus = [], []
    for name in names:
        n_seen, error = observations[name]
        best = (np.inf, None, None)
        for b in grid_b:
            for tau in grid_tau:
                predicted = single_pool_errors(n_seen, a, b, tau, d, pool_size[name], z)
                loss = float(np.sum((predicted - error) ** 2))
                if loss < best[0]:
                    best = (loss, b, tau)
        bs.append(best[1])
        taus.append(best[2])
    return a, d, np.asarray(bs), np.asarray(taus)
