"""Loader of the `eval_sets` input (decontaminate): named evaluation sets from the selector's
``against`` parameter, each records (embedded like the pool; their texts kept for the n-gram
rule) or an embeddings dir (vectors only)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from tamis.config import ConfigError, PoolConfig, QuerySource
from tamis.inputs.context import EVAL_SETS, SelectionInputs, StageContext, input_loader
from tamis.inputs.embeddings import query_embeddings
from tamis.records import InputError, iter_pool_records


@dataclass
class EvalSet:
    ids: list[str]
    vectors: np.ndarray  # (m, dim) float32
    texts: list[str] | None  # rendered like the pool's; None for an embeddings dir


@input_loader(EVAL_SETS)
def load_eval_sets(ctx: StageContext, inputs: SelectionInputs) -> None:
    against: dict[str, QuerySource] = ctx.params.against
    if not against:
        raise ConfigError(f"{ctx.key}.params.against: name at least one evaluation set")
    sets, origins = {}, {}
    for name, source in against.items():
        key = f"{ctx.key}.params.against.{name}"
        try:
            ids, vectors, origins[name] = query_embeddings(ctx, f"eval-{name}", source, key)
        except InputError as err:
            raise InputError(f"{key}: {err}") from None
        if inputs.dim is not None and vectors.shape[1] != inputs.dim:
            raise ConfigError(
                f"{ctx.key}.params.against.{name}: dimension {vectors.shape[1]} does not "
                f"match the pool embeddings ({inputs.dim})"
            )
        texts = None
        if source.path is not None:
            pool = ctx.config.pool or PoolConfig(path=source.path)
            records = iter_pool_records(dataclasses.replace(pool, path=source.path, strict=False))
            by_id = {r.id: r.text for r in records}
            texts = [by_id[i] for i in ids]
        sets[name] = EvalSet(ids, vectors, texts)
    inputs.eval_sets = sets
    inputs.origin["eval_sets"] = origins
