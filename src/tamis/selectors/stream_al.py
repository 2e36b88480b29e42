"""`stream_al`: decide for each item on arrival whether to query its label (budget B).

The strategies and their state are in `stream_budget`; this module holds the selector's
parameters (scikit-activeml's names and defaults) and runs a whole stream: one decider per
sub-stream key, items in arrival order (on Beam: `stream_beam.DecideStream`). The subset is
the queried items (their utility as ``score``, the ``threshold`` they beat and the
``budget_estimate``); the stage also writes ``decisions.parquet`` (one row per item: ``id``,
``stream_key``, ``arrival``, ``utility``, ``threshold``, ``budget_estimate``, ``queried``) and
``stream_state.json`` (each sub-stream's state: `params.resume` continues from it with
identical decisions).
"""

from __future__ import annotations

import time
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from tamis.config import ConfigError
from tamis.inputs.probabilities import Kind
from tamis.inputs.stream_items import StreamItems, take_items
from tamis.records import InputError
from tamis.selectors.base import (
    STREAM_ITEMS,
    BeamJob,
    Selection,
    SelectionInputs,
    Selector,
    budget_fraction,
    candidate_mask,
    register,
)
from tamis.selectors.stream_budget import Strategy, StreamDecider, StreamDecisions

DECISIONS = "decisions.parquet"
STATE = "stream_state.json"


def stream_seed(seed: int, key: str | None) -> int | list[int]:
    """Each sub-stream draws from its own generator, derived from the seed and its key."""
    return seed if key is None else [seed, zlib.crc32(key.encode("utf-8"))]


