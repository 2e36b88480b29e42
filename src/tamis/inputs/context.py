"""What a select stage loads for a selector: the input names, `SelectionInputs`, and the
registry of loaders (one per input name; each module of this package registers its own).

A loader knows its input, never a selector: it reads what the stage's config and the
selector's parameters name, checks it, and fills its fields of `SelectionInputs`. The loader
of the selector's `pool_input` runs first and sets the pool ids; the others align to them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from tamis.config import Config, ConfigError

# The named inputs a selector may declare.
EMBEDDINGS = "embeddings"  # the pool's vectors: ids, dim, re-iterable blocks
QUERY_EMBEDDINGS = "query_embeddings"  # target tasks' query vectors (the queries section)
PROBABILITIES = "probabilities"  # (N, C) class-probability vectors of the pool
LABELED = "labeled"  # pool positions already labelled (params.labeled / labeled_field)
STREAM_ITEMS = "stream_items"  # items in arrival order, decided one by one (stream_al)
SKILLS = "skills"  # skill tags of the pool and the student's evaluation (stat)
BUCKETED_POOL = "bucketed_pool"  # pool rows with a quality bucket or score, and the fit
RETRIEVAL = "retrieval"  # queries, qrels and a corpus to mine candidates from (cet)
TEXTS = "texts"  # digests of the pool records' rendered texts (exact duplicates)
EVAL_SETS = "eval_sets"  # evaluation sets to decontaminate against (params.against)


@dataclass
class SelectionInputs:
    """What the select stage hands a selector: the declared inputs, loaded."""

    # Pool ids in pool order: a list, or an Arrow string array (a million Python strings
    # would cost ~100 MB; the select stage passes Arrow and only picks become strings).
    ids: Sequence[str] | pa.Array
    # Re-iterable (B, dim) float32 blocks of the pool embeddings, in pool order; a callable
    # so a selector can stream the pool (several passes if it needs them).
    blocks: Callable[[], Iterator[np.ndarray]] | None = None
    dim: int | None = None
    queries: dict[str, np.ndarray] = field(default_factory=dict)  # task -> (Q, dim)
    # Pool positions a selector must not pick: exact duplicates removed first, items an
    # earlier recipe stage did not keep.
    excluded: np.ndarray | None = None
    probabilities: np.ndarray | None = None  # (N, C) float32, rows summing to 1
    labeled: np.ndarray | None = None  # pool positions of labelled examples
    skills: Any = None  # tamis.inputs.skills.SkillInputs
    stream: Any = None  # tamis.inputs.stream_items.StreamInputs
    buckets: Any = None  # tamis.inputs.buckets.QualityBuckets
    retrieval: Any = None  # tamis.inputs.retrieval.RetrievalInputs
    texts: Any = None  # tamis.inputs.texts.PoolTexts
    index: Any = None  # the index section (IndexConfig): how to index the pool's vectors
    eval_sets: Any = None  # name -> tamis.inputs.eval_sets.EvalSet
    # Where each input came from (paths, fingerprints): the manifest's "inputs".
    origin: dict[str, Any] = field(default_factory=dict)

    @property
    def n_candidates(self) -> int:
        """Pool items that may be picked: not excluded, not labelled."""
        return int(candidate_mask(self, include_labeled=False).sum())


def candidate_mask(inputs: SelectionInputs, include_labeled: bool = True) -> np.ndarray:
    """True for the pool positions a selector may pick (labelled ones count as candidates
    unless include_labeled is False)."""
    allowed = np.ones(len(inputs.ids), dtype=bool)
    if inputs.excluded is not None:
        allowed[inputs.excluded] = False
    if not include_labeled and inputs.labeled is not None:
        allowed[inputs.labeled] = False
    return allowed


@dataclass
class StageContext:
    """What loaders may read: the job's config, the stage's key and the selector's
    parameters (they name input files), and where the stage writes."""

    config: Config
    key: str  # "selection" or "recipe.stages[i]": the prefix of error messages
    params: Any  # the selector's validated parameters
    pool_input: str
    output: str  # the stage's directory
    query_dir: str  # where query records are embedded (queries/<task>)
    # Runs the embed pipeline on a config (query records are embedded like the pool); the
    # stage passes it in, so inputs need not import the pipelines.
    embed: Callable[[Config], dict] | None = None


Loader = Callable[[StageContext, SelectionInputs], None]
LOADERS: dict[str, Loader] = {}
# Known inputs load in this order after the pool input (queries check the pool's dim, ...).
LOAD_ORDER = (EMBEDDINGS, QUERY_EMBEDDINGS, PROBABILITIES, LABELED, SKILLS, STREAM_ITEMS,
              BUCKETED_POOL, RETRIEVAL, TEXTS, EVAL_SETS)  # fmt: skip


def input_loader(name: str) -> Callable[[Loader], Loader]:
    """Decorator: the loader of input `name`."""

    def register(loader: Loader) -> Loader:
        if name in LOADERS:
            raise ValueError(f"input {name!r} has two loaders")
        LOADERS[name] = loader
        return loader

    return register


def load_inputs(
    ctx: StageContext,
    needs: frozenset[str] | set[str],
    after_pool: Callable[[SelectionInputs], None] | None = None,
) -> SelectionInputs:
    """Run the loader of every needed input, the pool input's first (then `after_pool`, a
    check that needs only the pool, before slower inputs such as query sets to embed)."""
    unknown = sorted(set(needs) - set(LOADERS))
    if unknown:
        raise ConfigError(f"{ctx.key}: no loader for input(s) {unknown}; known: {sorted(LOADERS)}")
    if ctx.pool_input not in needs:
        raise ConfigError(f"{ctx.key}: the pool input {ctx.pool_input!r} is not among {needs}")
    inputs = SelectionInputs(ids=pa.array([], pa.string()))
    rest = [n for n in LOAD_ORDER if n in needs and n != ctx.pool_input]
    rest += sorted(n for n in needs if n not in LOAD_ORDER and n != ctx.pool_input)
    LOADERS[ctx.pool_input](ctx, inputs)
    if after_pool is not None:
        after_pool(inputs)
    for name in rest:
        LOADERS[name](ctx, inputs)
    return inputs


def params_value(ctx: StageContext, name: str, default: Any = None) -> Any:
    """A selector parameter a loader reads (selectors that lack it get the default)."""
    return getattr(ctx.params, name, default)
