"""RDS+ past one machine: pool shards are scored on Beam workers, per-task top candidates are
combined globally, and the round robin runs once at the end on those candidates.

Exact: every task's global top-`budget` is among the union of the shards' top-`budget`, and
the round robin never looks past a task's top-`budget` (see selectors/rds.py). The merged
picks are written to ``_picks.json`` in the stage's directory and read back (then removed);
`RdsSelector.select_distributed` turns them into the same Selection as the local path.

Each worker scores on the configured device (``auto`` is resolved there: a GPU worker uses
CUDA) with the query sets copied to it once; the devices the workers used are reported.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from tamis.config import RunnerConfig
from tamis.embeddings.store import part_offsets, read_part
from tamis.inputs.embeddings import non_finite_error
from tamis.records import read_json, write_json_atomic
from tamis.runners.options import make_runner
from tamis.selectors.rds_core import (
    QueryScorer,
    RdsPicks,
    make_scorer,
    merge_candidates,
    shard_candidates,
)

PICKS_FILE = "_picks.json"
DEVICE_TAG = "device"  # ScoreShard's side output: the device each shard was scored on


class ScoreShard(beam.DoFn):
    """One part file -> its top candidates per task (or by best task score); the device it
    scored on goes to the DEVICE_TAG output."""

    def __init__(
        self,
        aggregation: str,
        budget: int,
        multi_task: str,
        device: str = "cpu",
        precision: str = "float32",
    ):
        self.aggregation = aggregation
        self.budget = budget
        self.multi_task = multi_task
        self.device = device
        self.precision = precision
        self.scorer: QueryScorer | None = None
        self.shards = Metrics.counter("tamis.select", "shards_scored")
        self.items = Metrics.counter("tamis.select", "items_scored")

    def setup(self):
        self.scorer = None

    def process(self, part: tuple[str, int], queries: list, excluded: list):
        path, offset = part
        block = read_part(path)
        bad = np.flatnonzero(~np.isfinite(block.vectors).all(axis=1))
        if len(bad):  # the local path refuses these too (inputs.embeddings.finite_blocks)
            raise non_finite_error(f"embedding.output {path}", block.ids, bad)
        self.shards.inc()
        self.items.inc(len(block.ids))
        excluded_array = np.asarray(excluded, dtype=np.int64) if excluded else None
        if self.scorer is None:  # the queries go to the device once per worker
            tasks = [np.asarray(q, dtype=np.float32) for q in queries]
            # auto is resolved here: this worker's GPU if it has one.
            self.scorer = make_scorer(tasks, self.device, self.precision)
        yield from shard_candidates(
            block.vectors,
            offset,
            self.scorer,
            self.aggregation,
            self.budget,
            self.multi_task,
            excluded_array,
        )
        yield beam.pvalue.TaggedOutput(DEVICE_TAG, self.scorer.device)


def _write_picks(
    merged: list, output: str, n_tasks: int, budget: int, balanced: bool, devices: list
) -> None:
    picks = merge_candidates(dict(merged), n_tasks, budget, balanced)
    write_json_atomic(
        FileSystems.join(output, PICKS_FILE),
        {
            "index": picks.index.tolist(),
            "task": picks.task.tolist(),
            "score": [float(s) for s in picks.score],
            "devices": sorted(set(devices)),
        },
    )


def rds_on_beam(
    pool_dir: str,
    tasks: list[np.ndarray],
    aggregation: str,
    multi_task: str,
    budget: int,
    output: str,
    runner_config: RunnerConfig,
    beam_args: list[str] | None = None,
    excluded: np.ndarray | None = None,
    device: str = "cpu",
    precision: str = "float32",
) -> RdsPicks:
    """Run the distributed RDS+ and return its picks (same as the local selector's).

    ``device`` / ``precision``: where and how the workers score (see `QueryScorer`); the
    picks' ``device`` is the one the workers used (several, joined by ",", if they differ).
    """
    if not FileSystems.exists(output):
        FileSystems.mkdirs(output)
    runner, options = make_runner(runner_config, beam_args)
    with beam.Pipeline(runner=runner, options=options) as pipeline:
        queries = pipeline | "Queries" >> beam.Create([[q.tolist() for q in tasks]])
        removed = pipeline | "Excluded" >> beam.Create(
            [[] if excluded is None else excluded.tolist()]
        )
        scored = (
            pipeline
            | "ListParts" >> beam.Create(part_offsets(pool_dir))
            | "SpreadParts" >> beam.Reshuffle()
            | "ScoreShards"
            >> beam.ParDo(
                ScoreShard(aggregation, budget, multi_task, device, precision),
                queries=beam.pvalue.AsSingleton(queries),
                excluded=beam.pvalue.AsSingleton(removed),
            ).with_outputs(DEVICE_TAG, main="candidates")
        )
        devices = scored[DEVICE_TAG] | "Devices" >> beam.Distinct()
        _ = (
            scored.candidates
            # Best first: higher score, then lower pool position (the local tie order).
            | "TopPerTask" >> beam.combiners.Top.PerKey(budget, key=lambda c: (c[0], -c[1]))
            | "AllTasks" >> beam.combiners.ToList()
            | "MergeAndWrite"
            >> beam.Map(
                _write_picks,
                output,
                len(tasks),
                budget,
                multi_task == "round_robin_balanced",
                devices=beam.pvalue.AsList(devices),
            )
        )
    picks_path = FileSystems.join(output, PICKS_FILE)
    picks = read_json(picks_path)
    FileSystems.delete([picks_path])
    return RdsPicks(
        np.asarray(picks["index"], dtype=np.int64),
        np.asarray(picks["task"], dtype=np.int64),
        np.asarray(picks["score"], dtype=np.float32),
        ",".join(picks["devices"]) or None,
    )
