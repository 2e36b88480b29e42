"""The selector protocol, the registry, budgets, and the `Selection` every selector returns.

A selector is a class registered by name. It declares:
- ``needs``: the named inputs it reads; `tamis.inputs` has one loader per name and the
  select stage loads exactly these (`SelectionInputs` holds them);
- ``pool_input``: the one of them whose ids are the pool (a recipe chains stages on them);
- ``kind``: ``select`` (keeps ``budget`` items in pick order), ``filter`` (keeps every item
  that passes) or ``weight`` (keeps items and sets their weights);
- ``distributed``: whether `select_distributed` also runs it on Beam workers;
- ``Params``: a dataclass validated from ``params`` (errors name ``<stage>.params.KEY``).

`select` is a pure function of the loaded arrays: no Beam, no files. Extra tables a selector
produces (decisions, a skill profile, mined candidates...) go in `Selection.outputs`; the
stage writes them with the subset.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from tamis.config import ConfigError, RunnerConfig, build_dataclass
from tamis.inputs.context import (  # noqa: F401  (the input names, re-exported)
    BUCKETED_POOL,
    EMBEDDINGS,
    EVAL_SETS,
    LABELED,
    PROBABILITIES,
    QUERY_EMBEDDINGS,
    RETRIEVAL,
    SKILLS,
    STREAM_ITEMS,
    TEXTS,
    SelectionInputs,
    candidate_mask,
)

StageKind = Literal["select", "filter", "weight"]
STAGE_KINDS: tuple[StageKind, ...] = ("select", "filter", "weight")


@dataclass
class BeamJob:
    """What a selector's Beam form needs from the stage: the runner and a scratch dir."""

    runner: RunnerConfig
    beam_args: list[str] | None
    work_dir: str  # the stage's output dir; intermediates go under it and are removed


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
    counts: dict[str, Any] = field(default_factory=dict)  # method counts for the manifest
    # Extra outputs by file name: .parquet (an Arrow table), .jsonl (a table, as JSON lines)
    # or .json (a JSON value); the stage writes them beside the subset.
    outputs: dict[str, Any] = field(default_factory=dict)

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
    pool_input: ClassVar[str] = EMBEDDINGS
    kind: StageKind = "select"
    distributed: ClassVar[bool] = False  # True: `select_distributed` runs on Beam workers
    # False: the selector works on the whole pool only (it cannot follow another stage).
    accepts_candidates: ClassVar[bool] = True
    # None: the stage's budget is optional (filters keep all that pass, weights weigh all).
    budget_required: ClassVar[bool] = True

    @dataclass
    class Params:
        pass

    def __init__(self, params: Any):
        self.params = params

    def validate(self) -> None:
        """Checks of the parameters beyond their types (before any input is read)."""

    def resolve_budget(self, budget: int | float | str | None, inputs: SelectionInputs) -> Any:
        """The stage's budget as this selector counts it (default: items of the candidates;
        "per_class" = the number of classes of the probabilities)."""
        if budget is None and not self.budget_required:
            return inputs.n_candidates
        if budget == "per_class":
            if inputs.probabilities is None:
                raise ConfigError("selection.budget: per_class needs a selector over probabilities")
            return parse_budget(inputs.probabilities.shape[1], inputs.n_candidates)
        return parse_budget(budget, inputs.n_candidates)

    def select(self, inputs: SelectionInputs, budget: Any, seed: int) -> Selection:
        raise NotImplementedError

    def select_distributed(
        self, inputs: SelectionInputs, budget: Any, seed: int, job: BeamJob
    ) -> Selection:
        raise ConfigError(f"selection.distributed: {self.name} does not run on Beam workers")

    def summary(self, manifest: dict, output: str) -> list[str]:
        """The CLI's lines about a finished stage (default: picks, per task, radius)."""
        return ranked_summary(manifest)


REGISTRY: dict[str, type[Selector]] = {}


def register(cls: type[Selector]) -> type[Selector]:
    """Class decorator: make a selector available under `cls.name`."""
    if cls.name in REGISTRY:
        raise ValueError(f"selector {cls.name!r} is registered twice")
    REGISTRY[cls.name] = cls
    return cls


def build_selector(name: str, params: dict[str, Any], key: str = "selection") -> Selector:
    """The registered selector `name` with its parameters validated (errors name
    KEY.params.X). `tamis.selectors.make_selector` first registers the built-in ones."""
    if name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise ConfigError(f"{key}.selector: unknown selector {name!r}; known: {known}")
    cls = REGISTRY[name]
    return cls(build_dataclass(cls.Params, params, f"{key}.params"))


def ranked_summary(manifest: dict) -> list[str]:
    """Picks out of candidates, per task (with label agreement), coverage radius."""
    c = manifest["counts"]
    lines = [
        f"selected {c['selected']:,} of {c['candidates']:,} candidates with "
        f"{manifest['selector']} in {manifest['seconds']['wall']:.1f} s"
        + (
            f" ({c['excluded_duplicates']:,} exact duplicates removed)"
            if c.get("excluded_duplicates")
            else ""
        )
    ]
    agreement = manifest.get("label_agreement", {})
    for task, picked in c.get("per_task", {}).items():
        line = f"  {task}: {picked:,} picks"
        if task in agreement:
            on = agreement[task]["on_label"]
            line += f", {on}/{picked} on topic ({100 * on / max(picked, 1):.0f}%)"
        lines.append(line)
    return lines


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
