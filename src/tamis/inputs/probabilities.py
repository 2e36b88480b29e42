"""Class-probability vectors (PCoreSet) and labelled sets, read and checked; the loaders of
the `probabilities` and `labeled` inputs.

Probabilities come from a column of pool rows: ``probs`` (rows summing to 1), ``logits``
(softmax at a temperature), or two heads blended as in the PCoreSet reference
((1 - w) p_1 + w p_2, w = 0.5). Rows come from a Parquet file (read column-wise by Arrow,
fast for millions of rows), a JSONL file, or the pool records themselves. Every problem
names the file, the row and the id.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from tamis.config import ConfigError, require
from tamis.inputs.context import (
    LABELED,
    PROBABILITIES,
    SelectionInputs,
    StageContext,
    input_loader,
)
from tamis.records import InputError, parquet_source, read_table_files, resolve_inputs

log = logging.getLogger(__name__)

SUM_TOLERANCE = 1e-4
# Columns tried, in order, when the field is "auto".
AUTO_FIELDS: tuple[tuple[str, ...], ...] = (
    ("probs",),
    ("logits",),
    ("probs_ce", "probs_kd"),
    ("logits_ce", "logits_kd"),
)
Kind = Literal["auto", "probs", "logits"]


@dataclass
class ProbabilityTable:
    """Pool ids in order and their (N, C) float32 probability vectors."""

    ids: list[str]
    probs: np.ndarray
    fields: tuple[str, ...]  # the columns they came from
    source: str

    @property
    def n_classes(self) -> int:
        return int(self.probs.shape[1])


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature, in float64 (stable: max subtracted)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def kind_of(field: str, kind: Kind) -> str:
    if kind != "auto":
        return kind
    return "logits" if "logit" in field else "probs"


def to_probabilities(
    columns: dict[str, np.ndarray],
    fields: Sequence[str],
    kind: Kind = "auto",
    temperature: float = 1.0,
    blend_weight: float = 0.5,
    row_names: Sequence[str] | None = None,
    where: str = "",
) -> np.ndarray:
    """(N, C) float32 probabilities from one column, or two heads blended.

    Probability columns must be finite, non-negative and sum to 1 within 1e-4 per row;
    the error names the first bad row (by ``row_names`` when given).
    """
    if len(fields) not in (1, 2):
        raise ValueError(f"expected one probability field or two heads, got {list(fields)}")
    heads = []
    for field in fields:
        values = np.asarray(columns[field], dtype=np.float64)
        _check_finite(values, field, row_names, where)
        if kind_of(field, kind) == "logits":
            heads.append(softmax(values, temperature))
        else:
            _check_distribution(values, field, row_names, where)
            heads.append(values)
    if len(heads) == 2:
        if heads[0].shape != heads[1].shape:
            raise ValueError(
                f"{where}heads {fields[0]!r} and {fields[1]!r} have {heads[0].shape[1]} and "
                f"{heads[1].shape[1]} classes"
            )
        probs = (1.0 - blend_weight) * heads[0] + blend_weight * heads[1]
    else:
        probs = heads[0]
    return probs.astype(np.float32)


def checked_probabilities(
    columns: dict[str, np.ndarray],
    fields: Sequence[str],
    kind: Kind,
    temperature: float,
    blend_weight: float,
    row_names: Sequence[str],
    where: str,
) -> np.ndarray:
    """`to_probabilities` for an input file: a bad row is an InputError naming `where`."""
    try:
        return to_probabilities(
            columns, fields, kind, temperature, blend_weight, row_names, f"{where}: "
        )
    except ValueError as err:
        raise InputError(str(err)) from None


def _row_name(row: int, row_names: Sequence[str] | None) -> str:
    return f"row {row} (id {row_names[row]!r})" if row_names is not None else f"row {row}"


def _check_finite(values: np.ndarray, field: str, row_names, where: str) -> None:
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if len(bad):
        raise ValueError(
            f"{where}{_row_name(int(bad[0]), row_names)}: {field!r} holds a NaN or infinite "
            f"value ({len(bad)} such rows)"
        )


def _check_distribution(values: np.ndarray, field: str, row_names, where: str) -> None:
    negative = np.flatnonzero((values < 0).any(axis=1))
    if len(negative):
        row = int(negative[0])
        raise ValueError(
            f"{where}{_row_name(row, row_names)}: {field!r} has a negative probability "
            f"({values[row].min():g}); pass logits with kind: logits"
        )
    sums = values.sum(axis=1)
    off = np.flatnonzero(np.abs(sums - 1.0) > SUM_TOLERANCE)
    if len(off):
        row = int(off[0])
        raise ValueError(
            f"{where}{_row_name(row, row_names)}: {field!r} sums to {sums[row]:.6g}, not 1 "
            f"(tolerance {SUM_TOLERANCE:g}; {len(off)} such rows); if these are logits, "
            "set kind: logits"
        )


def resolve_fields(available: Iterable[str], field: str | list[str]) -> tuple[str, ...]:
    """The probability column(s) to read: `field`, or the first of AUTO_FIELDS present."""
    names = set(available)
    if field != "auto":
        wanted = (field,) if isinstance(field, str) else tuple(field)
        missing = [f for f in wanted if f not in names]
        if missing:
            raise KeyError(f"no column {missing[0]!r} (columns: {', '.join(sorted(names))})")
        return wanted
    for candidate in AUTO_FIELDS:
        if all(f in names for f in candidate):
            return candidate
    tried = ", ".join("+".join(c) for c in AUTO_FIELDS)
    raise KeyError(f"no probability column found (looked for {tried}); set field:")


def read_probability_table(
    path: str,
    field: str | list[str] = "auto",
    kind: Kind = "auto",
    temperature: float = 1.0,
    blend_weight: float = 0.5,
    id_field: str = "id",
) -> ProbabilityTable:
    """Probabilities from Parquet or JSONL files with an id column (glob or list of files)."""
    ids: list[str] = []
    columns: dict[str, list[np.ndarray]] = {}
    fields: tuple[str, ...] = ()
    sources = resolve_inputs(path)
    for source in sources:
        try:
            if source.format == "parquet":
                file_ids, file_columns, file_fields = _read_parquet(source.path, field, id_field)
            elif source.format == "jsonl":
                file_ids, file_columns, file_fields = _read_jsonl(source.path, field, id_field)
            else:
                raise InputError(f"{source.path}: probabilities must be Parquet or JSONL")
        except KeyError as err:
            raise InputError(f"{source.path}: {err.args[0]}") from None
        if fields and file_fields != fields:
            raise InputError(f"{source.path}: has columns {file_fields}, earlier files {fields}")
        fields = file_fields
        ids.extend(file_ids)
        for name, values in file_columns.items():
            columns.setdefault(name, []).append(values)
    joined = {name: _stack(parts, name, path) for name, parts in columns.items()}
    probs = checked_probabilities(joined, fields, kind, temperature, blend_weight, ids, path)
    _check_unique(ids, path)
    return ProbabilityTable(ids, probs, fields, path)


def probabilities_from_rows(
    rows: Iterable[tuple[str, dict]],
    field: str | list[str] = "auto",
    kind: Kind = "auto",
    temperature: float = 1.0,
    blend_weight: float = 0.5,
    source: str = "pool",
) -> ProbabilityTable:
    """Probabilities from (id, record) pairs, e.g. the pool records' own fields."""
    ids: list[str] = []
    vectors: dict[str, list] = {}
    fields: tuple[str, ...] = ()
    for rid, record in rows:
        if not fields:
            try:
                fields = resolve_fields(record, field)
            except KeyError as err:
                raise InputError(f"{source}: record {rid!r}: {err.args[0]}") from None
        for name in fields:
            value = record.get(name)
            if not isinstance(value, list | tuple | np.ndarray):
                raise InputError(f"{source}: record {rid!r}: {name!r} is not a list ({value!r})")
            vectors.setdefault(name, []).append(value)
        ids.append(rid)
    if not ids:
        raise InputError(f"{source}: no records")
    joined = {name: _stack_lists(values, name, ids, source) for name, values in vectors.items()}
    probs = checked_probabilities(joined, fields, kind, temperature, blend_weight, ids, source)
    _check_unique(ids, source)
    return ProbabilityTable(ids, probs, fields, source)


