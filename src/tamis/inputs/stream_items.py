"""Stream items for stream active learning: ids in arrival order, with utilities or class
probabilities, optional embeddings (dbal) and sub-stream keys.

Arrival order is the `order` column when the items have one (ties keep file order), else
file order. Items come from a Parquet or JSONL file, or the pool records' own fields (the
loader of the `stream_items` input).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tamis.config import require
from tamis.inputs.context import STREAM_ITEMS, SelectionInputs, StageContext, input_loader
from tamis.inputs.probabilities import Kind, checked_probabilities, list_column, resolve_fields
from tamis.records import InputError, iter_pool_records, read_json, read_table_files


@dataclass
class StreamItems:
    """Items in arrival order (`position` is each item's row in the source)."""

    ids: list[str]
    position: np.ndarray  # int64 rows of the source, in arrival order
    order: np.ndarray  # float64 arrival keys (the order column, else the row)
    keys: list[str] | None  # sub-stream of each item; None: one stream
    utility: np.ndarray | None  # float64, given directly
    probabilities: np.ndarray | None  # (n, C) float32
    embeddings: np.ndarray | None  # (n, D) float64
    source: str

    def __len__(self) -> int:
        return len(self.ids)


def stream_items(
    table: pa.Table,
    source: str,
    *,
    id_field: str = "id",
    utility_field: str | None = None,
    field: str | list[str] = "auto",
    kind: Kind = "auto",
    temperature: float = 1.0,
    blend_weight: float = 0.5,
    embedding_field: str | None = None,
    order_field: str | None = "order",
    key_field: str | None = None,
) -> StreamItems:
    """Check the items' columns and put them in arrival order. A row whose id, order,
    utility, key or vectors are missing or of the wrong kind is an InputError naming the
    source, the row (0-based, in the source's order) and its id."""
    names = table.column_names
    if id_field not in names:
        raise InputError(f"{source}: no {id_field!r} column (columns: {', '.join(names)})")
    ids_in_file = _ids(table.column(id_field), id_field, source)
    if order_field is not None and order_field in names:
        order = _numbers(table.column(order_field), order_field, ids_in_file, source)
        bad = np.flatnonzero(~np.isfinite(order))
        if len(bad):
            raise InputError(
                f"{source}: {_row(int(bad[0]), ids_in_file)}: {order_field!r} must be a "
                "number (the arrival order), got "
                f"{table.column(order_field)[int(bad[0])].as_py()!r}"
            )
    else:
        order = np.arange(len(ids_in_file), dtype=np.float64)
    position = np.argsort(order, kind="stable")  # ties keep file order
    ids = [ids_in_file[i] for i in position]

    utility = probabilities = embeddings = None
    if utility_field is not None:
        if utility_field not in names:
            raise InputError(f"{source}: no {utility_field!r} column")
        # Null or NaN: an item with no utility, seen but never queried.
        utility = _numbers(table.column(utility_field), utility_field, ids_in_file, source)
        utility = utility[position]
    else:
        try:
            fields = resolve_fields(names, field)
        except KeyError as err:
            raise InputError(f"{source}: {err.args[0]}; or set utility_field") from None
        columns = {
            f: list_column(_number_lists(table.column(f), f, ids_in_file, source), f,
                           ids_in_file, source)
            for f in fields
        }  # fmt: skip
        probs = checked_probabilities(
            columns, fields, kind, temperature, blend_weight, ids_in_file, source
        )
        probabilities = probs[position]
    if embedding_field is not None:
        if embedding_field not in names:
            raise InputError(f"{source}: dbal needs an {embedding_field!r} column")
        column = _number_lists(table.column(embedding_field), embedding_field, ids_in_file, source)
        vectors = list_column(column, embedding_field, ids_in_file, source)
        bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        if len(bad):
            raise InputError(
                f"{source}: {_row(int(bad[0]), ids_in_file)}: {embedding_field!r} holds a "
                "null, NaN or infinite value"
            )
        embeddings = vectors[position]
    keys = None
    if key_field is not None:
        if key_field not in names:
            raise InputError(f"{source}: no {key_field!r} column")
        column = table.column(key_field)
        if pa.types.is_nested(column.type) or column.null_count:
            row = _first(
                column, lambda c: pc.is_null(c) if not pa.types.is_nested(c.type) else None
            )
            raise InputError(
                f"{source}: {_row(row, ids_in_file)}: {key_field!r} must be a sub-stream name, "
                f"got {column[row].as_py()!r}"
            )
        all_keys = [str(k) for k in column.to_pylist()]
        keys = [all_keys[i] for i in position]
    return StreamItems(
        ids, position.astype(np.int64), order[position], keys, utility, probabilities,
        embeddings, source,
    )  # fmt: skip


def _row(row: int, ids: list[str]) -> str:
    return f"row {row} (id {ids[row]!r})"


def _first(column: pa.ChunkedArray, bad) -> int:
    """The first row `bad(column)` marks (None: the first row of all)."""
    marks = bad(column)
    if marks is None:
        return 0
    return int(np.flatnonzero(marks.to_numpy(zero_copy_only=False))[0])


def _ids(column: pa.ChunkedArray, name: str, source: str) -> list[str]:
    """The ids as strings; a null or non-scalar id (a list, an object) is an InputError."""
    if pa.types.is_nested(column.type) or column.null_count:
        row = _first(column, lambda c: pc.is_null(c) if not pa.types.is_nested(c.type) else None)
        raise InputError(
            f"{source}: row {row}: {name!r} must be an id, got {column[row].as_py()!r}"
        )
    return [str(v) for v in column.to_pylist()]


def _numbers(column: pa.ChunkedArray, name: str, ids: list[str], source: str) -> np.ndarray:
    """A column of numbers as float64 (null: NaN); text, booleans or lists are an
    InputError naming the first row holding one."""
    kind = column.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):  # arrival times
        column = pc.cast(column, pa.int64())
    elif not (
        pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
        or pa.types.is_null(kind)
    ):  # fmt: skip
        row = _first(column, lambda c: pc.is_valid(c))
        raise InputError(
            f"{source}: {_row(row, ids)}: {name!r} must be a number, got {column[row].as_py()!r}"
        )
    values = column.to_numpy() if column.num_chunks else np.zeros(0)
    return np.asarray(values, dtype=np.float64)


