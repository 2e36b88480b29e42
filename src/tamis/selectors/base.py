"""The selector protocol, the registry, budgets, and the `Selection` every selector returns.

A selector is a class registered by name. It declares the inputs it needs and a dataclass
of parameters (validated from `selection.params` with key paths in errors), and its
`select` is a pure function of arrays: no Beam, no files.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from tamis.config import ConfigError, build_dataclass

# What a selector may declare it needs (the select pipeline provides these).
EMBEDDINGS = "embeddings"
QUERY_EMBEDDINGS = "query_embeddings"
PROBABILITIES = "probabilities"  # (N, C) class-probability vectors of the pool
LABELED = "labeled"  # pool positions already labelled (from selection.params)
STREAM_ITEMS = "stream_items"  # items in arrival order, decided one by one (stream_al)
SKILLS = "skills"  # skill tags of the pool and the student's evaluation (stat)
BUCKETED_POOL = "bucketed_pool"  # pool rows with a quality bucket or score (scaling_law)
RETRIEVAL = "retrieval"  # queries, qrels and a corpus to mine candidates from (cet)


@dataclass
class SelectionInputs:
    """What the select pipeline hands a selector."""

    # Pool ids in pool order: a list, or an Arrow string array (a million Python strings
    # would cost ~100 MB; the select stage passes Arrow and only picks become strings).
    ids: Sequence[str] | pa.Array
    # Re-iterable (B, dim) float32 blocks of the pool embeddings, in pool order; a callable
    # so a selector can stream the pool (several passes if it needs them).
    blocks: Callable[[], Iterator[np.ndarray]] | None = None
    dim: int | None = None
    queries: dict[str, np.ndarray] = field(default_factory=dict)  # task -> (Q, dim)
    # Pool positions a selector must not pick (e.g. exact duplicates removed before).
    excluded: np.ndarray | None = None
    probabilities: np.ndarray | None = None  # (N, C) float32, rows summing to 1
    labeled: np.ndarray | None = None  # pool positions of labelled examples


@dataclass
class Selection:
    """Picks in order: rank i is the i-th pick."""

    selector: str
    index: np.ndarray  # pool positions
    ids: list[str]
    score: np.ndarray
    weight: np.ndarray | None = None  # None: every pick weighs 1.0
    columns: dict[str, list | np.ndarray] = field(default_factory=dict)  # method columns
    info: dict[str, Any] = field(default_factory=dict)  # method statistics for the manifest

    def __len__(self) -> int:
        return len(self.ids)

    def to_table(self) -> pa.Table:
        n = len(self.ids)
        weight = np.ones(n) if self.weight is None else self.weight
        data = {
            "id": pa.array(self.ids, pa.string()),
            "rank": pa.array(np.arange(n), pa.int64()),
            "score": pa.array(np.asarray(self.score, dtype=np.float64)),
            "weight": pa.array(np.asarray(weight, dtype=np.float64)),
            "selector": pa.array([self.selector] * n, pa.string()),
        }
        for name, values in self.columns.items():
            data[name] = pa.array(values.tolist() if isinstance(values, np.ndarray) else values)
        return pa.table(data)


class Selector:
    """Base class: subclasses set `name`, `needs`, `Params` and implement `select`."""

    name: ClassVar[str]
    needs: ClassVar[frozenset[str]] = frozenset()

    @dataclass
    class Params:
        pass

    def __init__(self, params: Any):
        self.params = params

    def select(self, inputs: SelectionInputs, budget: int, seed: int) -> Selection:
        raise NotImplementedError


REGISTRY: dict[str, type[Selector]] = {}


def register(cls: type[Selector]) -> type[Selector]:
    """Class decorator: make a selector available under `cls.name`."""
    if cls.name in REGISTRY:
        raise ValueError(f"selector {cls.name!r} is registered twice")
    REGISTRY[cls.name] = cls
    return cls


def make_selector(name: str, params: dict[str, Any]) -> Selector:
    """The named selector with its parameters validated (errors name selection.params.KEY)."""
    import tamis.selectors  # noqa: F401  (registers the built-in selectors)

    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise ConfigError(f"selection.selector: unknown selector {name!r}; known: {known}")
    cls = REGISTRY[name]
    return cls(build_dataclass(cls.Params, params, "selection.params"))


_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def parse_budget(budget: int | float | str | None, pool_size: int) -> int:
    """A count, a fraction in (0, 1] or a percentage string ("10%") -> a count <= pool size."""
    if budget is None:
        raise ConfigError("selection.budget: required (a count, a fraction or 'N%')")
    if isinstance(budget, str):
        match = _PERCENT.match(budget)
        if not match:
            raise ConfigError(f"selection.budget: expected a count or 'N%', got {budget!r}")
        count = int(round(float(match[1]) / 100 * pool_size))
    elif isinstance(budget, float):
        if not 0 < budget <= 1:
            raise ConfigError(f"selection.budget: a fraction must be in (0, 1], got {budget}")
        count = int(round(budget * pool_size))
    else:
        count = budget
    if count < 1:
        raise ConfigError(f"selection.budget: must select at least 1 item, got {budget!r}")
    if count > pool_size:
        raise ConfigError(
            f"selection.budget: {count} is larger than the pool ({pool_size} candidates)"
        )
    return count


def budget_fraction(budget: int | float | str | None) -> float:
    """B from `selection.budget`: "5%" or 0.05 (a stream has no size to count against)."""
    if budget is None:
        raise ConfigError("selection.budget: required (the share of the stream, e.g. '5%')")
    if isinstance(budget, str):
        match = _PERCENT.match(budget)
        if not match:
            raise ConfigError(f"selection.budget: expected a fraction or 'N%', got {budget!r}")
        fraction = float(match[1]) / 100
    elif isinstance(budget, float):
        fraction = budget
    else:
        raise ConfigError(
            f"selection.budget: stream_al spends a fraction of the stream, e.g. '5%' or 0.05; "
            f"got the count {budget!r}"
        )
    if not 0 < fraction <= 1:
        raise ConfigError(f"selection.budget: a fraction must be in (0, 1], got {budget!r}")
    return fraction


def ids_at(ids: Sequence[str] | pa.Array, index: np.ndarray) -> list[str]:
    """The ids at these pool positions, as Python strings."""
    if isinstance(ids, pa.Array | pa.ChunkedArray):
        return ids.take(pa.array(np.asarray(index, dtype=np.int64))).to_pylist()
    return [ids[i] for i in index]


def candidate_mask(inputs: SelectionInputs) -> np.ndarray:
    """True for the pool positions a selector may pick."""
    allowed = np.ones(len(inputs.ids), dtype=bool)
    if inputs.excluded is not None:
        allowed[inputs.excluded] = False
    return allowed