def read_id_list(path: str) -> list[str]:
    """Ids from a text file (one per line), JSONL ({"id": ...} per line) or Parquet (`id`)."""
    if path.endswith(".parquet"):
        table = read_table_files(path)
        if "id" not in table.column_names:
            raise InputError(f"{path}: no 'id' column (columns: {table.column_names})")
        return [str(v) for v in table.column("id").to_pylist()]
    ids = []
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as stream:
        for number, line in enumerate(stream.read().decode("utf-8").splitlines(), start=1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                try:
                    rid = json.loads(line).get("id")
                except (json.JSONDecodeError, AttributeError) as err:
                    raise InputError(
                        f"{path}:{number}: not a JSON object with an id: {err}"
                    ) from None
                if rid is None:
                    raise InputError(f"{path}:{number}: record has no 'id'")
                ids.append(str(rid))
            else:
                ids.append(line)
    return ids


def positions_of(
    ids: Sequence[str] | pa.Array, wanted: Sequence[str], what: str, where: str = "the pool"
) -> np.ndarray:
    """Positions in `ids` of the `wanted` ids, in their order; unknown ids raise an error
    naming them."""
    if isinstance(ids, pa.Array | pa.ChunkedArray):
        ids = ids.to_pylist()
    position = {rid: i for i, rid in enumerate(ids)}
    unknown = [rid for rid in wanted if rid not in position]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise InputError(f"{what}: {len(unknown)} ids are not in {where}: {shown}{more}")
    return np.asarray([position[rid] for rid in wanted], dtype=np.int64)


_ABSENT = object()


def true_ids(
    rows: Iterable[tuple[str, Any, str]], field: str, source: str, required: bool = True
) -> list[str] | None:
    """Ids whose `field` is true, from (id, value, where) rows (value `_ABSENT` where the
    record lacks the field; null counts as false). A value that is not a boolean is an
    InputError naming where and the id; a field no row has is one too (None when not
    `required`)."""
    ids, present = [], False
    for rid, value, where in rows:
        if value is _ABSENT:
            continue
        present = True
        if value is None:
            continue
        if not isinstance(value, bool | np.bool_):
            raise InputError(
                f"{source}: {where} (id {rid!r}): {field!r} must be true or false, got {value!r}"
            )
        if value:
            ids.append(str(rid))
    if not present:
        if not required:
            return None
        raise InputError(f"{source}: no record has a {field!r} field")
    return ids


def flagged_ids(path: str, field: str, id_field: str = "id", required: bool = True):
    """Ids of the rows of Parquet or JSONL files whose boolean `field` is true (None: no
    such field and not `required`)."""
    ids: list[str] = []
    found = False
    for source in resolve_inputs(path):
        if source.format == "parquet":
            table = read_table_files(source.path)
            if id_field not in table.column_names:
                raise InputError(f"{source.path}: no {id_field!r} column")
            if field not in table.column_names:
                continue
            rows = zip(table.column(id_field).to_pylist(), table.column(field).to_pylist(),
                       (f"row {i}" for i in range(table.num_rows)), strict=False)  # fmt: skip
        else:
            with FileSystems.open(source.path, compression_type=CompressionTypes.AUTO) as stream:
                records = [
                    (number, json.loads(line))
                    for number, line in enumerate(stream.read().splitlines(), start=1)
                    if line.strip()
                ]
            rows = ((r.get(id_field), r.get(field, _ABSENT), f"line {n}") for n, r in records)
        found_here = true_ids(rows, field, source.path, required=False)
        if found_here is not None:
            found = True
            ids += found_here
    if not found:
        if not required:
            return None
        raise InputError(f"{path}: no record has a {field!r} field")
    return ids


def _read_parquet(path: str, field, id_field: str):
    try:
        parquet = pq.ParquetFile(parquet_source(path))
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path}: not a readable Parquet file ({err})") from None
    names = parquet.schema_arrow.names
    if id_field not in names:
        raise KeyError(f"no {id_field!r} column (columns: {', '.join(names)})")
    fields = resolve_fields(names, field)
    table = parquet.read(columns=[id_field, *fields])
    ids = [str(v) for v in table.column(id_field).to_pylist()]
    columns = {name: list_column(table.column(name), name, ids, path) for name in fields}
    return ids, columns, fields


