"""`scaling_law`: keep the pool items of the filtering level a scaling-law plan picks.

Given a fit (`tamis scaling fit`) and the compute budget (samples seen), the best top-m
mixture of quality buckets is the argmin of the predicted error; the subset is every pool
item in those m buckets (a filter: no budget needed; a budget caps it, best quality first).
An item's bucket is its ``bucket`` column (names as in the fit), or, from a ``quality_score``
column, its quantile bucket: the pool is cut into as many equal-size buckets as the fit has,
the highest scores matched to the best-b bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tamis.config import ConfigError
from tamis.records import InputError
from tamis.selectors.base import (
    BUCKETED_POOL,
    Selection,
    SelectionInputs,
    Selector,
    candidate_mask,
    ids_at,
    register,
)
from tamis.selectors.scaling_laws import ScalingFit, fit_from_json, parse_count, plan


@register
class ScalingLawSelector(Selector):
    name = "scaling_law"
    needs = frozenset({BUCKETED_POOL})
    pool_input = BUCKETED_POOL
    kind = "filter"
    budget_required = False

    @dataclass
    class Params:
        fit: str | None = None  # fit.json of `tamis scaling fit`
        compute: int | float | str | None = None  # samples seen, e.g. 640M
        bucket_field: str = "bucket"
        quality_field: str = "quality_score"

    def validate(self) -> None:
        for key in ("fit", "compute"):
            if getattr(self.params, key) is None:
                raise ConfigError(f"selection.params.{key}: required key missing")
        self.samples_seen()

    def samples_seen(self) -> float:
        try:
            return parse_count(self.params.compute, "selection.params.compute")
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def best_buckets(self, fit: ScalingFit, samples_seen: float) -> tuple[list[str], float]:
        """The best top-m mixture at this budget (a ValueError when the fit's buckets do not
        fit the law, e.g. unequal sizes)."""
        rows = [r for r in plan(fit.buckets, fit.a, fit.d, [samples_seen], fit.z) if r.best]
        return rows[0].buckets, rows[0].predicted_error

    def select_buckets(
        self,
        ids,
        item_bucket: list[str],
        keep: list[str],
        quality: np.ndarray | None,
        budget: int,
        allowed: np.ndarray | None = None,
    ) -> Selection:
        wanted = set(keep)
        index = np.asarray([i for i, b in enumerate(item_bucket) if b in wanted], dtype=np.int64)
        if allowed is not None:
            index = index[allowed[index]]
        if quality is not None:  # best first
            index = index[np.lexsort((index, -quality[index]))]
        index = index[:budget]
        return Selection(
            selector=self.name,
            index=index,
            ids=ids_at(ids, index),
            score=quality[index] if quality is not None else np.zeros(len(index)),
            columns={"bucket": [item_bucket[i] for i in index]},
        )

    def select(self, inputs: SelectionInputs, budget: int, seed: int) -> Selection:
        b = inputs.buckets
        samples_seen = self.samples_seen()
        try:
            fit = fit_from_json(b.fit)
            keep, predicted = self.best_buckets(fit, samples_seen)
        except ValueError as err:
            raise InputError(f"{b.fit_path}: {err}") from None
        if b.bucket is not None:
            buckets = b.bucket
            unknown = sorted(set(buckets) - set(fit.buckets))
            if unknown:
                raise InputError(
                    f"{inputs.origin['pool']}: {self.params.bucket_field!r} values "
                    f"{unknown[:5]} are not buckets of the fit {b.fit_path} "
                    f"({sorted(fit.buckets)})"
                )
        else:
            order = sorted(fit.buckets, key=lambda name: (fit.buckets[name]["b"], name))
            buckets = quantile_buckets(b.quality, order)
        selection = self.select_buckets(
            inputs.ids, buckets, keep, b.quality, budget, candidate_mask(inputs)
        )
        selection.info = {
            "compute": samples_seen,
            "best_buckets": keep,
            "top_m": len(keep),
            "predicted_error": predicted,
        }
        selection.counts = {"in_best_buckets": sum(name in set(keep) for name in buckets)}
        return selection

    def summary(self, manifest: dict, output: str) -> list[str]:
        c, info = manifest["counts"], manifest["info"]
        return [
            f"scaling_law at {info['compute']:.3g} samples seen: top {info['top_m']} buckets "
            f"({', '.join(info['best_buckets'])}; predicted error "
            f"{info['predicted_error']:.4f}); {c['selected']:,} of {c['pool']:,} items kept"
        ]


def quantile_buckets(quality: np.ndarray, names_best_first: list[str]) -> list[str]:
    """Equal-size buckets by score: the highest scores go to the first name."""
    order = np.argsort(-quality, kind="stable")
    bucket = np.empty(len(quality), dtype=object)
    for k, part in enumerate(np.array_split(order, len(names_best_first))):
        bucket[part] = names_best_first[k]
    return bucket.tolist()
