"""`exact_dedup`: keep the first of each group of pool items with the same text (the text
the encoder saw, template applied); a filter stage. The first is the lowest pool position
among the stage's candidates. ``duplicates.parquet`` lists each removed item with the kept
item it repeats."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tamis.inputs.texts import later_copies
from tamis.selectors.base import (
    EMBEDDINGS,
    TEXTS,
    Selection,
    SelectionInputs,
    Selector,
    candidate_mask,
    ids_at,
    register,
)

DUPLICATES = "duplicates.parquet"


@register
class ExactDedupSelector(Selector):
    name = "exact_dedup"
    needs = frozenset({EMBEDDINGS, TEXTS})
    kind = "filter"
    budget_required = False

    @dataclass
    class Params:
        pass

    def select(self, inputs: SelectionInputs, budget: int, seed: int) -> Selection:
        allowed = candidate_mask(inputs)
        copies, first = later_copies(inputs.texts, allowed)
        allowed[copies] = False
        index = np.flatnonzero(allowed)[:budget]
        return Selection(
            selector=self.name,
            index=index,
            ids=ids_at(inputs.ids, index),
            score=np.ones(len(index)),
            counts={"exact_duplicates": len(copies)},
            outputs={
                DUPLICATES: pa.table(
                    {
                        "id": pa.array(ids_at(inputs.ids, copies), pa.string()),
                        "matched_id": pa.array(ids_at(inputs.ids, first), pa.string()),
                        "similarity": pa.array(np.ones(len(copies))),
                        "exact": pa.array(np.ones(len(copies), dtype=bool)),
                    }
                )
            },
        )

    def summary(self, manifest: dict, output: str) -> list[str]:
        c = manifest["counts"]
        return [
            f"exact_dedup: kept {c['selected']:,} of {c['candidates']:,} candidates, "
            f"{c['exact_duplicates']:,} exact duplicates removed -> {output}/{DUPLICATES}"
        ]
