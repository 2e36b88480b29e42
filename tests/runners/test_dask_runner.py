"""`runner.name: dask`: embed, distributed rds, cet mining and a recipe on a 2-worker
dask.distributed LocalCluster give the same files as FnApiRunner, bit for bit."""

import json

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from dask.distributed import LocalCluster

from conftest import write_embeddings_dir, write_jsonl
from tamis.config import ConfigError, RunnerConfig, config_from_dict
from tamis.pipelines.embed import run_embed
from tamis.pipelines.select import run_select
from tamis.runners.options import make_runner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    """One LocalCluster for the module (its address given as runner.dask_address); the embed
    test starts its own, as a job without an address does."""
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as local:
        yield local.scheduler_address


def on_dask(config: dict, address: str | None = None) -> dict:
    runner = {"name": "dask", "num_workers": 2}
    if address:
        runner["dask_address"] = address
    return {**config, "runner": runner}


def parts(directory) -> list:
    return sorted(directory.glob("part-*.parquet"))


def test_tagged_outputs_side_inputs_and_every_leaf_run_as_on_fnapirunner(cluster, tmp_path):
    """What Beam's own DaskRunner gets wrong: a DoFn's tagged outputs stay apart, a side
    input is computed once, leaves other than the last one run, finish_bundle's output."""

    class Split(beam.DoFn):
        """Multiples of 3 to "threes", the rest to the main output; finish_bundle emits
        minus the bundle's count of the rest (bundles differ between runners, sums not)."""

        def __init__(self, calls):
            self.calls = calls  # a file: one line per element processed

        def start_bundle(self):
            self.rest = 0

        def process(self, x):
            with open(self.calls, "a") as f:
                f.write(f"{x}\n")
            if x % 3 == 0:
                yield beam.pvalue.TaggedOutput("threes", x)
            else:
                self.rest += 1
                yield x

        def finish_bundle(self):
            from apache_beam.utils.windowed_value import WindowedValue

            yield WindowedValue(-self.rest, 0, [beam.transforms.window.GlobalWindow()])

    def write(values, name):
        (tmp_path / name).write_text(json.dumps(sorted(values)))

    def build(pipeline, prefix):
        split = (
            pipeline
            | beam.Create(list(range(12)))
            | beam.ParDo(Split(str(tmp_path / f"{prefix}_calls"))).with_outputs(
                "threes", main="rest"
            )
        )
        total = split.rest | "Sum" >> beam.CombineGlobally(sum)  # finish_bundle's count in
        _ = (
            split.threes
            | "AddTotal" >> beam.Map(lambda x, t: x + 1000 * t, t=beam.pvalue.AsSingleton(total))
            | "AllThrees" >> beam.combiners.ToList()
            | "WriteThrees" >> beam.Map(write, f"{prefix}_threes.json")
        )
        _ = (
            split.rest
            | "AllRest" >> beam.combiners.ToList()
            | "WriteRest" >> beam.Map(write, f"{prefix}_rest.json")
        )

    for prefix, cfg in (("fnapi", RunnerConfig()),
                        ("dask", RunnerConfig(name="dask", dask_address=cluster))):  # fmt: skip
        runner, options = make_runner(cfg)
        with beam.Pipeline(runner=runner, options=options) as pipeline:
            build(pipeline, prefix)
    results = {
        (prefix, name): json.loads((tmp_path / f"{prefix}_{name}.json").read_text())
        for prefix in ("fnapi", "dask")
        for name in ("rest", "threes")
    }
    for prefix in ("fnapi", "dask"):
        rest = results[prefix, "rest"]
        assert [x for x in rest if x > 0] == [x for x in range(12) if x % 3]
        assert sum(x for x in rest if x <= 0) == -8  # finish_bundle's outputs, all there
        # Each element was processed once, though Split's output feeds a side input too.
        assert sorted((tmp_path / f"{prefix}_calls").read_text().split()) == sorted(
            str(x) for x in range(12)
        )
        # The side input (sum of the rest: 48 - 8 = 40) reached every element of "threes".
        assert results[prefix, "threes"] == [40000, 40003, 40006, 40009]


def test_embed_on_its_own_local_cluster_equals_fnapirunner(tmp_path):
    records = [{"id": f"r{i}", "text": f"record {i} about topic {i % 7} " * (1 + i % 5)}
               for i in range(70)]  # fmt: skip
    records[10] = {"id": "r10"}  # no text: a dead letter (a tagged output of ReadPool)
    records[20] = "{not json"
    write_jsonl(tmp_path / "pool.jsonl", records)
    base = {
        "pool": {"path": str(tmp_path / "pool.jsonl")},
        "embedding": {"max_length": 32, "shard_size": 16},
    }

    def into(name: str) -> dict:
        return {**base, "embedding": {**base["embedding"], "output": str(tmp_path / name)}}

    local = run_embed(config_from_dict(into("a")), progress=False)
    dask = run_embed(config_from_dict(on_dask(into("b"))), progress=False)
    assert dask["counts"] == local["counts"]
    assert local["counts"]["embedded"] == 68 and local["counts"]["rejected"] == 2
    assert [p.name for p in parts(tmp_path / "b")] == [p.name for p in parts(tmp_path / "a")]
    for a, b in zip(parts(tmp_path / "a"), parts(tmp_path / "b"), strict=True):
        assert pq.read_table(a).equals(pq.read_table(b))  # ids and vectors, bit for bit
    rejected = [sorted((tmp_path / d / "rejected.jsonl").read_text().splitlines()) for d in "ab"]
    assert rejected[0] == rejected[1] and len(rejected[0]) == 2


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask_vectors")
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(500, 8)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    ids = [f"doc-{i}" for i in range(500)]
    tasks, qrels = {}, []
    for name in ("a", "b"):
        q = rng.normal(size=(6, 8)).astype(np.float32)
        tasks[name] = write_embeddings_dir(root / name, q, 4, [f"{name}-{i}" for i in range(6)])
    top = np.argsort(-(q @ pool.T), axis=1)  # task b's queries: labelled 1st and 5th hits
    qrels = [{"query_id": f"b-{i}", "doc_id": f"doc-{d}"} for i in range(6) for d in top[i, [0, 4]]]
    return {
        "pool": write_embeddings_dir(root / "pool", pool, 128, ids),
        "tasks": tasks,
        "qrels": str(write_jsonl(root / "qrels.jsonl", qrels)),
    }