@register
class StreamALSelector(Selector):
    """Stream active learning over items in arrival order (see `stream_budget`)."""

    name = "stream_al"
    needs = frozenset({STREAM_ITEMS})
    pool_input = STREAM_ITEMS
    distributed = True

    @dataclass
    class Params:
        strategy: Strategy = "variable_uncertainty"
        theta: float = 1.0  # initial threshold (variable uncertainty family, dbal)
        s: float = 0.01  # threshold step
        w: int = 100  # budget-estimate window; biqf's utility window
        delta: float = 1.0  # std of the threshold's random factor
        v: float = 0.1  # split: share of random-sampling steps
        w_tol: float = 50.0  # biqf: tolerance window of the budget balance
        window: int = 100  # dbal: sliding window of embeddings
        # Items: a Parquet/JSONL file with id and probabilities (or a utility); by default
        # the pool records' own fields.
        items: str | None = None
        utility_field: str | None = None  # a column holding the utility (higher: query)
        field: str | list[str] = "auto"  # probability column(s), as for pcoreset
        kind: Kind = "auto"
        temperature: float = 1.0
        blend_weight: float = 0.5
        embedding_field: str = "embedding"  # dbal's item vectors
        order_field: str = "order"  # arrival order when present; else file order
        key_field: str | None = None  # independent sub-streams, each with budget B
        resume: str | None = None  # a stream_state.json of an earlier run: continue it

    def decider(self, budget: float, seed: int, key: str | None, n_classes: int | None):
        p = self.params
        return StreamDecider(
            p.strategy, budget, theta=p.theta, s=p.s, w=p.w, delta=p.delta, v=p.v,
            w_tol=p.w_tol, window=p.window, n_classes=n_classes, seed=stream_seed(seed, key),
        )  # fmt: skip

    def run(
        self,
        items: StreamItems,
        budget: float,
        seed: int,
        states: dict[str, dict] | None = None,
    ) -> tuple[StreamDecisions, dict[str, dict]]:
        """Decide for every item, sub-stream by sub-stream; returns the decisions in arrival
        order and each sub-stream's state (to resume from)."""
        keys = items.keys if items.keys is not None else [""] * len(items)
        n_classes = None if items.probabilities is None else items.probabilities.shape[1]
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        n = len(items)
        out = StreamDecisions(np.zeros(n), np.zeros(n, bool), np.zeros(n), np.zeros(n))
        final: dict[str, dict] = dict(states or {})
        for key, rows in groups.items():
            index = np.asarray(rows, dtype=np.int64)
            keyed = items.keys is not None
            decider = self._decider_for(key, keyed, budget, seed, n_classes, states)
            decisions = decider.decide(
                utility=None if items.utility is None else items.utility[index],
                probabilities=None if items.probabilities is None else items.probabilities[index],
                embeddings=None if items.embeddings is None else items.embeddings[index],
            )
            for name in ("utility", "queried", "threshold", "budget_estimate"):
                getattr(out, name)[index] = getattr(decisions, name)
            final[key] = decider.state()
        return out, final

    def _decider_for(self, key, keyed, budget, seed, n_classes, states) -> StreamDecider:
        if states and key in states:
            decider = StreamDecider.from_state(states[key])
            expected = self.decider(budget, seed, key if keyed else None, n_classes)
            if decider.strategy != expected.strategy or _differs(decider.params, expected.params):
                raise ConfigError(
                    f"selection.params.resume: sub-stream {key!r} was run with "
                    f"{decider.strategy} {decider.params}, not {expected.strategy} "
                    f"{expected.params}"
                )
            return decider
        return self.decider(budget, seed, key if keyed else None, n_classes)

    def resolve_budget(self, budget, inputs: SelectionInputs) -> float:
        return budget_fraction(budget)  # B: a share of the stream, which has no set size

    def resume_states(self, inputs: SelectionInputs, items: StreamItems) -> dict | None:
        """The sub-streams' saved states (`params.resume`), each checked: a state that no
        run could have written is an InputError naming the file, the sub-stream and the key;
        a file of keyed sub-streams for an unkeyed run (or the reverse) is refused."""
        states, path = inputs.stream.resume, self.params.resume
        if states is None:
            return None
        keyed = items.keys is not None
        dim = None if items.embeddings is None else items.embeddings.shape[1]
        for key, state in states.items():
            try:
                decider = StreamDecider.from_state(state)
            except ValueError as err:
                raise InputError(f"{path}: sub-stream {key!r}: {err}") from None
            if isinstance(decider.params["seed"], list) != keyed:  # keyed runs seed per key
                then, now = ("no", "sets") if keyed else ("a", "has no")
                raise ConfigError(
                    f"selection.params.resume: {path} holds the state of a run with {then} "
                    f"key_field (sub-stream {key!r}); this run {now} key_field: resume it "
                    "as it was run"
                )
            window = decider.embeddings
            if window is not None and dim is not None and window.shape[1] != dim:
                raise InputError(
                    f"{path}: sub-stream {key!r}: embeddings: the window holds "
                    f"{window.shape[1]}-dimensional vectors, the items {dim}"
                )
        return states

    def select(self, inputs: SelectionInputs, budget: float, seed: int) -> Selection:
        items = self._items(inputs)
        started = time.perf_counter()
        resume = self.resume_states(inputs, items)
        decisions, states = self.run(items, budget, seed, resume)
        selection = self._selection(items, decisions, states, budget, time.perf_counter() - started)
        return _count_resumed(selection, items, resume)

    def select_distributed(
        self, inputs: SelectionInputs, budget: float, seed: int, job: BeamJob
    ) -> Selection:
        """The decisions of `stream_beam.DecideStream` (a stateful DoFn) in a Beam job."""
        from tamis.selectors.stream_beam import decide_on_beam

        items = self._items(inputs)
        started = time.perf_counter()
        resume = self.resume_states(inputs, items)
        decisions, states = decide_on_beam(items, self, budget, seed, resume, job)
        selection = self._selection(items, decisions, states, budget, time.perf_counter() - started)
        return _count_resumed(selection, items, resume)

    def _items(self, inputs: SelectionInputs) -> StreamItems:
        items = inputs.stream.items
        allowed = candidate_mask(inputs)
        return items if allowed.all() else take_items(items, np.flatnonzero(allowed))

    def _selection(
        self,
        items: StreamItems,
        decisions: StreamDecisions,
        states: dict[str, dict],
        budget: float,
        seconds: float,
    ) -> Selection:
        selection = selection_from_decisions(items, decisions)
        n_queried = int(decisions.queried.sum())
        selection.info = {
            "strategy": self.params.strategy,
            "budget_fraction": budget,
            "query_rate": n_queried / max(len(items), 1),
            "items_per_second": round(len(items) / max(seconds, 1e-9)),
            "resumed": self.params.resume is not None,
        }
        selection.counts = {
            "items": len(items),
            "queried": n_queried,
            "not_queried": len(items) - n_queried,
            "never_candidates_nan_utility": int(np.isnan(decisions.utility).sum()),
        }
        if items.keys is not None:
            totals = Counter(items.keys)
            hits = Counter(k for k, q in zip(items.keys, decisions.queried, strict=True) if q)
            selection.counts["per_stream_key"] = {
                key: {"items": total, "queried": int(hits.get(key, 0))}
                for key, total in totals.items()
            }
        selection.outputs[DECISIONS] = decisions_table(items, decisions)
        selection.outputs[STATE] = states
        return selection

    def summary(self, manifest: dict, output: str) -> list[str]:
        c, info = manifest["counts"], manifest["info"]
        lines = [
            f"queried {c['queried']:,} of {c['items']:,} stream items "
            f"({100 * info['query_rate']:.2f}%, budget {100 * info['budget_fraction']:g}%) with "
            f"stream_al {info['strategy']} in {manifest['seconds']['wall']:.1f} s "
            f"({info['items_per_second']:,} items/s deciding)"
        ]
        for key, k in c.get("per_stream_key", {}).items():
            lines.append(f"  {key}: {k['queried']:,} of {k['items']:,}")
        lines.append(f"  decisions: {output}/{DECISIONS}")
        lines.append(f"  state (resume from it): {output}/{STATE}")
        return lines


