"""`pcoreset` and `coreset`: k-center greedy active learning (ALGORITHMS.md, PCoreSet).

- ``pcoreset`` covers the probability simplex: points are a model's class-probability
  vectors (a teacher's zero-shot softmax, a student's, or the reference's 0.5/0.5 blend of two
  heads), Euclidean distance.
- ``coreset`` covers the embedding space (Sener & Savarese): L2-normalised embeddings,
  cosine (1 - <u, v>, the PCoreSet reference's CoreSet baseline) or Euclidean distance.

Centers start as the labelled examples (never picked again). With none, the first pick is the
reference's: the lowest pool position (every distance is infinite and argmax takes the first);
``first: random`` draws it with the selection seed instead. Each pick's ``coverage_radius``
is its distance to the nearest center when it was picked: the farthest any pool point was
from the labelled set at that moment, so it never grows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from tamis.config import ConfigError
from tamis.device import DeviceError, check_device_name
from tamis.inputs.probabilities import Kind
from tamis.selectors.base import (
    EMBEDDINGS,
    LABELED,
    PROBABILITIES,
    Selection,
    SelectionInputs,
    Selector,
    candidate_mask,
    ids_at,
    ranked_summary,
    register,
)
from tamis.selectors.kcenter import Metric, k_center_greedy


@dataclass
class KCenterParams:
    # The labelled set: a file of ids (text lines, JSONL or Parquet with `id`), or a boolean
    # column of the pool records (or of the probabilities file) marking labelled rows.
    labeled: str | None = None
    labeled_field: str | None = None
    # With no labelled examples: "reference" = lowest pool position first; "random" = seeded.
    first: Literal["reference", "random"] = "reference"
    # Where the pool-wide screening GEMMs run: auto (CUDA when torch sees a GPU), cpu,
    # torch, cuda[:N]. Picks are identical on every device.
    device: str = "auto"


class _KCenterSelector(Selector):
    metric: Metric

    def validate(self) -> None:
        # before any work: a typo here used to fail only when the screening GEMMs started
        try:
            check_device_name(self.params.device)
        except DeviceError as err:
            raise ConfigError(f"selection.params.device: {err}") from None

    def summary(self, manifest: dict, output: str) -> list[str]:
        info, c = manifest.get("info", {}), manifest["counts"]

        def radius(value: float | None) -> str:  # None: infinite (no centers yet)
            return "inf" if value is None else f"{value:.4f}"

        return [
            *ranked_summary(manifest),
            f"  coverage radius ({info['metric']}): {radius(info['coverage_radius_first'])} "
            f"at the first pick, {radius(info['coverage_radius_last'])} at the last, "
            f"{radius(info['coverage_radius_after'])} after "
            f"({c.get('labeled', 0):,} labelled before)",
        ]

    def points(self, inputs: SelectionInputs) -> np.ndarray:
        raise NotImplementedError

    def select(self, inputs: SelectionInputs, budget: int, seed: int) -> Selection:
        points = self.points(inputs)
        labeled = np.zeros(0, dtype=np.int64) if inputs.labeled is None else inputs.labeled
        allowed = candidate_mask(inputs)
        allowed[labeled] = False
        available = int(allowed.sum())
        if budget > available:
            raise ConfigError(
                f"selection.budget: {budget} is larger than the {available} unlabelled "
                f"candidates ({len(points)} in the pool, {len(labeled)} labelled)"
            )
        first = None
        if self.params.first == "random" and not len(labeled):
            first = int(np.random.default_rng(seed).choice(np.flatnonzero(allowed)))
        picks = k_center_greedy(
            points,
            budget,
            centers=labeled,
            metric=self.metric,
            excluded=inputs.excluded,
            first=first,
            progress=len(points) * budget > 10**8,
            device=self.params.device,
        )
        radius = picks.radius
        return Selection(
            selector=self.name,
            index=picks.index,
            ids=ids_at(inputs.ids, picks.index),
            score=radius,
            # Strict JSON has no infinity: the radius of a first pick without centers is null.
            columns={"coverage_radius": [float(r) if np.isfinite(r) else None for r in radius]},
            info={
                "metric": self.metric,
                "labeled": int(len(labeled)),
                "coverage_radius_first": _finite_or_none(radius[0]) if len(radius) else None,
                "coverage_radius_last": _finite_or_none(radius[-1]) if len(radius) else None,
                "coverage_radius_after": _finite_or_none(picks.final_radius),
                "exact_distances": picks.exact_distances,
                "look_aheads": picks.look_aheads,
            },
        )


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


@register
class PCoreSetSelector(_KCenterSelector):
    """k-center greedy over class-probability vectors (Euclidean)."""

    name = "pcoreset"
    needs = frozenset({PROBABILITIES, LABELED})
    pool_input = PROBABILITIES
    metric = "euclidean"

    @dataclass
    class Params(KCenterParams):
        # Where the probabilities are: a Parquet/JSONL file with `id` and the field(s);
        # by default the pool records' own fields.
        probabilities: str | None = None
        # auto: the first present of probs, logits, probs_ce+probs_kd, logits_ce+logits_kd.
        # A list of two names blends two heads: (1 - blend_weight) p_1 + blend_weight p_2.
        field: str | list[str] = "auto"
        # probs: rows summing to 1; logits: softmax(z / temperature); auto: by field name.
        kind: Kind = "auto"
        temperature: float = 1.0
        blend_weight: float = 0.5

    def points(self, inputs: SelectionInputs) -> np.ndarray:
        if inputs.probabilities is None:
            raise ConfigError("selection.params: pcoreset needs class probabilities")
        return inputs.probabilities


@register
class CoreSetSelector(_KCenterSelector):
    """k-center greedy over L2-normalised embeddings (cosine or Euclidean)."""

    name = "coreset"
    needs = frozenset({EMBEDDINGS, LABELED})

    @dataclass
    class Params(KCenterParams):
        metric: Literal["cosine", "euclidean"] = "cosine"

    @property
    def metric(self) -> Metric:  # type: ignore[override]
        return self.params.metric

    def points(self, inputs: SelectionInputs) -> np.ndarray:
        if inputs.blocks is None:
            raise ConfigError("embedding.output: coreset needs pool embeddings")
        blocks = list(inputs.blocks())
        if not blocks:
            return np.zeros((0, inputs.dim or 0), dtype=np.float32)
        points = np.concatenate(blocks).astype(np.float32, copy=False)
        norms = np.linalg.norm(points, axis=1, keepdims=True)
        np.divide(points, norms, out=points, where=norms > 0)
        return points
