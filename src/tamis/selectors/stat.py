"""`stat`: STAT-Sel skill-targeted reweighting (ALGORITHMS.md; He et al. 2025, Algorithm 1).

The student's difficult questions name the skills they miss; training examples that teach
those skills get more weight. Two modes:

- ``weights``: each example's expected number of draws under STAT-Sel,
  sum over its skills s of c_s k / |Skill-Map(s)| (c_s: difficult questions missing s),
  normalised, optionally mixed with a uniform share ``mix_uniform``; the subset holds the
  examples with weight > 0, heaviest first, as a ``weight`` column for weighted trainers.
- ``sample``: the paper's procedure: k draws from Skill-Map(s) for every (difficult
  question, missing skill) pair, then ``budget`` draws from that list; the subset holds each
  drawn example once with its ``draws`` count (its weight).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from tamis.config import ConfigError
from tamis.selectors.base import SKILLS, Selection, SelectionInputs, Selector, register
from tamis.selectors.stat_core import (
    TAU1,
    TAU2,
    SkillMap,
    missing_skill_counts,
    stat_sample,
    stat_weights,
)


@register
class StatSelector(Selector):
    name = "stat"
    needs = frozenset({SKILLS})

    @dataclass
    class Params:
        evaluation: str | None = None  # JSONL/Parquet: correct or rewards, missing_skills
        mode: Literal["weights", "sample"] = "weights"
        k: int = 3  # draws per (difficult question, missing skill) pair
        mix_uniform: float = 0.0  # weights mode: uniform share kept for the other skills
        tau1: float = TAU1
        tau2: float = TAU2
        skills_field: str = "skills"
        skill_aliases: dict[str, str] = field(default_factory=dict)  # variant -> canonical
        # Take the pool from an earlier subset dir (e.g. RDS+ picks; it needs the skills
        # column, so run that selection with join_records: true).
        pool_subset: str | None = None

    def validate(self) -> None:
        p = self.params
        if p.evaluation is None:
            raise ConfigError("selection.params.evaluation: stat needs the student's evaluation")
        if p.k < 1:
            raise ConfigError(f"selection.params.k: must be >= 1, got {p.k}")
        if not 0 <= p.mix_uniform <= 1:
            raise ConfigError(
                f"selection.params.mix_uniform: must be in [0, 1], got {p.mix_uniform}"
            )

    def select_skills(
        self,
        ids: list[str],
        skills: SkillMap,
        missing_codes: np.ndarray,
        budget: int,
        seed: int,
    ) -> tuple[Selection, np.ndarray]:
        """The subset, and the per-example weights over the whole pool."""
        p = self.params
        n = len(ids)
        counts = missing_skill_counts(missing_codes, len(skills.sizes))
        try:
            weights = stat_weights(counts, skills, p.k, n, p.mix_uniform)
        except ValueError as err:
            raise ConfigError(f"selection.params.evaluation: {err}") from None
        columns: dict = {}
        if p.mode == "weights":
            carrying = np.flatnonzero(weights > 0)
            order = carrying[np.lexsort((carrying, -weights[carrying]))][:budget]
            index, weight, score = order, weights[order], weights[order]
        else:
            draws = stat_sample(missing_codes, skills, p.k, budget, seed)
            drawn, times = np.unique(draws, return_counts=True)
            order = np.lexsort((drawn, -times))
            index = drawn[order]
            weight = times[order].astype(np.float64)
            score = weights[index]
            columns["draws"] = times[order]
        selection = Selection(
            selector=self.name,
            index=index,
            ids=[ids[i] for i in index],
            score=score,
            weight=weight,
            columns=columns,
        )
        return selection, weights

    def select(self, inputs: SelectionInputs, budget: int, seed: int) -> Selection:
        raise ConfigError("stat runs through `tamis select` (see pipelines.stat)")
