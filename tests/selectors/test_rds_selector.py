"""The RDS+ selector: query round robin, exclusions, registry, budgets, random baseline."""

import numpy as np
import pytest

from tamis.config import ConfigError
from tamis.selectors import make_selector
from tamis.selectors.base import SelectionInputs, parse_budget
from tamis.selectors.rds import top_per_query


def normalised(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def inputs_for(pool, queries, excluded=None, block=50):
    return SelectionInputs(
        ids=[f"p{i}" for i in range(len(pool))],
        blocks=lambda: (pool[i : i + block] for i in range(0, len(pool), block)),
        dim=pool.shape[1],
        queries=queries,
        excluded=excluded,
    )


def brute_force_query_round_robin(pool, queries, budget, excluded=()):
    """get_top_influences.py's way: full per-query sorted lists, pop in turns."""
    sims = queries.astype(np.float64) @ pool.T.astype(np.float64)
    lists = [
        [
            i
            for i in sorted(range(len(pool)), key=lambda i, q=q: (-sims[q, i], i))
            if i not in excluded
        ]
        for q in range(len(queries))
    ]
    picks, taken, turn = [], set(), 0
    while len(picks) < budget:
        for q, order in enumerate(lists):
            if len(picks) == budget:
                break
            item = order[turn]
            if item not in taken:
                taken.add(item)
                picks.append((item, q))
        turn += 1
    return picks


@pytest.mark.parametrize("excluded", [None, np.array([0, 5, 17, 99])])
def test_query_round_robin_equals_brute_force(excluded):
    rng = np.random.default_rng(3)
    pool = normalised(rng, 300, 12)
    # Similar queries so their lists overlap and turns are used up on taken items.
    base = normalised(rng, 1, 12)
    tech = base + 0.3 * normalised(rng, 4, 12)
    sport = normalised(rng, 3, 12)
    selector = make_selector("rds", {"query_round_robin": True})
    selection = selector.select(
        inputs_for(pool, {"tech": tech, "sport": sport}, excluded), 90, seed=0
    )
    all_queries = np.concatenate([tech, sport])
    want = brute_force_query_round_robin(
        pool, all_queries, 90, set() if excluded is None else set(excluded.tolist())
    )
    assert list(zip(selection.index.tolist(), strict=True)) == [(i,) for i, _ in want]
    tasks = ["tech"] * 4 + ["sport"] * 3
    assert selection.columns["task"] == [tasks[q] for _, q in want]
    assert selection.columns["query"].tolist() == [q if q < 4 else q - 4 for _, q in want]
    assert selection.ids == [f"p{i}" for i, _ in want]


def test_top_per_query_keeps_exact_lists_across_blocks():
    rng = np.random.default_rng(5)
    pool = np.round(normalised(rng, 200, 3), 1)  # coarse: many ties across blocks
    queries = normalised(rng, 4, 3)
    blocks = [pool[i : i + 30] for i in range(0, 200, 30)]
    index, score = top_per_query(blocks, queries, 25)
    sims = queries @ pool.T
    for q in range(4):
        want = sorted(range(200), key=lambda i: (-sims[q, i], i))[:25]
        assert index[q].tolist() == want
        np.testing.assert_allclose(score[q], sims[q, want], atol=1e-6)


def test_task_round_robin_respects_exclusions():
    rng = np.random.default_rng(9)
    pool = normalised(rng, 120, 8)
    queries = {"a": normalised(rng, 2, 8), "b": normalised(rng, 2, 8)}
    full = make_selector("rds", {}).select(inputs_for(pool, queries), 20, seed=0)
    excluded = full.index[:5]
    again = make_selector("rds", {}).select(inputs_for(pool, queries, excluded), 20, seed=0)
    assert not set(excluded.tolist()) & set(again.index.tolist())
    assert len(again) == 20 and len(set(again.index.tolist())) == 20


def test_random_selector_is_seeded_and_respects_exclusions():
    pool = np.zeros((50, 2), dtype=np.float32)
    inputs = inputs_for(pool, {}, excluded=np.arange(10))
    first = make_selector("random", {}).select(inputs, 20, seed=1)
    again = make_selector("random", {}).select(inputs, 20, seed=1)
    other = make_selector("random", {}).select(inputs, 20, seed=2)
    assert first.ids == again.ids != other.ids
    assert min(first.index) >= 10 and len(set(first.ids)) == 20
    table = first.to_table()
    assert table.column_names == ["id", "rank", "score", "weight", "selector"]
    assert table.column("rank").to_pylist() == list(range(20))
    assert set(table.column("weight").to_pylist()) == {1.0}


def test_budgets():
    assert parse_budget(200, 1000) == 200
    assert parse_budget("10%", 2215) == 222
    assert parse_budget(0.5, 10) == 5
    with pytest.raises(ConfigError, match="larger than the pool"):
        parse_budget(300, 200)
    with pytest.raises(ConfigError, match="expected a count or 'N%'"):
        parse_budget("lots", 10)
    with pytest.raises(ConfigError, match=r"a fraction must be in \(0, 1\]"):
        parse_budget(1.5, 10)


def test_selector_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="selection.selector: unknown selector 'rdss'"):
        make_selector("rdss", {})
    with pytest.raises(ConfigError, match="selection.params.aggregation: expected one of"):
        make_selector("rds", {"aggregation": "median"})
