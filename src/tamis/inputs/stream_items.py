"""Stream items for stream active learning: ids in arrival order, with utilities or class
probabilities, optional embeddings (dbal) and sub-stream keys.

Arrival order is the `order` column when the items have one (ties keep file order), else
file order. Items come from a Parquet or JSONL file, or the pool records' own fields (the
loader of the `stream_items` input).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

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
    """Check the items' columns and put them in arrival order."""
    names = table.column_names
    if id_field not in names:
        raise InputError(f"{source}: no {id_field!r} column (columns: {', '.join(names)})")
    ids_in_file = [str(v) for v in table.column(id_field).to_pylist()]
    if order_field is not None and order_field in names:
        order_column = table.column(order_field)
        if order_column.null_count:
            raise InputError(f"{source}: {order_field!r} has null values")
        order = np.asarray(order_column.to_numpy(), dtype=np.float64)
    else:
        order = np.arange(len(ids_in_file), dtype=np.float64)
    position = np.argsort(order, kind="stable")  # ties keep file order
    ids = [ids_in_file[i] for i in position]

    utility = probabilities = embeddings = None
    if utility_field is not None:
        if utility_field not in names:
            raise InputError(f"{source}: no {utility_field!r} column")
        values = table.column(utility_field).to_pylist()
        utility = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
        utility = utility[position]
    else:
        try:
            fields = resolve_fields(names, field)
        except KeyError as err:
            raise InputError(f"{source}: {err.args[0]}; or set utility_field") from None
        columns = {f: list_column(table.column(f), f, ids_in_file, source) for f in fields}
        probs = checked_probabilities(
            columns, fields, kind, temperature, blend_weight, ids_in_file, source
        )
        probabilities = probs[position]
    if embedding_field is not None:
        if embedding_field not in names:
            raise InputError(f"{source}: dbal needs an {embedding_field!r} column")
        vectors = list_column(table.column(embedding_field), embedding_field, ids_in_file, source)
        embeddings = vectors[position]
    keys = None
    if key_field is not None:
        if key_field not in names:
            raise InputError(f"{source}: no {key_field!r} column")
        all_keys = [str(k) for k in table.column(key_field).to_pylist()]
        keys = [all_keys[i] for i in position]
    return StreamItems(
        ids, position.astype(np.int64), order[position], keys, utility, probabilities,
        embeddings, source,
    )  # fmt: skip


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
    resume = read_json(p.resume) if p.resume is not None else None
    inputs.ids = pa.array(items.ids, pa.string())
    inputs.stream = StreamInputs(items, resume)
    inputs.origin["items"] = {"source": items.source, "resume": p.resume}