def list_column(column: pa.ChunkedArray, name: str, ids: list[str], path: str) -> np.ndarray:
    """A list<number> column as an (N, C) array; ragged or null rows are errors."""
    array = column.combine_chunks()
    if not (pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type)):
        raise InputError(f"{path}: column {name!r} is {array.type}, not a list of numbers")
    if array.null_count:
        row = int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputError(f"{path}: {_row_name(row, ids)}: {name!r} is null")
    if pa.types.is_fixed_size_list(array.type):
        width = array.type.list_size
    else:
        lengths = np.diff(array.offsets.to_numpy())
        width = int(lengths[0]) if len(lengths) else 0
        ragged = np.flatnonzero(lengths != width)
        if len(ragged):
            row = int(ragged[0])
            raise InputError(
                f"{path}: {_row_name(row, ids)}: {name!r} has {lengths[row]} values, "
                f"row 0 has {width}"
            )
    values = array.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float64).reshape(len(array), width)


def _read_jsonl(path: str, field, id_field: str):
    ids: list[str] = []
    vectors: dict[str, list] = {}
    fields: tuple[str, ...] = ()
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as stream:
        for number, line in enumerate(iter(stream.readline, b""), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{number}: malformed JSON: {err}") from None
            if not isinstance(record, dict) or id_field not in record:
                raise InputError(f"{path}:{number}: record has no {id_field!r}")
            if not fields:
                fields = resolve_fields(record, field)
            for name in fields:
                value = record.get(name)
                if not isinstance(value, list):
                    raise InputError(f"{path}:{number}: {name!r} is not a list ({value!r})")
                vectors.setdefault(name, []).append(value)
            ids.append(str(record[id_field]))
    columns = {name: _stack_lists(v, name, ids, path) for name, v in vectors.items()}
    return ids, columns, fields


def _stack_lists(values: list, name: str, ids: list[str], where: str) -> np.ndarray:
    width = len(values[0])
    for row, value in enumerate(values):
        if len(value) != width:
            raise InputError(
                f"{where}: {_row_name(row, ids)}: {name!r} has {len(value)} values, "
                f"the first row has {width}"
            )
    try:
        return np.asarray(values, dtype=np.float64).reshape(len(values), width)
    except (TypeError, ValueError) as err:
        raise InputError(f"{where}: {name!r} holds a value that is not a number: {err}") from None


def _stack(parts: list[np.ndarray], name: str, path: str) -> np.ndarray:
    widths = {p.shape[1] for p in parts}
    if len(widths) > 1:
        raise InputError(f"{path}: {name!r} has different widths across files: {widths}")
    return np.concatenate(parts)


def _check_unique(ids: list[str], where: str) -> None:
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        for row, rid in enumerate(ids):
            if rid in seen:
                raise InputError(f"{where}: row {row}: id {rid!r} appears twice")
            seen.add(rid)


# ------------------------------------------------------------------------------- loaders


def probability_table(ctx: StageContext) -> ProbabilityTable:
    """The pool's class probabilities: from `params.probabilities`, else the pool records."""
    from tamis.records import iter_pool_records

    config, p = ctx.config, ctx.params
    options = dict(
        field=p.field, kind=p.kind, temperature=p.temperature, blend_weight=p.blend_weight
    )
    if p.probabilities is not None:
        id_field = config.pool.id_field if config.pool is not None else "id"
        return read_probability_table(p.probabilities, id_field=id_field, **options)
    pool = config.pool
    if pool is None:
        raise ConfigError(
            f"{ctx.key}.params.probabilities: required when there is no pool section "
            "(a Parquet or JSONL file with id and probabilities)"
        )
    rows = ((r.id, r.fields) for r in iter_pool_records(pool, keep_fields=True))
    return probabilities_from_rows(rows, source=f"pool {pool.path}", **options)


@input_loader(PROBABILITIES)
def load_probabilities(ctx: StageContext, inputs: SelectionInputs) -> None:
    from tamis.records import iter_pool_records

    table = probability_table(ctx)
    where = f"the probabilities ({table.source})"
    pool = ctx.config.pool
    if ctx.pool_input == PROBABILITIES:
        if pool is not None and ctx.params.probabilities is not None:
            # The records are the pool: the file must cover them, no more, no fewer.
            pool_ids = [r.id for r in iter_pool_records(pool)]
            positions_of(table.ids, pool_ids, f"the pool ({pool.path})", where)
            positions_of(pool_ids, table.ids, where, f"the pool ({pool.path})")
        inputs.ids = pa.array(table.ids, pa.string())
        inputs.probabilities = table.probs
    else:  # align to the pool's order; ids the pool does not have are an error too
        pool_ids = list(inputs.ids)
        rows = positions_of(table.ids, pool_ids, f"the pool ({ctx.pool_input})", where)
        if len(table.ids) != len(pool_ids):
            positions_of(pool_ids, table.ids, where, f"the pool ({ctx.pool_input})")
        inputs.probabilities = table.probs[rows]
    inputs.origin["probabilities"] = {
        "source": table.source,
        "fields": list(table.fields),
        "classes": table.n_classes,
    }


AUTO_LABELED_FIELD = "labeled"


@input_loader(LABELED)
def load_labeled(ctx: StageContext, inputs: SelectionInputs) -> None:
    """Pool positions of the labelled examples named by `labeled` (a file of ids) or
    `labeled_field` (a boolean column); without either, a boolean `labeled` column of the
    probabilities file or the pool records is used when there is one (said in the log)."""
    from tamis.records import iter_pool_records

    p = ctx.params
    if p.labeled is not None and p.labeled_field is not None:
        raise ConfigError(f"{ctx.key}.params: give labeled (a file of ids) or labeled_field")
    wanted: list[str] | None
    if p.labeled is not None:
        wanted = read_id_list(p.labeled)
        origin = {"path": p.labeled}
    else:
        field = p.labeled_field or AUTO_LABELED_FIELD
        required = p.labeled_field is not None
        source = getattr(p, "probabilities", None)
        if source is not None:
            wanted = flagged_ids(source, field, required=required)
            origin = {"path": source, "field": field}
        elif ctx.config.pool is not None:
            pool = ctx.config.pool
            rows = ((r.id, r.fields.get(field, _ABSENT), f"{r.source}:{r.line}")
                    for r in iter_pool_records(pool, keep_fields=True))  # fmt: skip
            wanted = true_ids(rows, field, "pool", required=required)
            origin = {"path": pool.path, "field": field}
        else:
            if required:  # labeled_field needs records to read
                require(ctx.config.pool, "pool")
            wanted = None
        if wanted is not None and not required:
            log.info("labelled set: the %r column (%d true)", field, len(wanted))
    if wanted is None:
        inputs.labeled = np.zeros(0, dtype=np.int64)
        inputs.origin["labeled"] = {"count": 0}
        return
    positions = np.unique(positions_of(inputs.ids, wanted, f"{ctx.key}.params.labeled"))
    origin["count"] = len(positions)
    inputs.labeled = positions
    inputs.origin["labeled"] = origin
