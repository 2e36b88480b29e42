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
from tamis.records import InputError, read_bytes, read_table_files, resolve_inputs


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


# ---------------------------------------------------------------------------------------------
# Where a row is, for error messages (computed only when there is an error to report)


def row_location(path: str | list[str], row: int) -> str:
    """Row `row` of `read_frame(path)` as the records module names positions: ``FILE:LINE``
    for JSONL (1-based, blank lines counted as an editor shows them), ``FILE: row N`` for
    Parquet (0-based)."""
    try:
        for source in resolve_inputs(path):
            rows = read_table_files(source.path).num_rows
            if row < rows:
                if source.format == "jsonl":
                    return f"{source.path}:{_jsonl_line(source.path, row)}"
                return f"{source.path}: row {row}"
            row -= rows
    except (InputError, OSError):  # changed since it was read: the row of the whole table
        pass
    return f"{path}: row {row}"


def _jsonl_line(path: str, row: int) -> int | str:
    """The 1-based line of the row-th record (Arrow's JSON reader skips blank lines)."""
    import gzip

    data = read_bytes(path)
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    seen = -1
    for number, line in enumerate(data.split(b"\n"), start=1):
        seen += bool(line.strip())
        if seen == row:
            return number
    return f"record {row + 1}"


def row_where(path: str | list[str], frame: pl.DataFrame, row: int, id_field: str) -> str:
    """The row's file and line, with its id when it has one."""
    place = row_location(path, row)
    if id_field in frame.columns:
        rid = frame.get_column(id_field)[row]
        if rid is not None:
            return f"{place} (id {str(rid)!r})"
    return place


def _first_row(frame: pl.DataFrame, mask: pl.Expr) -> int | None:
    rows = frame.select(mask.fill_null(False)).to_series().arg_true()
    return int(rows[0]) if len(rows) else None


def shown_value(value: object) -> str:
    """A cell as an error message shows it: lists as lists, long values cut."""
    if isinstance(value, pl.Series):
        value = value.to_list()
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _as_list(column: pl.Series, inner: pl.DataType) -> pl.Series:
    """Fixed-size lists (Parquet) as lists; an all-null column as a list of `inner` column."""
    if isinstance(column.dtype, pl.Array):
        return column.cast(pl.List(column.dtype.inner))
    if column.dtype == pl.Null:
        return column.cast(pl.List(inner))
    return column


def _name_lists(
    frame: pl.DataFrame, name: str, path: str | list[str], id_field: str, what: str
) -> pl.Series:
    """Column `name` as lists of strings (null rows: null), or an InputError naming the
    first row whose value is not a list of names."""
    column = _as_list(frame.get_column(name), pl.String)
    frame = frame.with_columns(column.alias(name))
    dtype = column.dtype
    if not isinstance(dtype, pl.List):
        row = _first_row(frame, pl.col(name).is_not_null())
        where = row_where(path, frame, row, id_field) if row is not None else str(path)
        got = f", got {shown_value(column[row])}" if row is not None else f" (column of {dtype})"
        raise InputError(f"{where}: {name!r} must be a list of {what}{got}")
    if dtype.inner == pl.Null:  # only empty lists (or lists of nulls, refused below)
        return column.cast(pl.List(pl.String))
    if dtype.inner != pl.String:
        row = _first_row(frame, pl.col(name).list.len() > 0)
        raise InputError(
            f"{row_where(path, frame, row, id_field)}: {name!r} must be a list of {what} "
            f"(strings), got {shown_value(column[row])}"
        )
    return column


def _check_names(
    frame: pl.DataFrame,
    lists: pl.Series,
    stripped: pl.Series,
    name: str,
    path: str | list[str],
    id_field: str,
) -> None:
    """No null and no blank skill names (the slow search for the row only on an error)."""
    flat = stripped.explode()
    lengths = stripped.list.len().fill_null(0)
    nulls = int(lengths.sum()) - int(flat.drop_nulls().len())
    blanks = int((flat.drop_nulls().str.len_bytes() == 0).sum())
    if not (nulls or blanks):
        return
    probe = frame.with_columns(stripped.alias("__names"))
    element = pl.element()
    row = _first_row(
        probe, pl.col("__names").list.eval(element.is_null() | (element == "")).list.any()
    )
    problem = "a null skill name" if nulls else "a blank skill name"
    where = row_where(path, frame, row, id_field)
    raise InputError(f"{where}: {name!r} has {problem} ({shown_value(lists[row])})")


def _canonical(names: pl.Expr, aliases: dict[str, str]) -> pl.Expr:
    stripped = names.str.strip_chars()
    if not aliases:
        return stripped
    return stripped.replace(aliases)


def skill_table(
    frame: pl.DataFrame,
    source: str | list[str],
    skills_field: str = "skills",
    id_field: str = "id",
    aliases: dict[str, str] | None = None,
) -> SkillTable:
    """Skill lists of the training pool (null or empty lists: no skills). A row without an
    id, or whose skills are not a list of names, is an InputError naming its file and line."""
    for name in (id_field, skills_field):
        if name not in frame.columns:
            raise InputError(f"{source}: no {name!r} column (columns: {frame.columns})")
    ids_column = frame.get_column(id_field)
    if ids_column.null_count():
        row = int(ids_column.is_null().arg_true()[0])
        raise InputError(f"{row_location(source, row)}: no {id_field!r} (null)")
    column = _name_lists(frame, skills_field, source, id_field, "skill names")
    lists = column.fill_null([]).list.eval(_canonical(pl.element(), aliases or {}))
    _check_names(frame, column, lists, skills_field, source, id_field)
    lengths = lists.list.len().to_numpy().astype(np.int64)
    flat = lists.explode().drop_nulls()
    names = sorted(flat.unique().to_list())
    code_of = {name: i for i, name in enumerate(names)}
    codes = flat.replace_strict(code_of, return_dtype=pl.Int64).to_numpy()
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = ids_column.cast(pl.String).to_list()
    return SkillTable(ids, offsets, codes, names, str(source))


