"""The stream_al select stage: items in arrival order -> a decision per item -> subset.

Output directory: the subset files of every selector (the queried items, with their
utility as ``score``, the ``threshold`` they beat and the ``budget_estimate``), plus
``decisions.parquet`` (one row per item: ``id``, ``stream_key``, ``arrival``, ``utility``,
``threshold``, ``budget_estimate``, ``queried``) and ``stream_state.json`` (each
sub-stream's state: `params.resume` continues from it with identical decisions).

Locally the stream runs in this process; with ``distributed: true`` or a non-local runner it
runs as a Beam job through `DecideStream` (stateful, keyed by sub-stream), the transform that
also serves unbounded sources.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.coders import PickleCoder
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.utils.timestamp import Timestamp

from tamis.config import Config, require
from tamis.records import (
    iter_pool_records,
    read_json,
    read_table_files,
    write_json_atomic,
    write_parquet_atomic,
)
from tamis.selectors.base import budget_fraction
from tamis.selectors.stream_al import StreamALSelector, selection_from_decisions
from tamis.selectors.stream_budget import StreamDecider, StreamDecisions
from tamis.stream_items import StreamItems, stream_items, table_from_records

DECISIONS = "decisions.parquet"
STATE = "stream_state.json"


def load_stream_items(config: Config, params: Any) -> StreamItems:
    """The stream's items from `params.items`, else from the pool records' fields."""
    id_field = config.pool.id_field if config.pool is not None else "id"
    if params.items is not None:
        table, source = read_table_files(params.items), params.items
    else:
        pool = require(config.pool, "pool")
        fields = (r.fields for r in iter_pool_records(pool, keep_fields=True))
        table, source = table_from_records(fields), f"pool {pool.path}"
    return stream_items(
        table,
        source,
        id_field=id_field,
        utility_field=params.utility_field,
        field=params.field,
        kind=params.kind,
        temperature=params.temperature,
        blend_weight=params.blend_weight,
        embedding_field=params.embedding_field if params.strategy == "dbal" else None,
        order_field=params.order_field,
        key_field=params.key_field,
    )


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


def run_stream_select(
    config: Config, selector: StreamALSelector, beam_args: list[str] | None, started: float
) -> dict:
    from tamis.pipelines.select import finish_select

    selection_cfg = require(config.selection, "selection")
    output = require(selection_cfg.output, "selection.output")
    budget = budget_fraction(selection_cfg.budget)
    params = selector.params
    states = read_json(params.resume) if params.resume is not None else None
    items = load_stream_items(config, params)
    decide_started = time.perf_counter()
    if selection_cfg.distributed or config.runner.name != "local":
        decisions, final_states = decide_on_beam(
            items, selector, budget, selection_cfg.seed, states, config, beam_args
        )
    else:
        decisions, final_states = selector.run(items, budget, selection_cfg.seed, states)
    seconds = time.perf_counter() - decide_started

    if not FileSystems.exists(output):
        FileSystems.mkdirs(output)
    write_parquet_atomic(FileSystems.join(output, DECISIONS), decisions_table(items, decisions))
    write_json_atomic(FileSystems.join(output, STATE), final_states)

    selection = selection_from_decisions(items, decisions)
    n_queried = int(decisions.queried.sum())
    selection.info = {
        "strategy": params.strategy,
        "budget_fraction": budget,
        "query_rate": n_queried / max(len(items), 1),
        "items_per_second": round(len(items) / max(seconds, 1e-9)),
        "resumed": params.resume is not None,
    }
    counts: dict[str, Any] = {
        "items": len(items),
        "queried": n_queried,
        "not_queried": len(items) - n_queried,
        "never_candidates_nan_utility": int(np.isnan(decisions.utility).sum()),
        "selected": len(selection),
    }
    if items.keys is not None:
        counts["per_stream_key"] = {
            key: {"items": total, "queried": int(queried)}
            for key, total, queried in _per_key(items.keys, decisions.queried)
        }
    origin = {"items": {"source": items.source, "resume": params.resume}}
    return finish_select(config, selector, selection, counts, origin, seconds, started)


def _per_key(keys: list[str], queried: np.ndarray):
    totals = Counter(keys)
    hits = Counter(k for k, q in zip(keys, queried, strict=True) if q)
    return [(k, totals[k], hits.get(k, 0)) for k in totals]


# ---------------------------------------------------------------------------------------------
# Beam: the same decisions from a stateful, keyed DoFn.


_PENDING = BagStateSpec("pending", PickleCoder())
_DECIDER = ReadModifyWriteStateSpec("decider", PickleCoder())
_FLUSH = TimerSpec("flush", TimeDomain.WATERMARK)
# Beam's DoFn parameters are declared as argument defaults; module-level names keep them
# singletons.
_PENDING_PARAM = beam.DoFn.StateParam(_PENDING)
_DECIDER_PARAM = beam.DoFn.StateParam(_DECIDER)
_FLUSH_PARAM = beam.DoFn.TimerParam(_FLUSH)


class DecideInArrivalOrder(beam.DoFn):
    """Per sub-stream key: buffer items, and when the watermark passes them, decide for them
    in arrival order with the key's `StreamDecider` (its state lives in Beam state).

    Elements are ``(key, item)`` with ``item = {"id", "arrival", "utility" | "probs",
    "embedding"?}``, timestamped by arrival. Event-time timers make the order hold on
    unbounded sources too: an item is decided only once every earlier one has arrived.
    """

    def __init__(self, selector: StreamALSelector, budget: float, seed: int, keyed: bool,
                 resume: dict[str, dict] | None = None, n_classes: int | None = None):  # fmt: skip
        self.selector = selector
        self.budget = budget
        self.seed = seed
        self.keyed = keyed
        self.resume = resume
        self.n_classes = n_classes

    def process(
        self,
        element,
        timestamp=beam.DoFn.TimestampParam,
        pending=_PENDING_PARAM,
        flush=_FLUSH_PARAM,
    ):
        _, item = element
        pending.add(item)
        flush.set(timestamp)

    @on_timer(_FLUSH)
    def decide(
        self,
        key=beam.DoFn.KeyParam,
        fired=beam.DoFn.TimestampParam,
        pending=_PENDING_PARAM,
        decider_state=_DECIDER_PARAM,
        flush=_FLUSH_PARAM,
    ):
        waiting = sorted(pending.read(), key=lambda item: item["arrival"])
        ready = [item for item in waiting if Timestamp.of(item["arrival"]) <= fired]
        later = waiting[len(ready) :]
        pending.clear()
        for item in later:
            pending.add(item)
        if later:
            flush.set(Timestamp.of(later[0]["arrival"]))
        if not ready:
            return
        saved = decider_state.read()
        decider = self._decider(key, saved)
        decisions = decider.decide(
            utility=_stack(ready, "utility"),
            probabilities=_stack(ready, "probs"),
            embeddings=_stack(ready, "embedding"),
        )
        decider_state.write(decider.state())
        for j, item in enumerate(ready):
            yield {
                "id": item["id"],
                "arrival": item["arrival"],
                "stream_key": key,
                "utility": float(decisions.utility[j]),
                "threshold": float(decisions.threshold[j]),
                "budget_estimate": float(decisions.budget_estimate[j]),
                "queried": bool(decisions.queried[j]),
            }
        yield beam.pvalue.TaggedOutput("state", (key, decider.state()))

    def _decider(self, key: str, saved: dict | None) -> StreamDecider:
        if saved is not None:
            return StreamDecider.from_state(saved)
        return self.selector._decider_for(
            key, self.keyed, self.budget, self.seed, self.n_classes, self.resume
        )


def _stack(items: list[dict], name: str) -> np.ndarray | None:
    if name not in items[0]:
        return None
    return np.asarray([item[name] for item in items], dtype=np.float64)


class DecideStream(beam.PTransform):
    """``(key, item)`` elements, timestamped by arrival -> decision records (main output)
    and each key's latest state (output ``state``). Works on bounded and unbounded input."""

    def __init__(self, selector: StreamALSelector, budget: float, seed: int, keyed: bool,
                 resume: dict[str, dict] | None = None, n_classes: int | None = None):  # fmt: skip
        super().__init__()
        self.fn = DecideInArrivalOrder(selector, budget, seed, keyed, resume, n_classes)

    def expand(self, keyed_items):
        return keyed_items | "Decide" >> beam.ParDo(self.fn).with_outputs("state", main="decisions")


