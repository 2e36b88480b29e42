"""`tamis select` with stream_al: a file as a stream, decisions logged, resumable, on Beam."""

import json

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from apache_beam.testing.util import assert_that, equal_to

from conftest import write_jsonl
from tamis.cli import main as tamis_main
from tamis.config import ConfigError, config_from_dict
from tamis.inputs import StageContext, load_inputs
from tamis.pipelines.select import run_select
from tamis.records import InputError
from tamis.selectors import make_selector
from tamis.selectors.stream_beam import DecideStream, stream_elements
from tamis.selectors.stream_budget import StreamDecider

N = 400


def make_items(seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(N, 3))
    logits[np.arange(N), rng.integers(0, 3, N)] += rng.uniform(0, 3, N)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return [
        {
            "id": f"q{i}",
            "text": f"user query {i}",
            "probs": probs[i].tolist(),
            "embedding": rng.normal(size=4).tolist(),
            "team": "ab"[i % 2],
            "order": float(N - i) if i % 5 == 0 else float(i),  # some arrive out of file order
        }
        for i in range(N)
    ]


def job(root, **params):
    return {
        "pool": {"path": str(root / "items.jsonl")},
        "selection": {
            "selector": "stream_al",
            "budget": "10%",
            "params": {"strategy": "variable_uncertainty", **params},
            "join_records": True,
            "output": str(root / "out"),
        },
    }


@pytest.fixture()
def items(tmp_path):
    records = make_items()
    write_jsonl(tmp_path / "items.jsonl", records)
    return tmp_path, records


def decisions(root, name="out") -> list[dict]:
    return pq.read_table(root / name / "decisions.parquet").to_pylist()


def test_select_runs_the_file_as_a_stream_and_logs_every_decision(items, capsys):
    root, records = items
    (root / "job.yaml").write_text(yaml.safe_dump(job(root)))
    assert tamis_main(["select", str(root / "job.yaml")]) == 0
    out = capsys.readouterr().out
    assert "stream items" in out and "stream_al variable_uncertainty" in out
    log = decisions(root)
    assert len(log) == N  # every item is decided: queried + not queried = items
    # Arrival order is the order column (ties keep file order), not file order.
    order = {r["id"]: r["order"] for r in records}
    arrival = [order[r["id"]] for r in log]
    assert arrival == sorted(arrival) and [r["arrival"] for r in log] == list(range(N))
    # The same decisions as the decider fed the probabilities in arrival order.
    probs = np.asarray([next(x for x in records if x["id"] == r["id"])["probs"] for r in log])
    expected = StreamDecider("variable_uncertainty", 0.1).decide(probabilities=probs)
    assert [r["queried"] for r in log] == expected.queried.tolist()
    subset = [json.loads(line) for line in (root / "out" / "subset.jsonl").read_text().splitlines()]
    assert [r["id"] for r in subset] == [r["id"] for r in log if r["queried"]]
    assert all(r["score"] >= 0 and "text" in r for r in subset)  # utility; records joined
    manifest = json.loads((root / "out" / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["items"] == N and c["queried"] + c["not_queried"] == N == len(log)
    assert c["queried"] == len(subset) > 0
    assert json.loads((root / "out" / "stream_state.json").read_text())[""]["seen"] == N


def test_resume_continues_with_identical_decisions(items):
    root, records = items
    whole = run_select(config_from_dict(job(root, strategy="split", key_field="team")))
    assert whole["counts"]["per_stream_key"]["a"]["items"] == N // 2
    full = decisions(root)
    # Arrival order is by `order`: split the stream there, run the halves one after the other.
    by_order = sorted(records, key=lambda r: r["order"])
    first, rest = by_order[:250], by_order[250:]
    write_jsonl(root / "first.jsonl", first)
    write_jsonl(root / "rest.jsonl", rest)
    head = job(root, strategy="split", key_field="team", items=str(root / "first.jsonl"))
    head["selection"]["output"] = str(root / "head")
    run_select(config_from_dict(head))
    tail = job(
        root,
        strategy="split",
        key_field="team",
        items=str(root / "rest.jsonl"),
        resume=str(root / "head" / "stream_state.json"),
    )
    tail["selection"]["output"] = str(root / "tail")
    run_select(config_from_dict(tail))
    resumed = decisions(root, "head") + decisions(root, "tail")
    assert [r["id"] for r in resumed] == [r["id"] for r in full]
    assert [r["queried"] for r in resumed] == [r["queried"] for r in full]
    # A resume with other parameters is refused.
    tail["selection"]["params"]["s"] = 0.05
    with pytest.raises(ConfigError, match="selection.params.resume: sub-stream '[ab]' was run"):
        run_select(config_from_dict(tail))


@pytest.mark.parametrize("strategy", ["biqf", "dbal", "randomized_variable_uncertainty"])
def test_the_beam_job_decides_as_the_local_run(items, strategy):
    root, _ = items
    local = job(root, strategy=strategy, key_field="team")
    run_select(config_from_dict(local))
    on_beam = job(root, strategy=strategy, key_field="team")
    on_beam["selection"].update(distributed=True, output=str(root / "beam"))
    run_select(config_from_dict(on_beam))
    assert json.dumps(decisions(root, "beam")) == json.dumps(decisions(root))  # NaN == NaN
    states = [json.loads((root / d / "stream_state.json").read_text()) for d in ("out", "beam")]
    assert states[0] == states[1]


def test_decide_stream_on_a_test_stream_with_late_arrivals(items):
    """Unbounded-style input: items arrive out of order in several bundles, the watermark
    advances between them; decisions must follow arrival order all the same."""
    root, _ = items
    config = config_from_dict(job(root, strategy="biqf", key_field="team"))
    selector = make_selector("stream_al", config.selection.params)
    ctx = StageContext(config, "selection", selector.params, selector.pool_input, "", "")
    stream = load_inputs(ctx, selector.needs).stream.items
    run_select(config)
    expected = [(r["id"], r["queried"]) for r in decisions(root)]  # the local run's decisions

    elements = stream_elements(stream)
    test_stream = BeamTestStream()
    for lo in range(0, N, 100):
        batch = elements[lo : lo + 100][::-1]  # each bundle arrives reversed
        test_stream = test_stream.add_elements(
            [beam.window.TimestampedValue(e, e[1]["arrival"]) for e in batch]
        ).advance_watermark_to(lo + 100)
    test_stream = test_stream.advance_watermark_to_infinity()
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as pipeline:
        out = pipeline | test_stream | DecideStream(selector, 0.1, 0, keyed=True, n_classes=3)
        got = out.decisions | beam.Map(lambda r: (r["id"], r["queried"]))
        assert_that(got, equal_to(expected))


def test_bad_stream_configs_fail_clearly(items):
    root, records = items
    with pytest.raises(ConfigError, match="stream_al spends a fraction of the stream"):
        run_select(config_from_dict({**job(root), "selection": {**job(root)["selection"],
                                                                "budget": 40}}))  # fmt: skip
    for r in records:
        del r["embedding"]
    write_jsonl(root / "items.jsonl", records)
    with pytest.raises(InputError, match="dbal needs an 'embedding' column"):
        run_select(config_from_dict(job(root, strategy="dbal")))
    pq.write_table(pa.table({"id": ["x"], "score": [0.3]}), root / "u.parquet")
    with pytest.raises(InputError, match=r"u.parquet: no probability column found"):
        run_select(config_from_dict(job(root, items=str(root / "u.parquet"))))
    manifest = run_select(
        config_from_dict(job(root, items=str(root / "u.parquet"), utility_field="score"))
    )
    assert manifest["counts"]["items"] == 1
