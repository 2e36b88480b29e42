"""stream_al on Beam: `DecideStream`, a stateful DoFn keyed by sub-stream that decides items
in arrival order when the watermark passes them (event-time timers), so the same transform
serves bounded files and unbounded sources; `decide_on_beam` runs it over a file's items.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import numpy as np
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

from tamis.inputs.stream_items import StreamItems
from tamis.records import read_json, write_json_atomic
from tamis.selectors.base import BeamJob
from tamis.selectors.stream_budget import StreamDecider, StreamDecisions

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

    def __init__(self, selector: Any, budget: float, seed: int, keyed: bool,
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

    def __init__(self, selector: Any, budget: float, seed: int, keyed: bool,
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
    selector: Any,
    budget: float,
    seed: int,
    states: dict[str, dict] | None,
    job: BeamJob,
) -> tuple[StreamDecisions, dict[str, dict]]:
    """Run `DecideStream` over the items as a bounded Beam job; read back its outputs."""
    from tamis.runners.options import make_runner

    output = job.work_dir
    if not FileSystems.exists(output):
        FileSystems.mkdirs(output)
    n_classes = None if items.probabilities is None else items.probabilities.shape[1]
    runner, options = make_runner(job.runner, job.beam_args)
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