def stream_elements(items: StreamItems) -> list[tuple[str, dict]]:
    """Items as ``(key, item)`` elements; ``item["arrival"]`` is 0, 1, 2, ..."""
    elements = []
    for i, rid in enumerate(items.ids):
        item: dict[str, Any] = {"id": rid, "arrival": i}
        if items.utility is not None:
            item["utility"] = float(items.utility[i])
        if items.probabilities is not None:
            item["probs"] = items.probabilities[i].astype(np.float64).tolist()
        if items.embeddings is not None:
            item["embedding"] = items.embeddings[i].tolist()
        key = items.keys[i] if items.keys is not None else ""
        elements.append((key, item))
    return elements


def timestamp_by_arrival(element: tuple[str, dict]) -> beam.window.TimestampedValue:
    """Event time = arrival, so the watermark says which items have all arrived."""
    return beam.window.TimestampedValue(element, element[1]["arrival"])


def decide_on_beam(
    items: StreamItems,
    selector: StreamALSelector,
    budget: float,
    seed: int,
    states: dict[str, dict] | None,
    config: Config,
    beam_args: list[str] | None,
) -> tuple[StreamDecisions, dict[str, dict]]:
    """Run `DecideStream` over the items as a bounded Beam job; read back its outputs."""
    from tamis.runners.options import make_runner

    output = require(require(config.selection, "selection").output, "selection.output")
    if not FileSystems.exists(output):
        FileSystems.mkdirs(output)
    n_classes = None if items.probabilities is None else items.probabilities.shape[1]
    runner, options = make_runner(config.runner, beam_args)
    with beam.Pipeline(runner=runner, options=options) as pipeline:
        outputs = (
            pipeline
            | "Items" >> beam.Create(stream_elements(items))
            | "ByArrival"
            >> beam.Map(timestamp_by_arrival).with_output_types(tuple[str, dict[str, Any]])
            | "DecideStream"
            >> DecideStream(selector, budget, seed, items.keys is not None, states, n_classes)
        )
        _ = (
            outputs.decisions
            | "AllDecisions" >> beam.combiners.ToList()
            | "WriteDecisions" >> beam.Map(_write_json, FileSystems.join(output, _BEAM_DECISIONS))
        )
        _ = (
            outputs.state
            | "LatestState" >> beam.CombinePerKey(_latest_state)
            | "AllStates" >> beam.combiners.ToDict()
            | "WriteStates" >> beam.Map(_write_json, FileSystems.join(output, _BEAM_STATES))
        )
    records = sorted(
        read_json(FileSystems.join(output, _BEAM_DECISIONS)), key=lambda r: r["arrival"]
    )
    final = dict(states or {})
    final.update(read_json(FileSystems.join(output, _BEAM_STATES)))
    FileSystems.delete(
        [FileSystems.join(output, _BEAM_DECISIONS), FileSystems.join(output, _BEAM_STATES)]
    )
    if len(records) != len(items):
        raise RuntimeError(f"the Beam job decided {len(records)} of {len(items)} items")
    decisions = StreamDecisions(
        np.asarray([r["utility"] for r in records], dtype=np.float64),
        np.asarray([r["queried"] for r in records], dtype=bool),
        np.asarray([r["threshold"] for r in records], dtype=np.float64),
        np.asarray([r["budget_estimate"] for r in records], dtype=np.float64),
    )
    return decisions, final


_BEAM_DECISIONS = "_beam_decisions.json"
_BEAM_STATES = "_beam_states.json"


def _latest_state(states) -> dict:
    """A key's flushes each emit its state; the one that has seen the most items is last."""
    return max(states, key=lambda state: state["seen"])


def _write_json(value, path: str) -> None:
    write_json_atomic(path, value)
