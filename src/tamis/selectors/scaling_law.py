"""`scaling_law`: keep the pool items of the filtering level a scaling-law plan picks.

Given a fit (`tamis scaling fit`) and the compute budget (samples seen), the best top-m
mixture of quality buckets is the argmin of the predicted error; the subset is every pool
item in those m buckets. An item's bucket is its ``bucket`` column (names as in the fit),
or, from a ``quality_score`` column, its quantile bucket: the pool is cut into as many
equal-size buckets as the fit has, the highest scores matched to the best-b bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tamis.config import ConfigError
from tamis.selectors.base import BUCKETED_POOL, Selection, SelectionInputs, Selector, register
from tamis.selectors.scaling_laws import ScalingFit, plan


@register
class ScalingLawSelector(Selector):
    name = "scaling_law"
    needs = frozenset({BUCKETED_POOL})

    @dataclass
    class Params:
        fit: str | None = None  # fit.json of `tamis scaling fit`
        compute: int | float | str | None = None  # samples seen, e.g. 640M
        bucket_field: str = "bucket"
        quality_field: str = "quality_score"

    def best_buckets(self, fit: ScalingFit, samples_seen: float) -> tuple[list[str], float]:
        rows = [r for r in plan(fit.buckets, fit.a, fit.d, [samples_seen], fit.z) if r.best]
        return rows[0].buckets, rows[0].predicted_error

    def select_buckets(
        self,
        ids: list[str],
        item_bucket: list[str],
        keep: list[str],
        quality: np.ndarray | None,
        budget: int,
    ) -> Selection:
        wanted = set(keep)
        index = np.asarray([i for i, b in enumerate(item_bucket) if b in wanted], dtype=np.int64)
        if quality is not None:  # best first
            index = index[np.lexsort((index, -quality[index]))]
        index = index[:budget]
        return Selection(
            selector=self.name,
            index=index,
            ids=[ids[i] for i in index],
            score=quality[index] if quality is not None else np.zeros(len(index)),
            columns={"bucket": [item_bucket[i] for i in index]},
        )

    def select(self, inputs: SelectionInputs, budget: int, seed: int) -> Selection:
        raise ConfigError("scaling_law runs through `tamis select` (see pipelines.scaling)")


def quantile_buckets(quality: np.ndarray, names_best_first: list[str]) -> list[str]:
    """Equal-size buckets by score: the highest scores go to the first name."""
    order = np.argsort(-quality, kind="stable")
    bucket = np.empty(len(quality), dtype=object)
    for k, part in enumerate(np.array_split(order, len(names_best_first))):
        bucket[part] = names_best_first[k]
    return bucket.tolist()
