"""`tamis select` with stream_al: a file as a stream, decisions logged, resumable, on Beam."""

import json
import re

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as BeamTestStream
from apache_beam.testing.util import assert_that, equal_to

from conftest import cli_error, write_jsonl
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
    # A resume with other parameters is refused (into a fresh output dir: the tail's would
    # be refused as another job's anyway).
    tail["selection"]["params"]["s"] = 0.05
    tail["selection"]["output"] = str(root / "tail_other")
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
    other = job(root, items=str(root / "u.parquet"), utility_field="score")
    with pytest.raises(InputError, match=r"1 of the 1 selected ids have no record in .*items"):
        run_select(config_from_dict(other))  # joined: the items are not the pool's records
    other["selection"]["join_records"] = False
    manifest = run_select(config_from_dict(other))
    assert manifest["counts"]["items"] == 1


@pytest.fixture()
def saved_states(items):
    """A keyed biqf run's stream_state.json (biqf: windows and counters to corrupt)."""
    root, _ = items
    head = job(root, strategy="biqf", key_field="team")
    head["selection"]["output"] = str(root / "head")
    run_select(config_from_dict(head))
    return json.loads((root / "head" / "stream_state.json").read_text())


def changed(states: dict, key: str, value) -> dict:
    out = json.loads(json.dumps(states))
    *head, last = key.split(".")
    target = out["a"]
    for name in head:
        target = target[name]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return out


def broken_states(states: dict) -> list[tuple[str, str]]:
    """(file text, what the error says) for every kind of broken state file tried."""
    n = len(states["a"]["window_values"])
    cases = [
        # Silently ignored before, with `resumed: true` in the manifest.
        ("[]", "expected a JSON object of sub-stream states"),
        ("null", "expected a JSON object of sub-stream states"),
        ('{"foo": "bar"}', "sub-stream 'foo': expected a state object"),
        ('{"foo": {"x": 1}}', "sub-stream 'foo': missing key 'strategy'"),
        # Tracebacks before (JSONDecodeError, UnicodeDecodeError, TypeError).
        ("", "not a JSON stream state"),
        ("not json", "not a JSON stream state"),
        (json.dumps(states)[:80], "not a JSON stream state"),
        ("3", "expected a JSON object of sub-stream states"),
        ('{"a": []}', "sub-stream 'a': expected a state object"),
    ]
    cases += [
        (json.dumps(changed(states, key, value)), f"sub-stream 'a': {message}")
        for key, value, message in [
            # KeyError / ValueError / TypeError tracebacks before.
            ("seen", KeyError, "missing key 'seen'"),
            ("params", KeyError, "missing key 'params'"),
            ("rng", KeyError, "missing key 'rng'"),
            ("seen", "x", "seen: must be a non-negative integer"),
            ("theta", "x", "theta: must be a finite number"),
            ("u_t", [1], "u_t: must be a finite number"),
            ("params", "x", "params: expected an object"),
            ("params.w", "x", "params.w: must be a positive integer"),
            ("params.zzz", 1, "params: unknown key 'zzz'"),
            ("params.budget", 5, "params: budget must be a fraction"),
            ("strategy", "bogus", "strategy: must be one of"),
            ("window_count", "x", "window_count: must be an integer"),
            # Accepted before: wrong values resumed silently (or crashed the process: a
            # window shorter than w, or a head beyond it, indexes past the compiled ring).
            ("seen", -5, "seen: must be a non-negative integer"),
            ("theta", None, "theta: must be a finite number"),
            ("params.s", KeyError, "params: missing key 's'"),
            ("window_values", [0.0], f"window_values: must be a list of {n} numbers"),
            ("window_head", 10 * n, "window_head: must be an integer in"),
            ("window_count", 10 * n, "window_count: must be an integer in"),
            ("window_sorted", list(range(n))[::-1], "window_sorted: its first"),
            ("queried_count", 10**6, "queried_count: 1000000 is more than seen"),
        ]
    ]
    cases.append((json.dumps(changed(states, "theta", float("nan"))), "theta: must be a finite"))
    return cases


def test_broken_resume_states_are_refused_naming_file_and_key(items, saved_states, capsys):
    root, _ = items
    state = root / "state.json"
    resume = job(root, strategy="biqf", key_field="team", resume=str(state))
    (root / "job.yaml").write_text(yaml.safe_dump(resume))
    for text, message in broken_states(saved_states):
        state.write_text(text)
        line = cli_error(capsys, *["select", str(root / "job.yaml")])
        assert line.startswith(f"tamis: error: {state}: ") and message in line, (text, line)
        assert not (root / "out" / "manifest.json").exists()
    state.unlink()  # a missing file was a FileNotFoundError traceback
    line = cli_error(capsys, *["select", str(root / "job.yaml")])
    assert f"{state}: cannot read the stream state" in line
    # A valid state still resumes, and the manifest says how many sub-streams did.
    state.write_text(json.dumps(saved_states))
    assert tamis_main(["select", str(root / "job.yaml")]) == 0
    info = json.loads((root / "out" / "manifest.json").read_text())["info"]
    assert info["resumed"] is True and info["resumed_streams"] == 2


