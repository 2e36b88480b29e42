"""`random`: a seeded uniform sample of the pool, the baseline every benchmark compares to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tamis.selectors.base import (
    EMBEDDINGS,
    Selection,
    SelectionInputs,
    Selector,
    candidate_mask,
    ids_at,
    register,
)


@register
class RandomSelector(Selector):
    name = "random"
    needs = frozenset({EMBEDDINGS})  # the pool's ids (the vectors are not read)

    @dataclass
    class Params:
        pass

    def select(self, inputs: SelectionInputs, budget: int, seed: int) -> Selection:
        candidates = np.flatnonzero(candidate_mask(inputs))
        rng = np.random.default_rng(seed)
        index = rng.permutation(candidates)[:budget]
        return Selection(
            selector=self.name,
            index=index,
            ids=ids_at(inputs.ids, index),
            score=np.zeros(len(index)),
        )