def _number_lists(column: pa.ChunkedArray, name: str, ids: list[str], source: str):
    """A list column whose values are not numbers (text, booleans) is an InputError naming
    the first row holding one (the list's shape is checked by `list_column`)."""
    kind = column.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        inner = kind.value_type
        if not (
            pa.types.is_integer(inner) or pa.types.is_floating(inner) or pa.types.is_null(inner)
        ):
            row = _first(column, lambda c: pc.greater(pc.list_value_length(c), 0))
            raise InputError(
                f"{source}: {_row(row, ids)}: {name!r} must be a list of numbers, got "
                f"{column[row].as_py()!r}"
            )
    return column


def table_from_records(records: Iterable[dict]) -> pa.Table:
    """Pool records' fields (dicts) as an Arrow table."""
    return pa.Table.from_pylist(list(records))


def take_items(items: StreamItems, rows: np.ndarray) -> StreamItems:
    """The items at these arrival rows (in that order): a stream without the others."""

    def pick(values):
        return None if values is None else values[rows]

    return StreamItems(
        ids=[items.ids[i] for i in rows],
        position=items.position[rows],
        order=items.order[rows],
        keys=None if items.keys is None else [items.keys[i] for i in rows],
        utility=pick(items.utility),
        probabilities=pick(items.probabilities),
        embeddings=pick(items.embeddings),
        source=items.source,
    )


@dataclass
class StreamInputs:
    """The stream, and each sub-stream's saved state when resuming (`params.resume`)."""

    items: StreamItems
    resume: dict[str, dict] | None


def read_stream_state(path: str) -> dict[str, dict]:
    """A stream_state.json (sub-stream key -> that stream's state) to resume from: a
    missing file, one that is not JSON, or not an object of state objects is an InputError
    naming the file (and the sub-stream). The states' own keys are checked by the selector,
    which knows what a state holds."""
    try:
        data = read_json(path)
    except OSError as err:
        raise InputError(f"{path}: cannot read the stream state to resume from ({err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a JSON stream state ({err})") from None
    if not isinstance(data, dict):
        raise InputError(
            f"{path}: expected a JSON object of sub-stream states (a stream_state.json written "
            f"by stream_al), got {type(data).__name__ if data is not None else 'null'}"
        )
    for key, state in data.items():
        if not isinstance(state, dict):
            raise InputError(
                f"{path}: sub-stream {key!r}: expected a state object, got {state!r:.60}"
            )
    return data


@input_loader(STREAM_ITEMS)
def load_stream_items(ctx: StageContext, inputs: SelectionInputs) -> None:
    """The stream's items from `params.items`, else from the pool records' fields; the pool
    ids are the items' ids in arrival order."""
    config, p = ctx.config, ctx.params
    id_field = config.pool.id_field if config.pool is not None else "id"
    if p.items is not None:
        table, source = read_table_files(p.items), p.items
    else:
        pool = require(config.pool, "pool")
        fields = (r.fields for r in iter_pool_records(pool, keep_fields=True))
        table, source = table_from_records(fields), f"pool {pool.path}"
        if table.num_rows == 0:  # else: "no 'id' column (columns: )"
            raise InputError(
                f"{source}: no pool record to stream (every line blank or rejected; a pool "
                "record needs a text field); items without text go in "
                "selection.params.items"
            )
    items = stream_items(
        table,
        source,
        id_field=id_field,
        utility_field=p.utility_field,
        field=p.field,
        kind=p.kind,
        temperature=p.temperature,
        blend_weight=p.blend_weight,
        embedding_field=p.embedding_field if p.strategy == "dbal" else None,
        order_field=p.order_field,
        key_field=p.key_field,
    )
    resume = read_stream_state(p.resume) if p.resume is not None else None
    inputs.ids = pa.array(items.ids, pa.string())
    inputs.stream = StreamInputs(items, resume)
    inputs.origin["items"] = {"source": items.source, "resume": p.resume}