def _count_resumed(selection: Selection, items: StreamItems, resume: dict | None) -> Selection:
    """How many of this run's sub-streams continued from a saved state (`resumed` says only
    that a state file was given)."""
    keys = set(items.keys) if items.keys is not None else {""}
    selection.info["resumed_streams"] = len(keys & set(resume or {}))
    return selection


def decisions_table(items: StreamItems, decisions: StreamDecisions) -> pa.Table:
    keys = items.keys if items.keys is not None else [""] * len(items)
    return pa.table(
        {
            "id": pa.array(items.ids, pa.string()),
            "stream_key": pa.array(keys, pa.string()),
            "arrival": pa.array(np.arange(len(items)), pa.int64()),
            "utility": pa.array(decisions.utility),
            "threshold": pa.array(decisions.threshold),
            "budget_estimate": pa.array(decisions.budget_estimate),
            "queried": pa.array(decisions.queried),
        }
    )


def _differs(resumed: dict[str, Any], expected: dict[str, Any]) -> bool:
    keys = set(resumed) | set(expected)
    return any(
        resumed.get(k) != expected.get(k) and not (k == "n_classes" and expected.get(k) is None)
        for k in keys
    )


def selection_from_decisions(items: StreamItems, decisions: StreamDecisions) -> Selection:
    """The queried items, in arrival order, as the subset."""
    picked = np.flatnonzero(decisions.queried)
    columns: dict[str, Any] = {
        "arrival": picked,
        "threshold": decisions.threshold[picked],
        "budget_estimate": decisions.budget_estimate[picked],
    }
    if items.keys is not None:
        columns["stream_key"] = [items.keys[i] for i in picked]
    return Selection(
        selector="stream_al",
        index=items.position[picked],
        ids=[items.ids[i] for i in picked],
        score=decisions.utility[picked],
        columns=columns,
    )
