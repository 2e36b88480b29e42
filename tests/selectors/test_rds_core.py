"""RDS+ core against a brute-force implementation written plainly here."""

import numpy as np
import pytest

from tamis.selectors.rds import max_similarity_per_task, round_robin, top, top_k_indices


def task_scores(pool, tasks, aggregation):
    per_task = []
    for queries in tasks:
        sims = queries.astype(np.float64) @ pool.T.astype(np.float64)
        per_task.append(sims.max(axis=0) if aggregation == "max" else sims.mean(axis=0))
    return per_task


def brute_force_reference(scores, budget):
    """The reference script's round robin (get_top_aggregated_influences.py, minmax), written
    as it does it: per-task lists sorted by score (stable: ties keep pool order), each task
    in turn pops its first item; the picks are a dict in insertion order whose value is the
    min of the popped scores."""
    lists = [sorted(enumerate(row.tolist()), key=lambda x: x[1], reverse=True) for row in scores]
    picked: dict[int, float] = {}
    task_of: dict[int, int] = {}
    while len(picked) < min(budget, scores.shape[1]):
        for t in range(len(lists)):
            if len(picked) >= min(budget, scores.shape[1]):
                break
            idx, score = lists[t].pop(0)
            picked[idx] = min(score, picked.get(idx, float("inf")))
            task_of.setdefault(idx, t)
    return [(i, task_of[i], s) for i, s in picked.items()]


def brute_force(pool, tasks, aggregation, budget):
    """The balanced round robin: full (queries x N) score matrices, full sorts, a Python
    loop; each task takes its best item not yet taken."""
    per_task = task_scores(pool, tasks, aggregation)
    lists = [sorted(range(len(pool)), key=lambda i, s=s: (-s[i], i)) for s in per_task]
    taken, picks = set(), []
    pointers = [0] * len(tasks)
    while len(picks) < min(budget, len(pool)):
        for t, order in enumerate(lists):
            if len(picks) == min(budget, len(pool)):
                break
            while order[pointers[t]] in taken:
                pointers[t] += 1
            taken.add(order[pointers[t]])
            picks.append((order[pointers[t]], t))
    return picks, np.array(per_task)


def normalised(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("aggregation", ["max", "mean"])
@pytest.mark.parametrize("n_tasks", [1, 3])
def test_round_robin_equals_brute_force(aggregation, n_tasks):
    rng = np.random.default_rng(n_tasks)
    pool = normalised(rng, 500, 16)
    tasks = [normalised(rng, rng.integers(1, 6), 16) for _ in range(n_tasks)]
    blocks = [pool[i : i + 64] for i in range(0, 500, 64)]
    scores = max_similarity_per_task(blocks, tasks, aggregation)
    want, want_scores = brute_force(pool, tasks, aggregation, budget=120)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    got = round_robin(scores, 120, balanced=True)
    assert list(zip(got.index.tolist(), got.task.tolist(), strict=True)) == want
    np.testing.assert_array_equal(got.score, scores[got.task, got.index])
    reference = round_robin(scores, 120)
    want = brute_force_reference(scores, 120)
    assert list(zip(reference.index.tolist(), reference.task.tolist(), strict=True)) == [
        (i, t) for i, t, _ in want
    ]
    np.testing.assert_array_equal(reference.score, np.float32([s for _, _, s in want]))


def test_ties_and_overlaps_go_to_the_lower_position():
    # Coarse values make many exact ties; tasks share their favourite items.
    rng = np.random.default_rng(7)
    pool = np.round(rng.normal(size=(300, 4)), 0).astype(np.float32)
    tasks = [pool[[3, 5]], pool[[3]], pool[[8, 9, 10]]]
    scores = max_similarity_per_task([pool], tasks, "max")
    want, _ = brute_force(pool, tasks, "max", budget=299)
    got = round_robin(scores, 299, balanced=True)
    assert list(zip(got.index.tolist(), got.task.tolist(), strict=True)) == want
    reference = round_robin(scores, 299)
    want = brute_force_reference(scores, 299)
    assert list(zip(reference.index.tolist(), reference.task.tolist(), strict=True)) == [
        (i, t) for i, t, _ in want
    ]
    np.testing.assert_array_equal(reference.score, np.float32([s for _, _, s in want]))


def test_reference_and_balanced_differ_where_tasks_share_a_tied_block():
    # Two tasks both rank a block of identical items first: under the reference a turn that
    # pops an item the other task took is used up (and the item keeps the lower score);
    # the balanced variant skips to the task's next untaken item.
    rng = np.random.default_rng(3)
    pool = rng.normal(size=(300, 8)).astype(np.float32)
    pool[40:60] = pool[40]  # a tied block
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    tasks = [np.stack([pool[40], pool[7]]), np.stack([pool[40] + 0.01 * pool[9], pool[11]])]
    scores = max_similarity_per_task([pool], tasks, "max")
    reference = round_robin(scores, 150)
    balanced = round_robin(scores, 150, balanced=True)
    want = brute_force_reference(scores, 150)
    assert reference.index.tolist() == [i for i, _, _ in want]
    assert reference.task.tolist() == [t for _, t, _ in want]
    assert set(reference.index.tolist()) != set(balanced.index.tolist())
    counts = np.bincount(balanced.task, minlength=2)
    assert counts.tolist() == [75, 75]  # balanced: budget / T each
    # Under the reference the overlapping tasks' turns are used up on each other's picks,
    # so they end with unequal shares.
    assert np.bincount(reference.task, minlength=2).tolist() != [75, 75]


def test_budget_beyond_the_pool_takes_everything_once():
    scores = np.array([[0.1, 0.9, 0.5], [0.9, 0.1, 0.5]], dtype=np.float32)
    picks = round_robin(scores, 10)
    assert picks.index.tolist() == [1, 0, 2]
    assert picks.task.tolist() == [0, 1, 0]


def test_top_k_indices_exact_with_ties():
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.9, 0.5], dtype=np.float32)
    assert top_k_indices(scores, 3).tolist() == [1, 4, 0]
    assert top_k_indices(scores, 4).tolist() == [1, 4, 0, 2]
    assert top_k_indices(scores, 10).tolist() == [1, 4, 0, 2, 5, 3]
    rng = np.random.default_rng(0)
    many = rng.integers(0, 5, size=1000).astype(np.float32)
    want = sorted(range(1000), key=lambda i: (-many[i], i))[:137]
    assert top_k_indices(many, 137).tolist() == want


def test_top_ranks_by_best_task_score():
    scores = np.array([[0.2, 0.8, 0.1], [0.7, 0.3, 0.1]], dtype=np.float32)
    picks = top(scores, 2)
    assert picks.index.tolist() == [1, 0]
    assert picks.task.tolist() == [0, 1]
    np.testing.assert_allclose(picks.score, [0.8, 0.7])


def test_bad_inputs_are_named():
    pool = np.ones((4, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="task 0: query dimension 3 != pool dimension 8"):
        max_similarity_per_task([pool], [np.ones((2, 3))])
    with pytest.raises(ValueError, match="task 1: expected a non-empty"):
        max_similarity_per_task([pool], [np.ones((2, 8)), np.ones((0, 8))])
    with pytest.raises(ValueError, match="aggregation"):
        max_similarity_per_task([pool], [np.ones((2, 8))], "median")