def test_resume_states_of_another_keying_or_dimension_are_refused(items, capsys):
    root, _ = items
    unkeyed = job(root, strategy="dbal")
    unkeyed["selection"]["output"] = str(root / "unkeyed")
    run_select(config_from_dict(unkeyed))
    keyed = job(root, strategy="dbal", key_field="team")
    keyed["selection"]["output"] = str(root / "keyed")
    run_select(config_from_dict(keyed))
    # An unkeyed run's state for a keyed run (and the reverse) used to be ignored silently.
    for state, params in [("unkeyed", {"key_field": "team"}), ("keyed", {})]:
        path = root / state / "stream_state.json"
        resume = job(root, strategy="dbal", resume=str(path), **params)
        resume["selection"]["output"] = str(root / f"resumed_{state}")
        (root / "job.yaml").write_text(yaml.safe_dump(resume))
        line = cli_error(capsys, *["select", str(root / "job.yaml")])
        assert f"selection.params.resume: {path} holds the state of a run with" in line
    # dbal's window of 4-dimensional vectors against 3-dimensional items: a ValueError deep
    # in the decider before.
    path = root / "keyed" / "stream_state.json"
    states = json.loads(path.read_text())
    for state in states.values():
        state["embeddings"] = [vector[:3] for vector in state["embeddings"]]
    (root / "state3.json").write_text(json.dumps(states))
    resume = job(root, strategy="dbal", key_field="team", resume=str(root / "state3.json"))
    (root / "job.yaml").write_text(yaml.safe_dump(resume))
    line = cli_error(capsys, *["select", str(root / "job.yaml")])
    assert re.search(r"state3.json: sub-stream '[ab]': embeddings: the window holds 3-dim", line)


ITEM = {"id": "q0", "probs": [0.2, 0.8], "order": 1.0, "u": 0.5, "team": "a", "embedding": [0.1]}


@pytest.mark.parametrize(
    "second, params, message",
    [
        # Tracebacks before (float() of a string, a list in a numeric column).
        ({"order": "soon"}, {}, "row 1 (id 'q1'): 'order' must be a number, got 'soon'"),
        ({"u": "high"}, {"utility_field": "u"}, "row 1 (id 'q1'): 'u' must be a number"),
        ({"probs": ["a", "b"]}, {}, "row 1 (id 'q1'): 'probs' must be a list of numbers"),
        # Accepted silently before: a NaN order arrived last, a null id was the id 'None',
        # a null key the sub-stream 'None', a NaN vector never a neighbour, True a utility.
        ('{"id": "q1", "probs": [0.5, 0.5], "order": NaN}', {}, "row 1 (id 'q1'): 'order' must"),
        ({"id": None}, {}, "row 1: 'id' must be an id, got None"),
        ({"team": None}, {"key_field": "team"}, "row 1 (id 'q1'): 'team' must be a sub-stream"),
        ({"team": ["a"]}, {"key_field": "team"}, "row 0 (id 'q0'): 'team' must be a sub-stream"),
        ({"u": True}, {"utility_field": "u"}, "row 1 (id 'q1'): 'u' must be a number, got True"),
        ({"embedding": [None]}, {"strategy": "dbal"}, "row 1 (id 'q1'): 'embedding' holds a null"),
    ],
)
def test_bad_stream_items_are_named_by_row_id_and_key(tmp_path, capsys, second, params, message):
    path = tmp_path / "items.jsonl"
    if isinstance(second, str):
        write_jsonl(path, [ITEM, second])
    elif isinstance(second.get("team"), list):  # a column of lists: every row one
        write_jsonl(path, [{**ITEM, **second}, {**ITEM, "id": "q1", **second}])
    else:  # the first item lacks a key whose type changes (Arrow refuses such a column)
        changing = {k for k, v in second.items() if v is not None and v != [None]}
        first = {k: v for k, v in ITEM.items() if k not in changing}
        write_jsonl(path, [first, {**ITEM, "id": "q1", **second}])
    config = job(tmp_path, items=str(path), **params)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    line = cli_error(capsys, *["select", str(tmp_path / "job.yaml")])
    assert line.startswith(f"tamis: error: {path}: ") and message in line, line


def test_a_pool_whose_records_have_no_text_says_so(tmp_path, capsys):
    write_jsonl(tmp_path / "items.jsonl", [{"id": f"i{n}", "probs": [0.2, 0.8]} for n in range(5)])
    spec = job(tmp_path)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    line = cli_error(capsys, "select", str(tmp_path / "job.yaml"))
    assert "no pool record to stream" in line and "selection.params.items" in line
