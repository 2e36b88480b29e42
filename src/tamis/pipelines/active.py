"""Pool-based active learning in rounds, from Python.

Each round the caller brings the model's fresh view of the whole pool (class probabilities
for ``pcoreset``, embeddings for ``coreset``), the selector picks the round's examples, and
they join the labelled set, whose points are the next round's first centers::

    rounds = ActiveLearningRounds(pool_ids, labeled=seed_ids, selector="pcoreset")
    for _ in range(5):
        probs = model.predict_proba(pool)          # (N, C), rows summing to 1
        picked = rounds.next_round(probs)          # budget "per_class" = C, as in the paper
        model.fit(labelled_examples(rounds.labeled_ids))

``tamis select`` with ``selector: pcoreset`` runs one such round from files.
(``from tamis.pipelines.active import ActiveLearningRounds``.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from tamis.config import ConfigError
from tamis.inputs.probabilities import positions_of, to_probabilities
from tamis.selectors import make_selector
from tamis.selectors.base import (
    EMBEDDINGS,
    PROBABILITIES,
    Selection,
    SelectionInputs,
    parse_budget,
)


class ActiveLearningRounds:
    """The labelled set and the rounds that grew it."""

    def __init__(
        self,
        ids: Sequence[str],
        labeled: Iterable[str] = (),
        selector: str = "pcoreset",
        params: dict[str, Any] | None = None,
        seed: int = 0,
    ):
        self.ids = [str(i) for i in ids]
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("pool ids must be unique")
        self.selector = make_selector(selector, params or {})
        if not self.selector.needs & {PROBABILITIES, EMBEDDINGS} or not hasattr(
            self.selector.params, "first"
        ):
            raise ConfigError(f"selection.selector: {selector!r} is not an active-learning one")
        self.seed = seed
        self._labeled: list[int] = [
            int(p) for p in dict.fromkeys(positions_of(self.ids, list(labeled), "labeled"))
        ]
        self.rounds: list[Selection] = []

    @property
    def labeled_ids(self) -> list[str]:
        """Labelled ids: the initial ones, then each round's picks in pick order."""
        return [self.ids[p] for p in self._labeled]

    def next_round(self, points: np.ndarray, budget: int | float | str = "per_class") -> Selection:
        """Pick this round's examples given the pool's current probabilities (pcoreset) or
        embeddings (coreset), one row per pool id; they join the labelled set."""
        points = np.asarray(points)
        if points.ndim != 2 or len(points) != len(self.ids):
            raise ValueError(
                f"expected one row per pool id ({len(self.ids)}, dim), got shape {points.shape}"
            )
        inputs = SelectionInputs(ids=self.ids, labeled=np.asarray(self._labeled, dtype=np.int64))
        if PROBABILITIES in self.selector.needs:
            p = self.selector.params
            inputs.probabilities = to_probabilities(
                {"probabilities": points},
                ["probabilities"],
                kind=p.kind,
                temperature=p.temperature,
                row_names=self.ids,
            )
        else:
            vectors = points.astype(np.float32)
            inputs.blocks = lambda: iter([vectors])
            inputs.dim = vectors.shape[1]
        candidates = len(self.ids) - len(self._labeled)
        if budget == "per_class":
            if PROBABILITIES not in self.selector.needs:
                raise ConfigError("budget: per_class needs class probabilities (pcoreset)")
            budget = points.shape[1]
        count = parse_budget(budget, candidates)
        selection = self.selector.select(inputs, count, self.seed + len(self.rounds))
        selection.info["round"] = len(self.rounds)
        self._labeled.extend(int(i) for i in selection.index)
        self.rounds.append(selection)
        return selection