def test_distributed_rds_picks_equal_fnapirunner(cluster, vectors, tmp_path):
    def config(name, runner=None):
        job = {
            "embedding": {"output": vectors["pool"]},
            "queries": {t: {"embeddings": d} for t, d in vectors["tasks"].items()},
            "selection": {"selector": "rds", "budget": 60, "distributed": True,
                          "join_records": False, "output": str(tmp_path / name)},
        }  # fmt: skip
        return config_from_dict(on_dask(job, cluster) if runner == "dask" else job)

    local = run_select(config("local"))
    dask = run_select(config("dask", "dask"))
    assert dask["counts"] == local["counts"]
    a = pq.read_table(tmp_path / "local" / "subset.parquet")
    b = pq.read_table(tmp_path / "dask" / "subset.parquet")
    assert a.equals(b) and a.num_rows == 60


def test_cet_mining_equals_fnapirunner(cluster, vectors, tmp_path):
    def config(name, runner=None):
        job = {
            "embedding": {"output": vectors["pool"]},
            "queries": {"b": {"embeddings": vectors["tasks"]["b"]}},
            "selection": {"selector": "cet", "distributed": True, "output": str(tmp_path / name),
                          "params": {"qrels": vectors["qrels"], "k": 20}},
        }  # fmt: skip
        return config_from_dict(on_dask(job, cluster) if runner == "dask" else job)

    run_select(config("local"))
    run_select(config("dask", "dask"))
    a = pq.read_table(tmp_path / "local" / "candidates.parquet")
    b = pq.read_table(tmp_path / "dask" / "candidates.parquet")
    assert a.equals(b) and a.num_rows == 6 * 20


def test_a_recipe_with_a_beam_stage_equals_fnapirunner(cluster, vectors, tmp_path):
    def config(name, runner=None):
        job = {
            "embedding": {"output": vectors["pool"]},
            "queries": {t: {"embeddings": d} for t, d in vectors["tasks"].items()},
            "recipe": {
                "output": str(tmp_path / name),
                "join_records": False,
                "stages": [
                    {"name": "target", "selector": "rds", "budget": 100},
                    {"name": "spread", "selector": "coreset", "budget": 30},
                ],
            },
        }
        return config_from_dict(on_dask(job, cluster) if runner == "dask" else job)

    run_select(config("local"))
    run_select(config("dask", "dask"))
    for stage in ("01-target", "02-spread"):
        a = pq.read_table(tmp_path / "local" / stage / "subset.parquet")
        b = pq.read_table(tmp_path / "dask" / stage / "subset.parquet")
        assert a.equals(b)
    manifest = json.loads((tmp_path / "dask" / "01-target" / "manifest.json").read_text())
    assert manifest["counts"]["selected"] == 100


def test_a_stateful_dofn_is_refused_naming_the_runners_that_have_state(cluster):
    from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

    class Count(beam.DoFn):
        seen = ReadModifyWriteStateSpec("seen", beam.coders.VarIntCoder())

        def process(self, kv, seen=beam.DoFn.StateParam(seen)):  # noqa: B008 (Beam's form)
            yield kv

    runner, options = make_runner(RunnerConfig(name="dask", dask_address=cluster))
    pipeline = beam.Pipeline(runner=runner, options=options)
    _ = pipeline | beam.Create([("k", 1)]) | beam.ParDo(Count())
    with pytest.raises(ConfigError, match="has no Beam state or timers.*runner.name: local"):
        pipeline.run()


def test_stream_al_on_dask_is_one_error_line(tmp_path, capsys):
    from conftest import cli_error

    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=30)
    write_jsonl(tmp_path / "items.jsonl",
                [{"id": f"i{n}", "text": f"item {n}", "probs": p.tolist()}
                 for n, p in enumerate(probs)])  # fmt: skip
    job = {
        "pool": {"path": str(tmp_path / "items.jsonl")},
        "runner": {"name": "dask", "num_workers": 1},
        "selection": {"selector": "stream_al", "budget": "10%", "output": str(tmp_path / "out"),
                      "params": {"strategy": "variable_uncertainty"}},
    }  # fmt: skip
    (tmp_path / "job.yaml").write_text(json.dumps(job))
    line = cli_error(capsys, "select", str(tmp_path / "job.yaml"))
    assert "no Beam state or timers" in line and "runner.name: local" in line


def test_a_scheduler_that_does_not_answer_names_the_key():
    import dask

    runner, options = make_runner(RunnerConfig(name="dask", dask_address="tcp://127.0.0.1:9"))
    pipeline = beam.Pipeline(runner=runner, options=options)
    _ = pipeline | beam.Create([1]) | beam.Map(lambda x: x)
    quick = dask.config.set({"distributed.comm.timeouts.connect": "2s"})
    with quick, pytest.raises(ConfigError, match="runner.dask_address: cannot connect to tcp://"):
        pipeline.run()
