"""Beam pipelines on a dask.distributed cluster (``runner.name: dask``).

With ``runner.dask_address`` the job goes to that scheduler (a cluster started by
dask-kubernetes, dask-jobqueue on Slurm, ``dask scheduler`` ...). Without it a LocalCluster of
``runner.num_workers`` worker processes (one thread each) is started for the job and closed
when it ends, failed or not.

Why not Beam's DaskRunner as it is (apache-beam 2.77): its ParDo sends every tagged output to
every output PCollection (a DoFn's dead letters reach its main output), it computes only the
last transform's bag (other leaves never run), side inputs are recomputed inside each task
that reads them (a DoFn that writes files then runs twice, concurrently), outputs of
``finish_bundle`` are dropped, and an unknown primitive (e.g. ``Read``) silently becomes an
empty identity. This runner keeps Beam's DaskRunner for its transform overrides (``Create``,
``GroupByKey``, ``Flatten``, ``Reshuffle`` as primitives) and translates the primitives to
dask bags itself: one bag per PCollection (tagged outputs apart), side inputs as delayed
values computed once in the graph, every leaf computed. Batch only, global window; no state,
timers or metrics (a stateful DoFn is refused with the runners that have them).
"""

from __future__ import annotations

import logging
import os
from functools import partial
from typing import Any

from tamis.config import ConfigError, RunnerConfig

log = logging.getLogger(__name__)

STATEFUL_RUNNERS = "runner.name: local (FnApiRunner), dataflow or flink"


def dask_runner(cfg: RunnerConfig) -> Any:
    """A Beam runner over dask bags: on `cfg.dask_address`, or its own LocalCluster."""
    try:
        import dask.distributed  # noqa: F401
        from apache_beam.runners.dask.dask_runner import DaskRunner
    except ImportError as err:
        raise ConfigError(
            "runner.name: dask needs dask.distributed (pip install 'tamis[dask]')"
        ) from err
    if not os.environ.get("TAMIS_VERBOSE"):
        # distributed logs every worker start and stop at INFO.
        logging.getLogger("distributed").setLevel(logging.WARNING)

    class TamisDaskRunner(DaskRunner):
        def run_pipeline(self, pipeline, options):
            from apache_beam.runners.dask.overrides import dask_overrides
            from dask.distributed import Client, LocalCluster

            cluster = None
            address = cfg.dask_address
            if not address:
                cluster = LocalCluster(
                    n_workers=cfg.num_workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,  # no web server: offline, nothing to show
                )
                address = cluster.scheduler_address
                log.info("dask: LocalCluster of %d worker processes", cfg.num_workers)
            client = None
            try:
                try:
                    client = Client(address)
                except OSError as err:  # includes distributed's connection timeouts
                    key = "runner.dask_address" if cfg.dask_address else "runner (LocalCluster)"
                    raise ConfigError(f"{key}: cannot connect to {address} ({err})") from None
                pipeline.replace_all(dask_overrides())
                visitor = _BagVisitor(partitions=max(1, cfg.num_workers) * 4)
                pipeline.visit(visitor)
                futures = client.compute(visitor.leaves())
            except BaseException:
                if client is not None:
                    client.close()
                if cluster is not None:
                    cluster.close()
                raise
            return DaskJobResult(client, cluster, futures)

    return TamisDaskRunner()


class DaskJobResult:
    """The running job: `wait_until_finish` raises a worker's exception as it was raised
    there, then closes the client (and the LocalCluster)."""

    def __init__(self, client: Any, cluster: Any, futures: list):
        from apache_beam.runners.runner import PipelineState

        self.client, self.cluster, self.futures = client, cluster, futures
        self._state = PipelineState.RUNNING

    @property
    def state(self) -> str:
        return self._state

    def wait_until_finish(self, duration: int | None = None) -> str:
        from apache_beam.runners.runner import PipelineState
        from dask.distributed import wait

        try:
            wait(self.futures, timeout=None if duration is None else duration / 1000)
            for future in self.futures:
                if future.status == "error":
                    future.result()  # raises the worker's exception
            self._state = PipelineState.DONE
        except BaseException:
            self._state = PipelineState.FAILED
            raise
        finally:
            self.client.close()
            if self.cluster is not None:
                self.cluster.close()
        return self._state

    def metrics(self):
        raise NotImplementedError("runner.name: dask collects no Beam metrics")


# ---------------------------------------------------------------------------------------------
# Translation: one dask bag per PCollection


