"""`rds`: RDS+ target-task selection (ALGORITHMS.md, RDS+); the core is in `rds_core`, the
exact Beam form in `rds_beam`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from tamis.config import ConfigError
from tamis.device import DeviceError, check_device_name
from tamis.selectors.base import (
    EMBEDDINGS,
    QUERY_EMBEDDINGS,
    BeamJob,
    Selection,
    SelectionInputs,
    Selector,
    ids_at,
    register,
)
from tamis.selectors.rds_core import (  # noqa: F401  (the core's names, re-exported)
    AGGREGATIONS,
    BEST_TASK,
    PRECISIONS,
    QueryScorer,
    RdsPicks,
    check_precision,
    make_scorer,
    max_similarity_per_task,
    merge_candidates,
    query_round_robin,
    round_robin,
    round_robin_balanced_ranked,
    round_robin_ranked,
    shard_candidates,
    top,
    top_k_indices,
    top_per_query,
)


@register
class RdsSelector(Selector):
    """RDS+: pool items most similar to a few examples of each target task."""

    name = "rds"
    needs = frozenset({EMBEDDINGS, QUERY_EMBEDDINGS})
    distributed = True

    @dataclass
    class Params:
        aggregation: Literal["max", "mean"] = "max"
        # round_robin: the reference's: tasks take turns in their configured order, each
        # turn pops the task's next item (one already taken: the turn is used up);
        # round_robin_balanced: each turn takes the task's best item not yet taken (every
        # task gets budget / T unique items); top: one global ranking by best task score.
        multi_task: Literal["round_robin", "round_robin_balanced", "top"] = "round_robin"
        # The reference's single-task script: queries (all tasks', in task order) take turns
        # instead of tasks; each turn pops the query's next item.
        query_round_robin: bool = False
        # The target tasks (names in the queries section), in round-robin order; default:
        # all of them, in their configured order.
        tasks: list[str] = field(default_factory=list)
        # Where the scoring GEMMs run: auto (CUDA when torch sees a GPU, else numpy; torch on
        # the CPU when precision is not float32), cpu (numpy), torch (torch on the CPU),
        # cuda[:N]. On Beam, auto is resolved on each worker.
        device: str = "auto"
        # The GEMM's dtype: float32 (numpy's picks on every device, up to float32 rounding:
        # near-ties may swap), or float16 / bfloat16 (torch devices only; scores rounded to
        # that dtype, so some picks change: ~1% of them on the bench pool in bfloat16).
        precision: Literal["float32", "float16", "bfloat16"] = "float32"

    def validate(self) -> None:
        try:
            check_device_name(self.params.device)
        except DeviceError as err:
            raise ConfigError(f"selection.params.device: {err}") from None
        try:
            check_precision(self.params.device, self.params.precision)
        except ValueError as err:
            raise ConfigError(f"selection.params.precision: {err}") from None

    def select(self, inputs: SelectionInputs, budget: int, seed: int) -> Selection:
        if not inputs.queries:
            raise ConfigError("queries: rds needs at least one target task")
        names = list(inputs.queries)
        if self.params.query_round_robin:
            return self._query_round_robin(inputs, names, budget)
        scorer = self.scorer([inputs.queries[t] for t in names])
        scores = max_similarity_per_task(inputs.blocks(), scorer, self.params.aggregation)
        if inputs.excluded is not None:
            scores[:, inputs.excluded] = -np.inf
        if self.params.multi_task == "top":
            picks = top(scores, budget)
        else:
            picks = round_robin(scores, budget, self.params.multi_task == "round_robin_balanced")
        return self.selection_from_picks(picks, inputs.ids, names, scorer.device)

    def scorer(self, tasks: list[np.ndarray]) -> QueryScorer:
        """The query sets on the configured device (resolved on this machine)."""
        return make_scorer(tasks, self.params.device, self.params.precision)

    def select_distributed(
        self, inputs: SelectionInputs, budget: int, seed: int, job: BeamJob
    ) -> Selection:
        """Pool shards scored on Beam workers, candidates merged once (same picks)."""
        from tamis.selectors.rds_beam import rds_on_beam

        if self.params.query_round_robin:
            raise ConfigError(
                "selection.distributed: rds with query_round_robin runs locally only; use "
                "multi_task round_robin or top on Beam, or runner.name: local"
            )
        names = list(inputs.queries)
        picks = rds_on_beam(
            inputs.origin["embeddings"]["path"],
            [inputs.queries[t] for t in names],
            self.params.aggregation,
            self.params.multi_task,
            budget,
            job.work_dir,
            job.runner,
            job.beam_args,
            inputs.excluded,
            self.params.device,
            self.params.precision,
        )
        return self.selection_from_picks(picks, inputs.ids, names, picks.device)

    def selection_from_picks(
        self, picks: RdsPicks, ids, names: list[str], device: str | None = None
    ) -> Selection:
        """The Selection for task-level picks (local or merged from Beam workers);
        ``device``: where the scores were computed (the resolved name)."""
        return Selection(
            selector=self.name,
            index=picks.index,
            ids=ids_at(ids, picks.index),
            score=picks.score,
            columns={"task": [names[t] for t in picks.task]},
            info={"picks_per_task": _count(names, picks.task), **self._scoring_info(device)},
        )

    def _scoring_info(self, device: str | None) -> dict[str, str | None]:
        return {"device": device, "precision": self.params.precision}

    def _query_round_robin(self, inputs: SelectionInputs, names: list[str], budget: int):
        queries = np.concatenate([inputs.queries[t] for t in names])
        task_of_query = np.repeat(np.arange(len(names)), [len(inputs.queries[t]) for t in names])
        first_query = np.concatenate([[0], np.cumsum([len(inputs.queries[t]) for t in names])])
        scorer = self.scorer([queries])
        best_index, best_score = top_per_query(inputs.blocks(), scorer, budget, inputs.excluded)
        index, query, score = query_round_robin(best_index, best_score, budget)
        task = task_of_query[query]
        return Selection(
            selector=self.name,
            index=index,
            ids=ids_at(inputs.ids, index),
            score=score,
            columns={"task": [names[t] for t in task], "query": query - first_query[task]},
            info={"picks_per_task": _count(names, task), **self._scoring_info(scorer.device)},
        )


def _count(names: list[str], task: np.ndarray) -> dict[str, int]:
    counts = np.bincount(task, minlength=len(names))
    return {name: int(c) for name, c in zip(names, counts, strict=True)}
