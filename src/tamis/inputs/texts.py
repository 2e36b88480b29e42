"""Loader of the pool records' rendered texts, as digests aligned to the pool ids: what
exact-duplicate removal compares (the text the encoder saw, template applied)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tamis.config import require
from tamis.inputs.context import TEXTS, SelectionInputs, StageContext, input_loader
from tamis.records import iter_pool_records


@dataclass
class PoolTexts:
    """Per pool position: a 16-byte digest of its text (all zeros where the pool records
    hold no record of that id) and whether it has one."""

    digest: np.ndarray  # (N,) dtype S16
    has_text: np.ndarray  # (N,) bool


@input_loader(TEXTS)
def load_pool_texts(ctx: StageContext, inputs: SelectionInputs) -> None:
    from tamis.embeddings.encoder import chat_template_function

    config = ctx.config
    pool = require(config.pool, "pool")
    chat = chat_template_function(config.embedding) if pool.template == "chat" else None
    ids = inputs.ids if isinstance(inputs.ids, pa.Array) else pa.array(inputs.ids, pa.string())
    record_ids, digests = [], []
    for record in iter_pool_records(pool, chat):
        record_ids.append(record.id)
        digests.append(hashlib.blake2b(record.text.encode("utf-8"), digest_size=16).digest())
    digest = np.zeros(len(ids), dtype="S16")
    has_text = np.zeros(len(ids), dtype=bool)
    if record_ids:
        # A pool id listed twice takes its first record's text (index_in finds the first).
        where = pc.index_in(ids, value_set=pa.array(record_ids, pa.string()))
        where = where.fill_null(-1).to_numpy().astype(np.int64)
        found = where >= 0
        digest[found] = np.asarray(digests, dtype="S16")[where[found]]
        has_text = found
    inputs.texts = PoolTexts(digest, has_text)
    inputs.origin["texts"] = {"pool": pool.path, "records": len(record_ids)}


def later_copies(texts: PoolTexts, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Among the candidate positions (a bool mask), those whose text repeats an earlier
    candidate's, and the position of that first one. Pool order decides which is first."""
    positions = np.flatnonzero(candidates & texts.has_text)
    digests = texts.digest[positions]
    order = np.lexsort((positions, digests))  # by text, then pool order
    sorted_digests = digests[order]
    repeat = np.r_[False, sorted_digests[1:] == sorted_digests[:-1]]
    group_start = np.maximum.accumulate(np.where(~repeat, np.arange(len(order)), 0))
    copies = positions[order][repeat]
    first = positions[order][group_start][repeat]
    keep = np.argsort(copies, kind="stable")
    return copies[keep], first[keep]
