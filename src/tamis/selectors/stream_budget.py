"""Stream active learning decisions: query each item on arrival, within a budget fraction B.

The strategies of ALGORITHMS.md ("Online (stream-based) active learning"), with
scikit-activeml's semantics (its `skactiveml.stream` budget managers fed one item at a time
are the test oracle: fixed uncertainty, variable uncertainty and BIQF decide identically):

- ``random``: query with probability B.
- ``fixed_uncertainty``: query iff max p <= 1/C + B (1 - 1/C).
- ``variable_uncertainty``: query iff max p < theta; theta shrinks by (1 - s) after a query
  and grows by (1 + s) otherwise.
- ``randomized_variable_uncertainty``: the same against theta * eta, eta ~ N(1, delta).
- ``split``: with probability v a random-sampling step, else a variable-uncertainty step.
- ``biqf``: balanced incremental quantile filter: query iff u >= the (1 - B)-quantile of the
  last w utilities, lowered by (max - min) (B t - queried) / w_tol to catch up on budget.
- ``dbal``: DBALStream: only items that are a new nearest neighbour of some item in a sliding
  window of the last ``window`` embeddings are candidates; they go through randomized
  variable uncertainty on the margin utility, budget estimated as queried / seen.

The five Zliobaite strategies allow a query only while the windowed budget estimate
b_t = u_t / w is below B, with u_t = u_{t-1} (w - 1)/w + queried_t.

Decisions are sequential, so the per-item loops are compiled (numba). All state (counters,
thresholds, windows, the random generator) lives in a `StreamDecider` and round-trips
through JSON, so a stream stopped after any item resumes with identical decisions.
Randomized strategies draw exactly two uniforms per item from a PCG64 generator, so the
generator's position is a function of the item count.

NaN utilities are never queried. As in scikit-activeml they still count as seen items
(budget estimates decay, thresholds move as for a non-query), except in BIQF, where a NaN
stays out of the quantile window (scikit-activeml's window would hold it and block every
query for w items).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from numba import njit

Strategy = Literal[
    "random",
    "fixed_uncertainty",
    "variable_uncertainty",
    "randomized_variable_uncertainty",
    "split",
    "biqf",
    "dbal",
]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
_ZLIOBAITE_MODE = {
    "random": 0,
    "fixed_uncertainty": 1,
    "variable_uncertainty": 2,
    "randomized_variable_uncertainty": 3,
    "split": 4,
}
_RANDOMIZED = {"random", "randomized_variable_uncertainty", "split", "dbal"}
# Scalar state slots.
_T, _QUERIED, _U_T, _THETA = 0, 1, 2, 3


@dataclass
class StreamDecisions:
    """Per item, in arrival order: the utility, whether it was queried, the threshold it was
    compared with, and the budget estimate before the decision."""

    utility: np.ndarray
    queried: np.ndarray
    threshold: np.ndarray
    budget_estimate: np.ndarray

    def __len__(self) -> int:
        return len(self.queried)


def max_probability_utility(probs: np.ndarray) -> np.ndarray:
    """u = 1 - max_y p(y | x)."""
    return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=1)


def margin_utility(probs: np.ndarray) -> np.ndarray:
    """u = 1 - (p_top1 - p_top2), DBALStream's utility."""
    p = np.asarray(probs, dtype=np.float64)
    top2 = np.sort(p, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


class StreamDecider:
    """One stream's strategy, parameters and state; `decide` continues where it stopped."""

    def __init__(
        self,
        strategy: str,
        budget: float,
        *,
        theta: float = 1.0,
        s: float = 0.01,
        w: int = 100,
        delta: float = 1.0,
        v: float = 0.1,
        w_tol: float = 50.0,
        window: int = 100,
        n_classes: int | None = None,
        seed: int | list[int] = 0,
    ):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
        if not 0 < budget <= 1:
            raise ValueError(f"budget must be a fraction in (0, 1], got {budget}")
        for name, value in (("w", w), ("window", window)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if not 0 < s <= 1:
            raise ValueError(f"s must be in (0, 1], got {s}")
        if delta <= 0 or w_tol <= 0 or not 0 < v < 1:
            raise ValueError("delta and w_tol must be > 0 and v in (0, 1)")
        self.strategy = strategy
        self.params = {
            "budget": float(budget),
            "theta": float(theta),
            "s": float(s),
            "w": int(w),
            "delta": float(delta),
            "v": float(v),
            "w_tol": float(w_tol),
            "window": int(window),
            "n_classes": n_classes,
            "seed": seed if isinstance(seed, int) else [int(k) for k in seed],
        }
        self.scalars = np.array([0.0, 0.0, 0.0, float(theta)])
        self.rng_state: dict | None = None
        if strategy in _RANDOMIZED:
            self.rng_state = np.random.Generator(np.random.PCG64(seed)).bit_generator.state
        self.window_values = np.zeros(int(w))  # biqf: utilities in arrival order (a ring)
        self.window_sorted = np.zeros(int(w))
        self.window_count = 0
        self.window_head = 0
        self.embeddings: np.ndarray | None = None  # dbal: (window, D) ring
        self.min_distance = np.full(int(window), np.inf)

    @property
    def seen(self) -> int:
        return int(self.scalars[_T])

    @property
    def queried(self) -> int:
        return int(self.scalars[_QUERIED])

    def decide(
        self,
        utility: np.ndarray | None = None,
        probabilities: np.ndarray | None = None,
        embeddings: np.ndarray | None = None,
    ) -> StreamDecisions:
        """Decide for the next items, in arrival order: from their utilities, or from class
        probabilities (utility 1 - max p; for dbal the margin). dbal also needs embeddings."""
        p = self.params
        if utility is None:
            if probabilities is None:
                raise ValueError("give utilities or class probabilities")
            probabilities = np.asarray(probabilities, dtype=np.float64)
            if self.strategy == "fixed_uncertainty" and p["n_classes"] is None:
                p["n_classes"] = probabilities.shape[1]
            score = margin_utility if self.strategy == "dbal" else max_probability_utility
            utility = score(probabilities)
        utility = np.ascontiguousarray(utility, dtype=np.float64).reshape(-1)
        n = len(utility)
        queried = np.zeros(n, dtype=np.bool_)
        threshold = np.full(n, np.nan)
        estimate = np.zeros(n)
        uniforms = self._uniforms(n)
        if self.strategy in _ZLIOBAITE_MODE:
            classes = p["n_classes"] or 0
            if self.strategy == "fixed_uncertainty" and not classes:
                raise ValueError("fixed_uncertainty needs n_classes (or class probabilities)")
            _zliobaite(
                _ZLIOBAITE_MODE[self.strategy], utility, p["budget"], p["w"], p["s"],
                p["delta"], p["v"], classes, uniforms, self.scalars,
                queried, threshold, estimate,
            )  # fmt: skip
        elif self.strategy == "biqf":
            head_count = np.array([self.window_head, self.window_count], dtype=np.int64)
            _biqf(
                utility, p["budget"], p["w_tol"], self.window_values, self.window_sorted,
                head_count, self.scalars, queried, threshold, estimate,
            )  # fmt: skip
            self.window_head, self.window_count = int(head_count[0]), int(head_count[1])
        else:
            if embeddings is None:
                raise ValueError("dbal needs the items' embeddings")
            embeddings = np.ascontiguousarray(embeddings, dtype=np.float64)
            if embeddings.ndim != 2 or len(embeddings) != n:
                raise ValueError(f"expected ({n}, dim) embeddings, got {embeddings.shape}")
            if self.embeddings is None:
                self.embeddings = np.zeros((p["window"], embeddings.shape[1]))
            elif self.embeddings.shape[1] != embeddings.shape[1]:
                raise ValueError(
                    f"embedding dimension {embeddings.shape[1]} != the stream's "
                    f"{self.embeddings.shape[1]}"
                )
            head_count = np.array([self.window_head, self.window_count], dtype=np.int64)
            _dbal(
                utility, embeddings, p["budget"], p["s"], p["delta"], uniforms,
                self.embeddings, self.min_distance, head_count, self.scalars,
                queried, threshold, estimate,
            )  # fmt: skip
            self.window_head, self.window_count = int(head_count[0]), int(head_count[1])
        return StreamDecisions(utility, queried, threshold, estimate)

    def _uniforms(self, n: int) -> np.ndarray:
        """Two uniforms per item (drawn whether used or not: the generator's position is a
        function of the item count, so resuming needs no replay)."""
        if self.rng_state is None:
            return np.zeros((n, 2))
        generator = np.random.Generator(np.random.PCG64())
        generator.bit_generator.state = self.rng_state
        values = generator.random((n, 2))
        self.rng_state = generator.bit_generator.state
        return values

    # -- state -----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything needed to continue the stream, as JSON-able values."""
        return {
            "strategy": self.strategy,
            "params": dict(self.params),
            "seen": self.seen,
            "queried_count": self.queried,
            "u_t": float(self.scalars[_U_T]),
            "theta": float(self.scalars[_THETA]),
            "rng": _jsonable(self.rng_state),
            "window_values": self.window_values.tolist(),
            "window_sorted": self.window_sorted.tolist(),
            "window_count": self.window_count,
            "window_head": self.window_head,
            "embeddings": None if self.embeddings is None else self.embeddings.tolist(),
            "min_distance": [None if math.isinf(d) else d for d in self.min_distance.tolist()],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> StreamDecider:
        """The decider `state()` described; a state it could not have written (a missing
        key, a wrong type, a window of another size) is a ValueError naming the key."""
        check_state(state)
        params = dict(state["params"])
        budget = params.pop("budget")
        try:
            decider = cls(state["strategy"], budget, **params)
        except ValueError as err:
            raise ValueError(f"params: {err}") from None
        decider.scalars[:] = [state["seen"], state["queried_count"], state["u_t"], state["theta"]]
        decider.rng_state = state["rng"]
        decider.window_values = np.asarray(state["window_values"], dtype=np.float64)
        decider.window_sorted = np.asarray(state["window_sorted"], dtype=np.float64)
        decider.window_count = int(state["window_count"])
        decider.window_head = int(state["window_head"])
        if state["embeddings"] is not None:
            decider.embeddings = np.asarray(state["embeddings"], dtype=np.float64)
        decider.min_distance = np.asarray(
            [np.inf if d is None else d for d in state["min_distance"]], dtype=np.float64
        )
        return decider


STATE_KEYS = (
    "strategy", "params", "seen", "queried_count", "u_t", "theta", "rng", "window_values",
    "window_sorted", "window_count", "window_head", "embeddings", "min_distance",
)  # fmt: skip
PARAM_KEYS = ("budget", "theta", "s", "w", "delta", "v", "w_tol", "window", "n_classes", "seed")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numbers(state: dict, key: str, length: int, allow_none: bool = False) -> list:
    values = state[key]
    if not isinstance(values, list) or len(values) != length:
        got = f"{len(values)} values" if isinstance(values, list) else repr(values)[:60]
        raise ValueError(f"{key}: must be a list of {length} numbers, got {got}")
    for i, v in enumerate(values):
        if not (_is_number(v) or (allow_none and v is None)):
            raise ValueError(f"{key}[{i}]: must be a number, got {v!r}")
    return values


def check_state(state: Any) -> None:
    """Raise a ValueError naming the key unless `state` is one `StreamDecider.state()` can
    have written: every key present with its type, the windows as long as the parameters
    say, counters within them, and a PCG64 generator state for the randomized strategies.
    (Parameter ranges are checked when the decider is built.)"""
    if not isinstance(state, dict):
        raise ValueError(f"expected a state object, got {type(state).__name__}")
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise ValueError(f"missing key {missing[0]!r} (a state has {', '.join(STATE_KEYS)})")
    strategy = state["strategy"]
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    params = state["params"]
    if not isinstance(params, dict):
        raise ValueError(f"params: expected an object, got {params!r}")
    for key in PARAM_KEYS:
        if key not in params:
            raise ValueError(f"params: missing key {key!r}")
    unknown = sorted(set(params) - set(PARAM_KEYS))
    if unknown:
        raise ValueError(f"params: unknown key {unknown[0]!r}")
    for key in ("budget", "theta", "s", "delta", "v", "w_tol"):
        if not (_is_number(params[key]) and math.isfinite(params[key])):
            raise ValueError(f"params.{key}: must be a number, got {params[key]!r}")
    for key in ("w", "window"):
        if not (_is_int(params[key]) and params[key] >= 1):
            raise ValueError(f"params.{key}: must be a positive integer, got {params[key]!r}")
    n_classes = params["n_classes"]
    if n_classes is not None and not (_is_int(n_classes) and n_classes >= 1):
        raise ValueError(f"params.n_classes: must be null or a positive integer, got {n_classes!r}")
    seed = params["seed"]
    seeds = seed if isinstance(seed, list) else [seed]
    if not seeds or not all(_is_int(k) and k >= 0 for k in seeds):
        raise ValueError(
            f"params.seed: must be a non-negative integer or a list of them, got {seed!r}"
        )
    for key in ("seen", "queried_count"):
        if not (_is_int(state[key]) and state[key] >= 0):
            raise ValueError(f"{key}: must be a non-negative integer, got {state[key]!r}")
    if state["queried_count"] > state["seen"]:
        raise ValueError(
            f"queried_count: {state['queried_count']} is more than seen ({state['seen']})"
        )
    for key in ("u_t", "theta"):
        if not (_is_number(state[key]) and math.isfinite(state[key])):
            raise ValueError(f"{key}: must be a finite number, got {state[key]!r}")
    if state["u_t"] < 0:  # a decayed count of queries
        raise ValueError(f"u_t: must be >= 0, got {state['u_t']!r}")
    rng = state["rng"]
    if rng is None:
        if strategy in _RANDOMIZED:
            raise ValueError(f"rng: {strategy} needs its random generator's state, got null")
    else:
        try:
            np.random.PCG64().state = rng
        except (ValueError, TypeError, KeyError, AttributeError):
            raise ValueError(f"rng: not a PCG64 generator state ({repr(rng)[:60]})") from None
    w, window = params["w"], params["window"]
    _numbers(state, "window_values", w)
    sorted_values = _numbers(state, "window_sorted", w)
    size = window if strategy == "dbal" else w  # the ring the counters index
    count, head = state["window_count"], state["window_head"]
    if not (_is_int(count) and 0 <= count <= size):
        raise ValueError(f"window_count: must be an integer in [0, {size}], got {count!r}")
    if not (_is_int(head) and 0 <= head < size):
        raise ValueError(f"window_head: must be an integer in [0, {size - 1}], got {head!r}")
    if strategy == "biqf" and any(
        not sorted_values[i] <= sorted_values[i + 1] for i in range(count - 1)
    ):
        raise ValueError(f"window_sorted: its first {count} values are not in ascending order")
    distances = _numbers(state, "min_distance", window, allow_none=True)
    if any(d is not None and not d >= 0 for d in distances):
        raise ValueError("min_distance: distances must be >= 0 (null: none yet)")
    embeddings = state["embeddings"]
    if embeddings is None:
        if strategy == "dbal" and count:
            raise ValueError(f"embeddings: dbal's window holds {count} items, got null")
        return
    if not isinstance(embeddings, list) or len(embeddings) != window:
        raise ValueError(f"embeddings: must be null or a list of {window} vectors")
    dim = len(embeddings[0]) if isinstance(embeddings[0], list) else 0
    for i, vector in enumerate(embeddings):  # the shape here, the values at once below
        if not isinstance(vector, list) or len(vector) != dim or dim == 0:
            raise ValueError(f"embeddings[{i}]: must be a list of {dim or 'some'} numbers")
    try:
        array = np.asarray(embeddings)
    except ValueError:  # nested deeper than vectors of numbers
        array = np.asarray([])
    if array.dtype.kind not in "fiu" or array.ndim != 2:
        raise ValueError("embeddings: must be vectors of numbers")
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if len(bad):
        raise ValueError(f"embeddings[{int(bad[0])}]: must hold finite numbers")


def _jsonable(value):
    """numpy's generator state holds Python ints and dicts only: JSON keeps them exactly."""
    return None if value is None else dict(value)


# ---------------------------------------------------------------------------------------------
# Compiled per-item loops. Arrays are updated in place; scalars = [t, queried, u_t, theta].


@njit(cache=True)
def _normal(u1: float, u2: float) -> float:
    """A standard normal from two uniforms in [0, 1) (Box-Muller)."""
    return math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(2.0 * math.pi * u2)


@njit(cache=True)
def _zliobaite(
    mode, utility, budget, w, s, delta, v, n_classes, uniforms, scalars,
    queried, threshold, estimate,
):  # fmt: skip
    decay = (w - 1) / w
    u_t = scalars[2]
    theta = scalars[3]
    fixed_theta = 0.0
    if n_classes > 0:
        fixed_theta = 1 / n_classes + budget * (1 - 1 / n_classes)
    for i in range(len(utility)):
        confidence = 1 - utility[i]
        is_nan = math.isnan(utility[i])
        estimate[i] = u_t / w
        sample = False
        if u_t / w < budget:
            if mode == 0:  # random
                threshold[i] = budget
                sample = uniforms[i, 0] <= budget and not is_nan
            elif mode == 1:  # fixed uncertainty
                threshold[i] = fixed_theta
                sample = confidence <= fixed_theta
            elif mode == 4 and v > uniforms[i, 0]:  # split: a random-sampling step
                threshold[i] = budget
                sample = uniforms[i, 1] <= budget and not is_nan
            else:  # variable uncertainty, randomized or not
                compared = theta
                if mode == 3:
                    compared = theta * (1.0 + delta * _normal(uniforms[i, 0], uniforms[i, 1]))
                threshold[i] = compared
                sample = confidence < compared
                if sample:
                    theta *= 1 - s
                else:
                    theta *= 1 + s
        queried[i] = sample
        u_t = u_t * decay + sample
        scalars[0] += 1
        scalars[1] += sample
    scalars[2] = u_t
    scalars[3] = theta


@njit(cache=True)
def _linear_quantile(sorted_values, count, q):
    """numpy.quantile(values, q) ('linear'), bit for bit, on an ascending array."""
    virtual = (count - 1) * q
    if virtual >= count - 1:
        return sorted_values[count - 1]
    if virtual < 0:
        return sorted_values[0]
    previous = math.floor(virtual)
    gamma = virtual - previous
    a = sorted_values[int(previous)]
    b = sorted_values[int(previous) + 1]
    diff = b - a
    if gamma >= 0.5:
        return b - diff * (1 - gamma)
    return a + diff * gamma


@njit(cache=True)
def _biqf(
    utility, budget, w_tol, ring, sorted_values, head_count, scalars, queried, threshold,
    estimate,
):  # fmt: skip
    w = len(ring)
    head, count = head_count[0], head_count[1]
    for i in range(len(utility)):
        u = utility[i]
        scalars[0] += 1
        estimate[i] = scalars[1] / scalars[0]
        if math.isnan(u):
            continue
        if count == w:  # the oldest value leaves the window: shift the rest down over it
            j = np.searchsorted(sorted_values[:count], ring[head])
            for k in range(j, count - 1):
                sorted_values[k] = sorted_values[k + 1]
            count -= 1
        ring[head] = u
        head = (head + 1) % w
        j = np.searchsorted(sorted_values[:count], u)
        for k in range(count, j, -1):  # make room at j, from the top down
            sorted_values[k] = sorted_values[k - 1]
        sorted_values[j] = u
        count += 1
        theta = _linear_quantile(sorted_values, count, 1 - budget)
        spread = sorted_values[count - 1] - sorted_values[0]
        acquisitions_left = budget * scalars[0] - scalars[1]
        balanced = theta - (spread * (acquisitions_left / w_tol))
        threshold[i] = balanced
        if u >= balanced:
            queried[i] = True
            scalars[1] += 1
    head_count[0], head_count[1] = head, count


@njit(cache=True)
def _dbal(
    utility, embeddings, budget, s, delta, uniforms, window, min_distance, head_count,
    scalars, queried, threshold, estimate,
):  # fmt: skip
    size = window.shape[0]
    head, count = head_count[0], head_count[1]
    theta = scalars[3]
    for i in range(len(utility)):
        # Local density factor: window items this one is a new nearest neighbour of.
        new_neighbour_of = 0
        nearest = np.inf
        for k in range(count):
            slot = (head - count + k) % size
            total = 0.0
            for d in range(embeddings.shape[1]):
                diff = window[slot, d] - embeddings[i, d]
                total += diff * diff
            distance = math.sqrt(total)
            if distance < min_distance[slot]:
                min_distance[slot] = distance
                new_neighbour_of += 1
            if distance < nearest:
                nearest = distance
        window[head] = embeddings[i]
        min_distance[head] = nearest
        head = (head + 1) % size
        count = min(count + 1, size)
        # Not dense: treated as a NaN utility (seen, never queried), as DBALStream does.
        u = utility[i] if new_neighbour_of > 0 else np.nan
        scalars[0] += 1
        estimate[i] = scalars[1] / scalars[0]
        sample = False
        if budget > scalars[1] / scalars[0]:
            compared = theta * (1.0 + delta * _normal(uniforms[i, 0], uniforms[i, 1]))
            threshold[i] = compared
            sample = (1 - u) < compared
            if sample:
                theta *= 1 - s
            else:
                theta *= 1 + s
        queried[i] = sample
        scalars[1] += sample
    scalars[3] = theta
    head_count[0], head_count[1] = head, count
