"""The stat select stage: pool skills + student evaluation -> profile, weights, subset.

Output directory: the subset files of every selector (``weight``, ``skills``, and in sample
mode ``draws``), plus ``missing_skill_profile.parquet``: per skill, how many difficult
questions miss it (``missing_count``, ``share``), how many training examples carry it
(``training_examples``; 0 for skills the pool cannot teach) and the share of the
reweighted set's skill mass it gets (``weight_share``; ``uniform_share`` before reweighting).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import polars as pl
from apache_beam.io.filesystems import FileSystems

from tamis.config import Config, ConfigError, require
from tamis.records import write_parquet_atomic
from tamis.selectors.base import parse_budget
from tamis.selectors.stat import StatSelector
from tamis.selectors.stat_core import SkillMap, missing_skill_counts, skill_map
from tamis.skills import Evaluation, read_evaluation, read_frame, skill_table

PROFILE = "missing_skill_profile.parquet"
SUBSET_PARQUET = "subset.parquet"


def load_pool_frame(config: Config, params: Any) -> tuple[pl.DataFrame, str]:
    """The training pool: an earlier subset dir, or the pool files."""
    if params.pool_subset is not None:
        path = FileSystems.join(params.pool_subset, SUBSET_PARQUET)
        if not FileSystems.exists(path):
            raise ConfigError(f"selection.params.pool_subset: no {SUBSET_PARQUET} in it")
        frame = read_frame(path)
        if params.skills_field not in frame.columns:
            raise ConfigError(
                f"selection.params.pool_subset: {path} has no {params.skills_field!r} column; "
                "run that selection with join_records: true"
            )
        return frame, path
    pool = require(config.pool, "pool")
    return read_frame(pool.path if isinstance(pool.path, str) else pool.path), str(pool.path)


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


def run_stat_select(config: Config, selector: StatSelector, started: float) -> dict:
    from tamis.pipelines.select import finish_select

    selection_cfg = require(config.selection, "selection")
    output = require(selection_cfg.output, "selection.output")
    selector.validate()
    p = selector.params
    frame, source = load_pool_frame(config, p)
    id_field = config.pool.id_field if config.pool is not None else "id"
    table = skill_table(frame, source, p.skills_field, id_field, p.skill_aliases)
    evaluation = read_evaluation(p.evaluation, table.names, p.tau1, p.tau2, p.skill_aliases)
    n = len(table.ids)
    if p.mode == "sample" and isinstance(selection_cfg.budget, int) and selection_cfg.budget > 0:
        budget = selection_cfg.budget  # draws with repeats: may exceed the pool
    else:
        budget = parse_budget(selection_cfg.budget, n)

    select_started = time.perf_counter()
    skills = skill_map(table.offsets, table.codes, len(table.names))
    counts = missing_skill_counts(evaluation.missing_codes, len(table.names))
    selection, weights = selector.select_skills(
        table.ids, skills, evaluation.missing_codes, budget, selection_cfg.seed
    )
    profile = profile_frame(table.names, counts, skills, weights, evaluation)
    seconds = time.perf_counter() - select_started

    # The subset carries each example's skills (the canonical names it was weighed by).
    lists = [table.codes[table.offsets[i] : table.offsets[i + 1]] for i in selection.index]
    selection.columns["skills"] = [sorted({table.names[c] for c in codes}) for codes in lists]
    selection.info = {
        "mode": p.mode,
        "k": p.k,
        "mix_uniform": p.mix_uniform,
        "skills": len(table.names),
        "most_missed": profile.head(5).select("skill", "missing_count").rows(),
    }
    if not FileSystems.exists(output):
        FileSystems.mkdirs(output)
    write_parquet_atomic(FileSystems.join(output, PROFILE), profile.to_arrow())
    counts_out = {
        "pool": n,
        "pool_with_skills": int((np.diff(table.offsets) > 0).sum()),
        "questions": evaluation.questions,
        "difficult": evaluation.difficult,
        "difficult_without_missing_skills": evaluation.difficult_without_skills,
        "missing_skill_pairs": int(len(evaluation.missing_codes)),
        "unknown_skills": evaluation.unknown_skills,
        "examples_with_weight": int((weights > 0).sum()),
        "budget": budget,
        "selected": len(selection),
    }
    origin = {"pool": source, "evaluation": p.evaluation}
    return finish_select(config, selector, selection, counts_out, origin, seconds, started)
