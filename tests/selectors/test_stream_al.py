"""Stream strategies: scikit-activeml's decisions item for item, budgets kept, state resumable."""

import json

import numpy as np
import pytest
from skactiveml.stream.budgetmanager import (
    BalancedIncrementalQuantileFilter,
    FixedUncertaintyBudgetManager,
    VariableUncertaintyBudgetManager,
)

from tamis.selectors.stream_budget import (
    PARAM_KEYS,
    STATE_KEYS,
    STRATEGIES,
    StreamDecider,
    check_state,
    margin_utility,
    max_probability_utility,
)


def oracle(manager, utilities: np.ndarray, biqf: bool = False) -> np.ndarray:
    """scikit-activeml fed one item at a time, as a stream consumer would."""
    queried = []
    for u in utilities:
        picked = manager.query_by_utility(np.array([u]))
        if biqf:
            manager.update(np.array([[0.0]]), picked, utilities=np.array([u]))
        else:
            manager.update(np.array([[0.0]]), picked)
        queried.append(len(picked) > 0)
    return np.asarray(queried)


def random_utilities(seed: int, n: int = 2000) -> np.ndarray:
    """1 - max p over 4 classes: mostly confident rows, a third nearly uniform."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), rng.integers(0, 4, n)] += rng.uniform(0, 4, n)
    logits[rng.random(n) < 0.3] *= 0.05
    p = np.exp(logits)
    return max_probability_utility(p / p.sum(axis=1, keepdims=True))


@pytest.fixture(scope="module")
def real_utilities(default_encoder, bbc_records):
    """1 - max p of a nearest-centroid classifier on the default embeddings: 120 BBC
    articles per topic in a seeded arrival order, centroids from every 10th of them."""
    by_topic: dict[str, list] = {}
    for r in bbc_records:
        by_topic.setdefault(r["topic"], []).append(r)
    topics = sorted(by_topic)
    records = [r for t in topics for r in by_topic[t][:120]]
    records = [records[i] for i in np.random.default_rng(0).permutation(len(records))]
    vectors = default_encoder.encode([r["text"][:400] for r in records]).embeddings
    label = np.array([topics.index(r["topic"]) for r in records])
    train = np.arange(0, len(records), 10)
    centroids = np.stack([vectors[train[label[train] == c]].mean(axis=0) for c in range(5)])
    logits = 10 * vectors @ centroids.T
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    utilities = max_probability_utility(p / p.sum(axis=1, keepdims=True))
    assert np.isfinite(utilities).all()
    return utilities


ORACLES = {
    "fixed_uncertainty": lambda budget, classes=4: FixedUncertaintyBudgetManager(
        list(range(classes)), budget=budget
    ),
    "variable_uncertainty": lambda budget: VariableUncertaintyBudgetManager(budget=budget),
    "biqf": lambda budget: BalancedIncrementalQuantileFilter(budget=budget),
}


@pytest.mark.parametrize("strategy", list(ORACLES))
@pytest.mark.parametrize("budget", [0.02, 0.1, 0.3])
@pytest.mark.parametrize("seed", [0, 1])
def test_deterministic_strategies_decide_as_scikit_activeml_on_random_utilities(
    strategy, budget, seed
):
    u = random_utilities(seed)
    expected = oracle(ORACLES[strategy](budget), u, biqf=strategy == "biqf")
    got = StreamDecider(strategy, budget, n_classes=4).decide(utility=u)
    np.testing.assert_array_equal(got.queried, expected)
    assert 0 < expected.sum() < len(u)  # the comparison is not vacuous


@pytest.mark.parametrize("strategy", list(ORACLES))
def test_deterministic_strategies_decide_as_scikit_activeml_on_real_utilities(
    strategy, real_utilities
):
    budget = 0.3 if strategy == "fixed_uncertainty" else 0.1  # fixed: max p <= 0.44
    manager = ORACLES[strategy](budget, 5) if strategy == "fixed_uncertainty" else None
    manager = manager or ORACLES[strategy](budget)
    expected = oracle(manager, real_utilities, biqf=strategy == "biqf")
    got = StreamDecider(strategy, budget, n_classes=5).decide(utility=real_utilities)
    np.testing.assert_array_equal(got.queried, expected)
    assert 0 < expected.sum() < len(real_utilities)


def test_probabilities_give_the_reference_utilities():
    p = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
    np.testing.assert_allclose(max_probability_utility(p), [0.3, 0.6])
    np.testing.assert_allclose(margin_utility(p), [0.5, 0.95])
    u = random_utilities(3, 50)
    by_probs = StreamDecider("variable_uncertainty", 0.2).decide(
        probabilities=np.stack([1 - u, u], axis=1)
    )
    assert (
        by_probs.queried.tolist()
        == StreamDecider("variable_uncertainty", 0.2)
        .decide(utility=1 - np.maximum(1 - u, u))
        .queried.tolist()
    )


@pytest.mark.parametrize(
    "strategy", ["random", "variable_uncertainty", "randomized_variable_uncertainty", "split"]
)
@pytest.mark.parametrize("budget", [0.05, 0.2])
def test_windowed_budget_never_exceeds_b_plus_one_over_w(strategy, budget):
    u = np.random.default_rng(7).uniform(size=20_000) ** 0.3  # mostly uncertain: eager
    w = 100
    got = StreamDecider(strategy, budget, w=w, seed=3).decide(utility=u)
    # b_t after each decision: the estimate before it, decayed, plus the query.
    after = (got.budget_estimate * w * (w - 1) / w + got.queried) / w
    assert after.max() <= budget + 1 / w + 1e-12
    assert abs(got.queried.mean() - budget) < 0.2 * budget  # it does spend the budget


def test_dbal_spends_at_most_its_budget_on_average():
    rng = np.random.default_rng(2)
    u = rng.uniform(size=5000)
    vectors = rng.normal(size=(5000, 8))
    got = StreamDecider("dbal", 0.1, window=50, seed=1).decide(utility=u, embeddings=vectors)
    seen = np.arange(1, 5001)
    assert np.all(np.cumsum(got.queried) / seen <= 0.1 + 1 / seen + 1e-12)
    assert got.queried.sum() > 0.05 * 5000


@pytest.mark.parametrize("strategy", ["random", "randomized_variable_uncertainty", "split", "dbal"])
def test_randomized_strategies_are_reproducible_with_a_seed(strategy):
    u = random_utilities(5)
    vectors = np.random.default_rng(0).normal(size=(len(u), 4))
    runs = [
        StreamDecider(strategy, 0.1, seed=seed).decide(utility=u, embeddings=vectors).queried
        for seed in (11, 11, 12)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_stop_and_resume_anywhere_gives_identical_decisions(strategy):
    u = random_utilities(9, 3000)
    u[[10, 500]] = np.nan  # never queried, still seen
    vectors = np.random.default_rng(4).normal(size=(len(u), 6))
    whole = StreamDecider(strategy, 0.1, n_classes=4, window=40, seed=5).decide(
        utility=u, embeddings=vectors
    )
    decider = StreamDecider(strategy, 0.1, n_classes=4, window=40, seed=5)
    parts = []
    for lo, hi in [(0, 1), (1, 777), (777, 778), (778, 3000)]:
        decider = StreamDecider.from_state(json.loads(json.dumps(decider.state())))
        parts.append(decider.decide(utility=u[lo:hi], embeddings=vectors[lo:hi]).queried)
    np.testing.assert_array_equal(np.concatenate(parts), whole.queried)
    assert not whole.queried[[10, 500]].any()
    assert decider.seen == 3000 and decider.queried == whole.queried.sum()


def test_bad_parameters_fail_clearly():
    with pytest.raises(ValueError, match="strategy must be one of"):
        StreamDecider("uncertainty", 0.1)
    with pytest.raises(ValueError, match=r"budget must be a fraction in \(0, 1\]"):
        StreamDecider("biqf", 5)
    with pytest.raises(ValueError, match="fixed_uncertainty needs n_classes"):
        StreamDecider("fixed_uncertainty", 0.1).decide(utility=np.array([0.5]))
    with pytest.raises(ValueError, match="dbal needs the items' embeddings"):
        StreamDecider("dbal", 0.1).decide(utility=np.array([0.5]))
    with pytest.raises(ValueError, match="w must be a positive integer"):
        StreamDecider("variable_uncertainty", 0.1, w=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_states_are_checked_key_by_key_before_resuming(strategy):
    u = random_utilities(3, 300)
    vectors = np.random.default_rng(2).normal(size=(len(u), 5))
    decider = StreamDecider(strategy, 0.1, n_classes=3, window=20, seed=[1, 2])
    decider.decide(utility=u, embeddings=vectors)
    state = json.loads(json.dumps(decider.state()))
    check_state(state)  # what state() writes passes
    for key in STATE_KEYS:
        with pytest.raises(ValueError, match=f"missing key '{key}'"):
            StreamDecider.from_state({k: v for k, v in state.items() if k != key})
    for key in PARAM_KEYS:
        params = {k: v for k, v in state["params"].items() if k != key}
        with pytest.raises(ValueError, match=f"params: missing key '{key}'"):
            check_state({**state, "params": params})
    w = state["params"]["w"]
    size = 20 if strategy == "dbal" else w
    for change, message in [
        ({"seen": 1.5}, "seen: must be a non-negative integer"),
        ({"queried_count": True}, "queried_count: must be a non-negative integer"),
        ({"u_t": float("inf")}, "u_t: must be a finite number"),
        ({"u_t": -1.0}, "u_t: must be >= 0"),
        ({"window_values": [0.0] * (w + 1)}, f"window_values: must be a list of {w} numbers"),
        ({"window_sorted": ["0"] * w}, r"window_sorted\[0\]: must be a number"),
        ({"window_head": size}, "window_head: must be an integer in"),
        ({"min_distance": [0.0] * 19}, "min_distance: must be a list of 20 numbers"),
        ({"params": {**state["params"], "seed": "7"}}, "params.seed: must be"),
        ({"params": {**state["params"], "n_classes": 0}}, "params.n_classes: must be"),
        ({"params": {**state["params"], "s": 2.0}}, r"params: s must be in \(0, 1\]"),
        ({"rng": {"bit_generator": "MT19937"}}, "rng: not a PCG64 generator state"),
        ({"strategy": None}, "strategy: must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            StreamDecider.from_state({**state, **change})
    with pytest.raises(ValueError, match="expected a state object, got list"):
        check_state([state])
