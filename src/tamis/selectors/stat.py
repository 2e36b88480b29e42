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
import polars as pl

from tamis.config import ConfigError
from tamis.inputs.skills import Evaluation, SkillTable
from tamis.selectors.base import (
    SKILLS,
    Selection,
    SelectionInputs,
    Selector,
    candidate_mask,
    ids_at,
    register,
)
from tamis.selectors.stat_core import (
    TAU1,
    TAU2,
    SkillMap,
    missing_skill_counts,
    skill_map,
    stat_sample,
    stat_weights,
)

PROFILE = "missing_skill_profile.parquet"


@register
class StatSelector(Selector):
    name = "stat"
    needs = frozenset({SKILLS})
    pool_input = SKILLS
    budget_required = False  # weights mode: every weighted example by default

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
        # column, so run that selection with join_records: true). In a recipe the earlier
        # stage's kept items are the pool anyway.
        pool_subset: str | None = None

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "weight" if self.params.mode == "weights" else "select"

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
        for variant, name in p.skill_aliases.items():
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(
                    f"selection.params.skill_aliases.{variant}: must be a skill name, got {name!r}"
                )

    def resolve_budget(self, budget, inputs: SelectionInputs) -> int:
        if self.params.mode == "sample":
            if budget is None:
                raise ConfigError("selection.budget: stat's sample mode needs the number of draws")
            if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0:
                return budget  # draws with repeats: may exceed the pool
        return super().resolve_budget(budget, inputs)

    def select(self, inputs: SelectionInputs, budget: int, seed: int) -> Selection:
        table, evaluation = inputs.skills.table, inputs.skills.evaluation
        rows = np.flatnonzero(candidate_mask(inputs))
        if len(rows) < len(table.ids):  # the pool is what an earlier stage kept
            table = restrict_rows(table, rows)
        skills = skill_map(table.offsets, table.codes, len(table.names))
        counts = missing_skill_counts(evaluation.missing_codes, len(table.names))
        selection, weights = self.select_skills(
            table.ids, skills, evaluation.missing_codes, budget, seed
        )
        profile = profile_frame(table.names, counts, skills, weights, evaluation)
        # The subset carries each example's skills (the canonical names it was weighed by).
        lists = [table.codes[table.offsets[i] : table.offsets[i + 1]] for i in selection.index]
        selection.columns["skills"] = [sorted({table.names[c] for c in codes}) for codes in lists]
        selection.index = rows[selection.index]
        p = self.params
        selection.info = {
            "mode": p.mode,
            "k": p.k,
            "mix_uniform": p.mix_uniform,
            "skills": len(table.names),
            "most_missed": profile.head(5).select("skill", "missing_count").rows(),
        }
        selection.counts = {
            "pool": len(table.ids),
            "pool_with_skills": int((np.diff(table.offsets) > 0).sum()),
            "questions": evaluation.questions,
            "difficult": evaluation.difficult,
            "difficult_without_missing_skills": evaluation.difficult_without_skills,
            "missing_skill_pairs": int(len(evaluation.missing_codes)),
            "unknown_skills": evaluation.unknown_skills,
            "examples_with_weight": int((weights > 0).sum()),
        }
        selection.outputs[PROFILE] = profile.to_arrow()
        return selection

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
            draws = (
                stat_sample(missing_codes, skills, p.k, budget, seed)
                if p.mode == "sample"
                else None
            )
        except ValueError as err:
            raise ConfigError(f"selection.params.evaluation: {err} ({p.evaluation})") from None
        columns: dict = {}
        if p.mode == "weights":
            carrying = np.flatnonzero(weights > 0)
            order = carrying[np.lexsort((carrying, -weights[carrying]))][:budget]
            index, weight, score = order, weights[order], weights[order]
        else:
            drawn, times = np.unique(draws, return_counts=True)
            order = np.lexsort((drawn, -times))
            index = drawn[order]
            weight = times[order].astype(np.float64)
            score = weights[index]
            columns["draws"] = times[order]
        selection = Selection(
            selector=self.name,
            index=index,
            ids=ids_at(ids, index),
            score=score,
            weight=weight,
            columns=columns,
        )
        return selection, weights

    def summary(self, manifest: dict, output: str) -> list[str]:
        c, info = manifest["counts"], manifest["info"]
        lines = [
            f"stat ({info['mode']}): {c['difficult']:,} of {c['questions']:,} questions "
            f"difficult, {c['missing_skill_pairs']:,} missing-skill mentions; "
            f"{c['examples_with_weight']:,} of {c['pool']:,} examples weighted, "
            f"{c['selected']:,} in the subset"
        ]
        missed = ", ".join(f"{skill} ({count})" for skill, count in info["most_missed"])
        lines.append(f"  most missed skills: {missed}")
        if c["unknown_skills"]:
            unknown = ", ".join(f"{s} ({n})" for s, n in list(c["unknown_skills"].items())[:5])
            lines.append(f"  missing skills no training example carries: {unknown}")
        lines.append(f"  profile: {output}/{PROFILE}")
        return lines


def restrict_rows(table: SkillTable, rows: np.ndarray) -> SkillTable:
    """The skill table of these rows only (same skill names)."""
    lengths = np.diff(table.offsets)[rows]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    starts = table.offsets[rows]
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    codes = table.codes[np.repeat(starts, lengths) + within]
    ids = [table.ids[i] for i in rows]
    return SkillTable(ids, offsets, codes, table.names, table.source)


def profile_frame(
    names: list[str], counts: np.ndarray, skills: SkillMap, weights: np.ndarray,
    evaluation: Evaluation,
) -> pl.DataFrame:  # fmt: skip
    """One row per skill the evaluation or the pool names, most missed first."""
    sizes = skills.sizes
    skill_of = np.repeat(np.arange(len(sizes)), sizes)
    mass = np.bincount(skill_of, weights=weights[skills.examples], minlength=len(sizes))
    total_missing = counts.sum() + sum(evaluation.unknown_skills.values())
    rows = pl.DataFrame(
        {
            "skill": names,
            "missing_count": counts.astype(np.int64),
            "training_examples": sizes.astype(np.int64),
            "weight_share": mass / mass.sum() if mass.sum() > 0 else np.zeros(len(sizes)),
            "uniform_share": sizes / sizes.sum() if sizes.sum() > 0 else np.zeros(len(sizes)),
        }
    )
    unknown = pl.DataFrame(
        {
            "skill": list(evaluation.unknown_skills),
            "missing_count": list(evaluation.unknown_skills.values()),
            "training_examples": [0] * len(evaluation.unknown_skills),
            "weight_share": [0.0] * len(evaluation.unknown_skills),
            "uniform_share": [0.0] * len(evaluation.unknown_skills),
        },
        schema=rows.schema,
    )
    return (
        pl.concat([rows, unknown])
        .with_columns(share=pl.col("missing_count") / max(int(total_missing), 1))
        .select(
            "skill", "missing_count", "share", "training_examples", "weight_share", "uniform_share"
        )
        .sort(["missing_count", "skill"], descending=[True, False])
    )