def _check_correct(frame: pl.DataFrame, path: str) -> None:
    column = frame.get_column("correct")
    if column.dtype in (pl.Boolean, pl.Null):
        return
    row = _first_row(frame, pl.col("correct").is_not_null())
    if row is not None:
        raise InputError(
            f"{row_where(path, frame, row, 'id')}: 'correct' must be true or false, "
            f"got {shown_value(column[row])}"
        )


def _checked_rewards(frame: pl.DataFrame, path: str) -> pl.DataFrame:
    """`rewards` as lists of finite floats: a row with an empty list, a null, NaN or
    infinite step reward, or no list of numbers at all is an InputError naming it."""
    column = _as_list(frame.get_column("rewards"), pl.Float64)
    frame = frame.with_columns(column.alias("rewards"))
    where = lambda row: row_where(path, frame, row, "id")  # noqa: E731
    if not isinstance(column.dtype, pl.List) or not (
        column.dtype.inner.is_numeric() or column.dtype.inner == pl.Null
    ):
        non_empty = pl.col("rewards").is_not_null()
        if isinstance(column.dtype, pl.List):
            non_empty = pl.col("rewards").list.len() > 0
        row = _first_row(frame, non_empty)
        if row is not None:
            raise InputError(
                f"{where(row)}: 'rewards' must be a list of per-step reward numbers, "
                f"got {shown_value(column[row])}"
            )
    if isinstance(column.dtype, pl.List):
        rewards = column.cast(pl.List(pl.Float64))
    else:  # a column of nulls only (of text, say): no rewards given
        rewards = pl.Series("rewards", [None] * len(column), dtype=pl.List(pl.Float64))
    frame = frame.with_columns(rewards.alias("rewards"))
    r = pl.col("rewards")
    row = _first_row(frame, r.list.len() == 0)
    if row is not None:
        raise InputError(
            f"{where(row)}: 'rewards' is empty (a question needs its step rewards, or "
            "'correct' instead)"
        )
    bad = r.list.eval(pl.element().is_finite().not_().fill_null(True)).list.any()
    row = _first_row(frame, bad)
    if row is not None:
        raise InputError(
            f"{where(row)}: 'rewards' must be finite numbers, got {shown_value(rewards[row])}"
        )
    return frame


def read_evaluation(
    path: str,
    names: list[str],
    tau1: float,
    tau2: float,
    aliases: dict[str, str] | None = None,
) -> Evaluation:
    """Difficult questions and their missing skills from a JSONL/Parquet evaluation.

    A row is a question with ``correct`` (bool) or ``rewards`` (per-step floats: difficult
    when the last or the mean <= tau1, or an earlier one <= tau2) and ``missing_skills``
    (a list of names; null: none). A question with neither, an empty, NaN or null reward,
    a non-boolean ``correct`` or a ``missing_skills`` that is no list of names is an
    InputError naming the file, line and id.
    """
    frame = read_frame(path)
    if frame.height == 0:
        raise InputError(f"{path}: no questions")
    has_correct, has_rewards = "correct" in frame.columns, "rewards" in frame.columns
    if not (has_correct or has_rewards):
        raise InputError(f"{path}: each question needs 'correct' or 'rewards'")
    if "missing_skills" not in frame.columns:
        raise InputError(f"{path}: no 'missing_skills' column")
    if has_correct:
        _check_correct(frame, path)
    if has_rewards:
        frame = _checked_rewards(frame, path)
    given = [pl.col(name).is_null() for name in ("correct", "rewards") if name in frame.columns]
    row = _first_row(frame, pl.all_horizontal(given))
    if row is not None:
        raise InputError(
            f"{row_where(path, frame, row, 'id')}: the question has neither 'correct' nor 'rewards'"
        )
    column = _name_lists(frame, "missing_skills", path, "id", "skill names")
    frame = frame.with_columns(column.alias("missing_skills"))
    difficult = pl.lit(False)
    if has_rewards:
        rewards = pl.col("rewards")
        by_rewards = (
            (rewards.list.last() <= tau1)
            | (rewards.list.mean() <= tau1)
            | (rewards.list.head(rewards.list.len() - 1).list.min() <= tau2)
        ).fill_null(False)
        difficult = difficult | by_rewards
    if has_correct:
        difficult = difficult | (pl.col("correct") == False).fill_null(False)  # noqa: E712
    lists = frame.get_column("missing_skills").fill_null([])
    canonical = lists.list.eval(_canonical(pl.element(), aliases or {}))
    _check_names(frame, lists, canonical, "missing_skills", path, "id")
    hard = frame.with_columns(canonical.alias("missing_skills")).filter(difficult)
    missing = hard.get_column("missing_skills").list.unique()
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


def load_pool_frame(ctx: StageContext) -> tuple[pl.DataFrame, str | list[str]]:
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
    return read_frame(pool.path), pool.path


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
    inputs.origin.update(pool=str(source), evaluation=p.evaluation)