class _BagVisitor:
    """Builds a dask bag for every PCollection of a pipeline (after dask_overrides)."""

    def __init__(self, partitions: int):
        self.partitions = partitions
        self.bags: dict[Any, Any] = {}  # PCollection -> bag of WindowedValues
        self.consumed: set[int] = set()

    # PipelineVisitor's interface (duck-typed: Pipeline.visit only calls these).
    def enter_composite_transform(self, node) -> None:
        pass

    def leave_composite_transform(self, node) -> None:
        pass

    def visit_value(self, value, producer_node) -> None:
        pass

    def visit_transform(self, node) -> None:
        import apache_beam as beam
        import dask.bag as db
        from apache_beam.runners.dask.overrides import (
            _Create,
            _Flatten,
            _GroupByKeyOnly,
            _Reshuffle,
        )

        transform = node.transform
        main = [p for p in node.main_inputs.values() if isinstance(p, beam.PCollection)]
        inputs = [self.bags[p] for p in main]
        for p in [*main, *(s.pvalue for s in node.side_inputs)]:
            self.consumed.add(id(p))
        outputs = dict(node.outputs)
        if isinstance(transform, _Create):
            values = list(transform.values)
            bag = db.from_sequence(
                [_windowed(v) for v in values],
                npartitions=max(1, min(len(values), self.partitions)),
            )
        elif isinstance(transform, _Reshuffle):
            bag = inputs[0]
        elif isinstance(transform, _Flatten):
            bag = db.concat(inputs) if inputs else db.from_sequence([], npartitions=1)
        elif isinstance(transform, _GroupByKeyOnly):
            bag = (
                inputs[0]
                .groupby(_key_of, npartitions=self.partitions, shuffle="tasks")
                .map(_grouped_values)
            )
        elif isinstance(transform, beam.ParDo):
            tagged = self._par_do(node, inputs[0])
            for tag, pcoll in outputs.items():
                self.bags[pcoll] = tagged.filter(partial(_has_tag, _tag(tag))).map(_value)
            return
        else:
            raise ConfigError(
                f"runner.name: dask cannot run the Beam transform {node.full_label!r} "
                f"({type(transform).__name__}); use runner.name: local"
            )
        for pcoll in outputs.values():
            self.bags[pcoll] = bag

    def _par_do(self, node, bag):
        import dask
        from apache_beam.runners.common import DoFnSignature

        transform = node.transform
        if DoFnSignature(transform.fn).is_stateful_dofn():
            raise ConfigError(
                f"runner.name: dask has no Beam state or timers, which {node.full_label!r} "
                f"needs; use {STATEFUL_RUNNERS}"
            )
        # Unoptimised: an optimised graph renames its keys, and the side input's upstream
        # would then run a second time beside the job's own (a DoFn writing files, twice).
        sides = [
            dask.delayed(_concat)(self.bags[side.pvalue].to_delayed(optimize_graph=False))
            for side in node.side_inputs
        ]
        spec = _ParDoSpec(
            fn=transform.fn,
            label=node.full_label,
            args=list(transform.raw_side_inputs[0]),
            kwargs=dict(transform.raw_side_inputs[1]),
            views=[(type(s), s._view_options()) for s in node.side_inputs],
            window_fn=next(iter(node.main_inputs.values())).windowing.windowfn,
        )
        return bag.map_partitions(_run_dofn, spec, *sides)

    def leaves(self) -> list:
        """Bags of the PCollections nothing reads: computing them runs the whole job."""
        return [bag for pcoll, bag in self.bags.items() if id(pcoll) not in self.consumed]


class _ParDoSpec:
    """What a worker needs to run one ParDo over a partition (pickled into the graph)."""

    def __init__(self, fn, label, args, kwargs, views, window_fn):
        self.fn, self.label, self.args, self.kwargs = fn, label, args, kwargs
        self.views, self.window_fn = views, window_fn


def _tag(tag: Any) -> Any:
    return None if tag in (None, "None") else tag


def _windowed(value: Any) -> Any:
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.windowed_value import WindowedValue

    if isinstance(value, WindowedValue):
        return value
    return WindowedValue(value, 0, (GlobalWindow(),))


def _key_of(windowed: Any) -> Any:
    return windowed.value[0]


def _grouped_values(group: tuple) -> Any:
    key, items = group
    return _windowed((key, [w.value[1] for w in items]))


def _has_tag(tag: Any, tagged: tuple) -> bool:
    return tagged[0] == tag


def _value(tagged: tuple) -> Any:
    return tagged[1]


def _concat(partitions: list) -> list:
    return [item for part in partitions for item in part]


def _run_dofn(items: list, spec: _ParDoSpec, *side_values: list) -> list:
    """Run the DoFn over one partition (one bundle): (tag, WindowedValue) out, including
    what finish_bundle emits."""
    from apache_beam import DoFn
    from apache_beam.runners.common import (
        DoFnContext,
        DoFnInvoker,
        DoFnSignature,
        Receiver,
        _OutputHandler,
    )
    from apache_beam.transforms.sideinputs import SideInputMap

    out: list = []

    class TagReceiver(Receiver):
        def __init__(self, tag):
            self.tag = tag

        def receive(self, windowed_value):
            out.append((self.tag, windowed_value))

    class Receivers(dict):
        def __missing__(self, tag):
            self[tag] = TagReceiver(_tag(tag))
            return self[tag]

    receivers = Receivers()
    side_inputs = [
        SideInputMap(view_class, options, values)
        for (view_class, options), values in zip(spec.views, side_values, strict=True)
    ]
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(spec.fn),
        _OutputHandler(
            window_fn=spec.window_fn,
            main_receivers=receivers[None],
            tagged_receivers=receivers,
            per_element_output_counter=None,
            output_batch_converter=None,
            process_yields_batches=False,
            process_batch_yields_elements=False,
        ),
        context=DoFnContext(spec.label, state=None),
        side_inputs=side_inputs,
        input_args=spec.args,
        input_kwargs=spec.kwargs,
        user_state_context=None,
        bundle_finalizer_param=DoFn.BundleFinalizerParam(),
    )
    invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
        invoker.invoke_process(item)
    invoker.invoke_finish_bundle()
    invoker.invoke_teardown()
    return out
