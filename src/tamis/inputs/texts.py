"""Loader of the pool records' rendered texts, as digests aligned to the pool ids: what
exact-duplicate removal compares (the text the encoder saw, template applied), as it is and
normalised (NFKC, whitespace collapsed); with each text's length, and the values of the
record field the selector's `field` parameter names (a keeper order, e.g. a quality score)."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tamis.config import require
from tamis.inputs.context import (
    TEXTS,
    SelectionInputs,
    StageContext,
    input_loader,
    params_value,
)
from tamis.records import iter_pool_records


@dataclass
class PoolTexts:
    """Per pool position: 16-byte digests of its text as it is and normalised (all zeros
    where the pool records hold no record of that id), whether it has one, its length in
    characters, and the `field` values (NaN where absent or not a number)."""

    digest: np.ndarray  # (N,) dtype S16
    has_text: np.ndarray  # (N,) bool
    normalized: np.ndarray | None = None  # (N,) dtype S16
    length: np.ndarray | None = None  # (N,) int64
    field: np.ndarray | None = None  # (N,) float64, when params.field names a column
    # Re-reads the pool: (id, rendered text) in pool order (the n-gram rule streams them).
    stream: Callable[[], Iterator[tuple[str, str]]] | None = None


_SPACE = re.compile(r"\s+")


def normalized_text(text: str) -> str:
    """NFKC, whitespace runs collapsed to one space, stripped: copies that differ only in
    Unicode forms or spacing count as exact duplicates."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


@input_loader(TEXTS)
def load_pool_texts(ctx: StageContext, inputs: SelectionInputs) -> None:
    from tamis.embeddings.encoder import chat_template_function

    config = ctx.config
    pool = require(config.pool, "pool")
    chat = chat_template_function(config.embedding) if pool.template == "chat" else None
    ids = inputs.ids if isinstance(inputs.ids, pa.Array) else pa.array(inputs.ids, pa.string())
    field = params_value(ctx, "field")
    record_ids, digests, normalized, lengths, values = [], [], [], [], []
    for record in iter_pool_records(pool, chat, keep_fields=field is not None):
        record_ids.append(record.id)
        digests.append(_digest(record.text))
        normalized.append(_digest(normalized_text(record.text)))
        lengths.append(len(record.text))
        if field is not None:
            value = record.fields.get(field, len(record.text) if field == "length" else None)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            values.append(float(value) if number else np.nan)
    n = len(ids)
    texts = PoolTexts(
        np.zeros(n, dtype="S16"), np.zeros(n, dtype=bool), np.zeros(n, dtype="S16"),
        np.zeros(n, dtype=np.int64), None if field is None else np.full(n, np.nan),
    )  # fmt: skip
    if record_ids:
        # A pool id listed twice takes its first record's text (index_in finds the first).
        where = pc.index_in(ids, value_set=pa.array(record_ids, pa.string()))
        where = where.fill_null(-1).to_numpy().astype(np.int64)
        found = where >= 0
        texts.has_text = found
        texts.digest[found] = np.asarray(digests, dtype="S16")[where[found]]
        texts.normalized[found] = np.asarray(normalized, dtype="S16")[where[found]]
        texts.length[found] = np.asarray(lengths, dtype=np.int64)[where[found]]
        if field is not None:
            texts.field[found] = np.asarray(values, dtype=np.float64)[where[found]]
    texts.stream = lambda: ((r.id, r.text) for r in iter_pool_records(pool, chat))
    inputs.texts = texts
    inputs.origin["texts"] = {"pool": pool.path, "records": len(record_ids)}


def later_copies(
    texts: PoolTexts, candidates: np.ndarray, rank: np.ndarray | None = None,
    normalized: bool = False,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Among the candidate positions (a bool mask), those whose text repeats an earlier
    candidate's, and the position of that first one. `rank` (default: pool order) decides
    which is first; `normalized` compares normalised texts."""
    positions = np.flatnonzero(candidates & texts.has_text)
    digests = (texts.normalized if normalized else texts.digest)[positions]
    first_key = positions if rank is None else rank[positions]
    order = np.lexsort((first_key, digests))  # by text, then keeper order
    sorted_digests = digests[order]
    repeat = np.r_[False, sorted_digests[1:] == sorted_digests[:-1]]
    group_start = np.maximum.accumulate(np.where(~repeat, np.arange(len(order)), 0))
    copies = positions[order][repeat]
    first = positions[order][group_start][repeat]
    keep = np.argsort(copies if rank is None else rank[copies], kind="stable")
    return copies[keep], first[keep]
