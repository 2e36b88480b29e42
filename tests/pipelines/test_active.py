"""Active-learning rounds from Python: each round's picks join the labelled set."""

import numpy as np
import pytest

from tamis.config import ConfigError
from tamis.inputs.probabilities import softmax
from tamis.pipelines.active import ActiveLearningRounds
from tamis.records import InputError
from tamis.selectors.kcenter import k_center_greedy

IDS = [f"x{i}" for i in range(300)]


def probabilities(seed: int) -> np.ndarray:
    return softmax(np.random.default_rng(seed).normal(size=(300, 6)) * 2).astype(np.float32)


def test_rounds_grow_the_labelled_set_and_equal_the_core_each_round():
    rounds = ActiveLearningRounds(IDS, labeled=["x5", "x9"], selector="pcoreset")
    labelled = [5, 9]
    for r in range(3):
        probs = probabilities(r)  # the model changes between rounds
        picked = rounds.next_round(probs)  # per_class: 6 picks
        expected = k_center_greedy(probs, 6, labelled)
        assert picked.index.tolist() == expected.index.tolist()
        assert picked.info["round"] == r and picked.info["labeled"] == len(labelled)
        labelled += expected.index.tolist()
    assert rounds.labeled_ids == [IDS[i] for i in labelled]
    assert len(set(rounds.labeled_ids)) == 2 + 3 * 6
    assert len(rounds.rounds) == 3


def test_logits_and_coreset_rounds():
    logits = np.random.default_rng(1).normal(size=(300, 6))
    rounds = ActiveLearningRounds(IDS, selector="pcoreset", params={"kind": "logits"})
    picked = rounds.next_round(logits, budget=4)
    assert picked.index.tolist() == k_center_greedy(softmax(logits), 4).index.tolist()
    assert picked.index[0] == 0  # no labelled set: the reference starts at position 0

    embeddings = np.random.default_rng(2).normal(size=(300, 16)).astype(np.float32)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    coreset = ActiveLearningRounds(IDS, labeled=["x0"], selector="coreset")
    first = coreset.next_round(embeddings, budget="5%")
    assert first.index.tolist() == k_center_greedy(unit, 15, [0], "cosine").index.tolist()
    with pytest.raises(ConfigError, match="per_class needs class probabilities"):
        coreset.next_round(embeddings)


def test_bad_rounds_fail_clearly():
    with pytest.raises(InputError, match="labeled: 1 ids are not in the pool: 'nope'"):
        ActiveLearningRounds(IDS, labeled=["x1", "nope"])
    with pytest.raises(ConfigError, match="'rds' is not an active-learning one"):
        ActiveLearningRounds(IDS, selector="rds")
    rounds = ActiveLearningRounds(IDS)
    with pytest.raises(ValueError, match=r"one row per pool id \(300, dim\)"):
        rounds.next_round(probabilities(0)[:10])
    bad = probabilities(0)
    bad[42] = 0.5
    with pytest.raises(ValueError, match=r"row 42 \(id 'x42'\): 'probabilities' sums to 3"):
        rounds.next_round(bad)
    with pytest.raises(ConfigError, match="301 is larger than the pool"):
        rounds.next_round(probabilities(0), budget=301)
    assert rounds.rounds == []  # nothing half-done
