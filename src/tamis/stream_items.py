"""Stream items for stream active learning: ids in arrival order, with utilities or class
probabilities, optional embeddings (dbal) and sub-stream keys.

Arrival order is the `order` column when the items have one (ties keep file order), else
file order. Items come from a Parquet or JSONL file, or the pool records' own fields.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tamis.probabilities import Kind, checked_probabilities, list_column, resolve_fields
from tamis.records import InputError


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
