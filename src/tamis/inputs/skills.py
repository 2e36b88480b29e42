"""Skill tags for STAT: the training pool's skill lists and the student's evaluation, read
column-wise with polars and turned into integer skill codes (no Python loop per example).

Skill names are stripped and mapped through `aliases` (variant -> canonical name) first.
Skills the evaluation names but no training example carries are reported, not dropped
silently: they cannot be taught from this pool. The loader of the `skills` input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from tamis.config import ConfigError, require
from tamis.inputs.context import SKILLS, SelectionInputs, StageContext, input_loader
from tamis.records import InputError, read_table_files


@dataclass
class SkillTable:
    """Training examples in pool order and their skills as CSR over codes into `names`."""

    ids: list[str]
    offsets: np.ndarray  # (n + 1,) int64
    codes: np.ndarray  # int64 codes into names
    names: list[str]
    source: str


@dataclass
class Evaluation:
    """The student's evaluation: which questions are difficult and the skill codes they miss
    (one entry per difficult question and missing skill)."""

    questions: int
    difficult: int
    missing_codes: np.ndarray  # codes into the SkillTable's names
    difficult_without_skills: int
    unknown_skills: dict[str, int] = field(default_factory=dict)  # name -> questions
    source: str = ""


def read_frame(path: str) -> pl.DataFrame:
    """Parquet or JSONL files (a glob or list) as one polars frame, in file order."""
    return pl.from_arrow(read_table_files(path))


def _canonical(names: pl.Expr, aliases: dict[str, str]) -> pl.Expr:
    stripped = names.str.strip_chars()
    if not aliases:
        return stripped
    return stripped.replace(aliases)


def skill_table(
    frame: pl.DataFrame,
    source: str,
    skills_field: str = "skills",
    id_field: str = "id",
    aliases: dict[str, str] | None = None,
) -> SkillTable:
    """Skill lists of the training pool (null or empty lists: no skills)."""
    for name in (id_field, skills_field):
        if name not in frame.columns:
            raise InputError(f"{source}: no {name!r} column (columns: {frame.columns})")
    column = frame.get_column(skills_field)
    if not isinstance(column.dtype, pl.List):
        raise InputError(f"{source}: {skills_field!r} must be a list of skill names")
    lists = column.fill_null([]).list.eval(_canonical(pl.element(), aliases or {}))
    lengths = lists.list.len().to_numpy().astype(np.int64)
    flat = lists.explode().drop_nulls()
    names = sorted(flat.unique().to_list())
    code_of = {name: i for i, name in enumerate(names)}
    codes = flat.replace_strict(code_of, return_dtype=pl.Int64).to_numpy()
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = frame.get_column(id_field).cast(pl.String).to_list()
    return SkillTable(ids, offsets, codes, names, source)


def read_evaluation(
    path: str,
    names: list[str],
    tau1: float,
    tau2: float,
    aliases: dict[str, str] | None = None,
) -> Evaluation:
    """Difficult questions and their missing skills from a JSONL/Parquet evaluation.

    A row is a question with ``correct`` (bool) or ``rewards`` (per-step floats: difficult
    when the last or the mean <= tau1, or an earlier one <= tau2) and ``missing_skills``.
    """
    frame = read_frame(path)
    has_correct, has_rewards = "correct" in frame.columns, "rewards" in frame.columns
    if not (has_correct or has_rewards):
        raise InputError(f"{path}: each question needs 'correct' or 'rewards'")
    if "missing_skills" not in frame.columns:
        raise InputError(f"{path}: no 'missing_skills' column")
    difficult = pl.lit(False)
    if has_rewards:
        rewards = pl.col("rewards").cast(pl.List(pl.Float64))
        by_rewards = (
            (rewards.list.last() <= tau1)
            | (rewards.list.mean() <= tau1)
            | (rewards.list.head(rewards.list.len() - 1).list.min() <= tau2)
        ).fill_null(False)
        difficult = difficult | by_rewards
    if has_correct:
        difficult = difficult | (pl.col("correct") == False).fill_null(False)  # noqa: E712
    hard = frame.filter(difficult)
    missing = hard.select(
        pl.col("missing_skills")
        .fill_null([])
        .list.eval(_canonical(pl.element(), aliases or {}))
        .list.unique()
    ).get_column("missing_skills")
    without = int((missing.list.len() == 0).sum())
    flat = missing.explode().drop_nulls()
    code_of = {name: i for i, name in enumerate(names)}
    known = flat.is_in(names)
    unknown = flat.filter(~known).value_counts(sort=True)
    unknown_skills = dict(
        zip(
            unknown.get_column(flat.name).to_list(),
            unknown.get_column("count").to_list(),
            strict=True,
        )
    )
    codes = flat.filter(known).replace_strict(code_of, return_dtype=pl.Int64).to_numpy()
    return Evaluation(len(frame), len(hard), codes, without, unknown_skills, path)


SUBSET_PARQUET = "subset.parquet"


@dataclass
class SkillInputs:
    """The training pool's skills and the student's evaluation over the same skill names."""

    table: SkillTable
    evaluation: Evaluation


def load_pool_frame(ctx: StageContext) -> tuple[pl.DataFrame, str]:
    """The training pool: an earlier subset dir (`params.pool_subset`), or the pool files."""
    p = ctx.params
    if p.pool_subset is not None:
        path = FileSystems.join(p.pool_subset, SUBSET_PARQUET)
        if not FileSystems.exists(path):
            raise ConfigError(f"{ctx.key}.params.pool_subset: no {SUBSET_PARQUET} in it")
        frame = read_frame(path)
        if p.skills_field not in frame.columns:
            raise ConfigError(
                f"{ctx.key}.params.pool_subset: {path} has no {p.skills_field!r} column; "
                "run that selection with join_records: true"
            )
        return frame, path
    pool = require(ctx.config.pool, "pool")
    return read_frame(pool.path), str(pool.path)


@input_loader(SKILLS)
def load_skills(ctx: StageContext, inputs: SelectionInputs) -> None:
    p = ctx.params
    if p.evaluation is None:
        raise ConfigError(f"{ctx.key}.params.evaluation: stat needs the student's evaluation")
    frame, source = load_pool_frame(ctx)
    id_field = ctx.config.pool.id_field if ctx.config.pool is not None else "id"
    table = skill_table(frame, source, p.skills_field, id_field, p.skill_aliases)
    evaluation = read_evaluation(p.evaluation, table.names, p.tau1, p.tau2, p.skill_aliases)
    inputs.ids = pa.array(table.ids, pa.string())
    inputs.skills = SkillInputs(table, evaluation)
    inputs.origin.update(pool=source, evaluation=p.evaluation)
