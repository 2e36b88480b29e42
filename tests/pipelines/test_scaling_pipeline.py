"""`tamis scaling fit|plan`: tables checked row by row, the worked example end to end."""

import json
from pathlib import Path

import pytest

from conftest import cli_error
from tamis.cli import main as tamis_main
from tamis.config import ConfigError, config_from_dict
from tamis.pipelines.scaling import parse_count, run_fit
from tamis.records import InputError

ROOT = Path(__file__).parents[2]


def test_the_worked_example_fits_and_plans(tmp_path, capsys):
    config = ROOT / "configs" / "scaling_law.yaml"
    out = tmp_path / "scaling"
    observations = ROOT / "configs" / "data" / "scaling_observations.csv"
    overrides = ["--set", f"scaling.output={out}", "--set", f"scaling.observations={observations}"]
    assert tamis_main(["scaling", "fit", str(config), *overrides]) == 0
    fit = json.loads((out / "fit.json").read_text())
    # The observations were made from the reference's T-MARS parameters (plus 0.2% noise).
    truth = {"top0-10%": -0.16, "top10-20%": -0.125, "top20-30%": -0.1, "top30-40%": -0.085}
    for name, b in truth.items():
        assert fit["buckets"][name]["b"] == pytest.approx(b, rel=0.05)
    assert tamis_main(["scaling", "plan", str(config), *overrides]) == 0
    text = capsys.readouterr().out
    plan = json.loads((out / "plan.json").read_text())
    frontier = [(p["samples_seen"], p["top_m"]) for p in plan["frontier"]]
    # Aggressive filtering wins at low compute, less filtering as compute grows.
    assert frontier[0] == (32e6, 1) and frontier[-1][1] > 1
    assert [m for _, m in frontier] == sorted(m for _, m in frontier)
    assert len(plan["rows"]) == 5 * 4 and sum(r["best"] for r in plan["rows"]) == 5
    assert (out / "plan.csv").read_text().startswith("samples_seen,top_m,buckets,")
    assert (out / "plan.png").read_bytes()[:4] == b"\x89PNG"
    assert "3.2e+07 samples seen: top 1" in text


@pytest.mark.parametrize(
    "table, message",
    [
        ("bucket,error\na,0.5\n", "no 'samples_seen' column"),
        ("bucket,samples_seen,loss\na,1,0.5\n", "needs an 'error' or an 'accuracy' column"),
        ("bucket,samples_seen,error\na,10,0.5\na,lots,0.4\n", "row 2: 'samples_seen' is not a"),
        (
            "bucket,samples_seen,error\na,10,0.5\na,-20,0.4\n",
            "row 2: 'samples_seen' must be positive",
        ),
    ],
)
def test_bad_observation_tables_name_the_problem(tmp_path, table, message):
    (tmp_path / "obs.csv").write_text(table)
    config = config_from_dict(
        {
            "scaling": {
                "observations": str(tmp_path / "obs.csv"),
                "pool_size": "1M",
                "output": str(tmp_path / "out"),
            }
        }  # fmt: skip
    )
    with pytest.raises(InputError, match=message):
        run_fit(config)


def test_accuracy_tables_too_few_points_and_counts(tmp_path):
    (tmp_path / "obs.csv").write_text("bucket,samples_seen,accuracy\na,1e6,0.2\na,2e6,0.3\n")
    config = config_from_dict(
        {
            "scaling": {
                "observations": str(tmp_path / "obs.csv"),
                "pool_size": "1M",
                "fit": {"a": 0.025, "d": 0.1},
                "output": str(tmp_path / "out"),
            }
        }  # fmt: skip
    )
    with pytest.raises(ConfigError, match="bucket 'a': 2 observations; a fit needs at least 3"):
        run_fit(config)
    assert parse_count("1.28B", "k") == 1.28e9 and parse_count("32M", "k") == 32e6
    assert parse_count(12_800_000, "k") == 12.8e6 and parse_count("100k", "k") == 1e5
    with pytest.raises(ConfigError, match="scaling.compute\\[0\\]: expected a count like 32M"):
        parse_count("lots", "scaling.compute[0]")


def test_scaling_law_selector_keeps_the_best_buckets(tmp_path, capsys):
    from conftest import write_jsonl

    fit_dir = tmp_path / "scaling"
    config = ROOT / "configs" / "scaling_law.yaml"
    observations = ROOT / "configs" / "data" / "scaling_observations.csv"
    args = ["--set", f"scaling.output={fit_dir}", "--set", f"scaling.observations={observations}"]
    assert tamis_main(["scaling", "fit", str(config), *args]) == 0
    names = ["top0-10%", "top10-20%", "top20-30%", "top30-40%"]
    pool = [
        {"id": f"x{i}", "text": "t", "bucket": names[i % 4], "quality_score": float(-(i % 4))}
        for i in range(40)
    ]
    write_jsonl(tmp_path / "pool.jsonl", pool)

    def job(compute, **selection):
        return {
            "pool": {"path": str(tmp_path / "pool.jsonl")},
            "selection": {
                "selector": "scaling_law",
                "budget": "100%",
                "params": {"fit": str(fit_dir / "fit.json"), "compute": compute},
                "output": str(tmp_path / "out"),
                **selection,
            },
        }

    from tamis.pipelines.select import run_select

    low = run_select(config_from_dict(job("32M")))
    assert low["info"]["best_buckets"] == ["top0-10%"] and low["counts"]["selected"] == 10
    high = run_select(config_from_dict(job("3.2B", output=str(tmp_path / "high"))))
    assert high["info"]["top_m"] == 3 and high["counts"]["selected"] == 30
    # Without a bucket column: quantiles of quality_score (highest = best bucket).
    for row in pool:
        del row["bucket"]
    write_jsonl(tmp_path / "pool.jsonl", pool)
    by_score = run_select(config_from_dict(job("32M", output=str(tmp_path / "by_score"))))
    subset = tmp_path / "by_score" / "subset.jsonl"
    rows = [json.loads(x) for x in subset.read_text().splitlines()]
    assert by_score["counts"]["selected"] == 10 and all(r["score"] == 0.0 for r in rows)


def scaling_job(tmp_path, observations: str) -> str:
    import yaml

    job = {
        "scaling": {
            "observations": observations,
            "pool_size": "12.8M",
            "fit": {"a": 0.025, "d": 0.1},
            "compute": ["32M", "1.28B"],
            "output": str(tmp_path / "out"),
        }
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    return str(tmp_path / "job.yaml")


HEADER = "bucket,samples_seen,error\n"
FALLING = "a,1e6,0.5\na,2e6,0.4\n"


@pytest.mark.parametrize(
    "name, text, needle",
    [
        # Errors outside [0, 1] were fitted (or refused only as "does not fall").
        (
            "obs.csv",
            HEADER + FALLING + "a,3e6,-0.5\n",
            "row 3: 'error' must be in [0, 1], got -0.5",
        ),
        ("obs.csv", HEADER + "a,1e6,1.7\n" + FALLING, "row 1: 'error' must be in [0, 1], got 1.7"),
        (
            "obs.csv",
            "bucket,samples_seen,accuracy\na,1e6,0.2\na,2e6,1.5\na,3e6,0.4\n",
            "row 2: 'accuracy' must be in [0, 1], got 1.5",
        ),
        # Were tracebacks.
        ("obs.csv", HEADER + FALLING + "a,3e6,inf\n", "row 3: 'error' is not a finite number"),
        ("obs.csv", "", "empty file, no observations"),
        (
            "obs.csv",
            "bucket,samples_seen,error,pool_size\na,1e6,0.5,0\n",
            "row 1: 'pool_size' must",
        ),
        ("obs.jsonl", "not json\n", "JSON parse error"),
        ("obs.jsonl", "", "Empty JSON file"),
        ("obs.parquet", "PAR1 not parquet", "not a readable Parquet file"),
        (
            "obs.jsonl",
            '{"bucket": "a", "samples_seen": 1e6, "error": [0.5]}\n',
            "row 1: 'error' is not a finite number ([0.5])",
        ),
        # Were fitted as a bucket named 'None', or as 1.0.
        ("obs.csv", HEADER + ",1e6,0.5\n", "row 1: 'bucket' is empty"),
        (
            "obs.jsonl",
            '{"bucket": "a", "samples_seen": 1e6, "error": true}\n',
            "row 1: 'error' is not a finite number (True)",
        ),
        ("obs.csv", HEADER, "no observations (only a header)"),
        ("obs.csv", HEADER + FALLING + "a,inf,0.3\n", "row 3: 'samples_seen' is not a finite"),
    ],
)
def test_bad_observation_files_fail_on_the_cli(tmp_path, capsys, name, text, needle):
    (tmp_path / name).write_text(text)
    line = cli_error(capsys, *["scaling", "fit", scaling_job(tmp_path, str(tmp_path / name))])
    assert f"{tmp_path / name}: " in line and needle in line


GOOD_FIT = {
    "a": 0.025,
    "d": 0.1,
    "z": 1e5,
    "buckets": {
        "hi": {"b": -0.15, "tau": 3.0, "pool_size": 12.8e6},
        "lo": {"b": -0.1, "tau": 2.0, "pool_size": 12.8e6},
    },
    "loss": 0.0,
    "method": "least_squares",
}


def bad_fit(path: list[str], value) -> str:
    fit = json.loads(json.dumps(GOOD_FIT))
    *head, last = path
    target = fit
    for key in head:
        target = target[key]
    target[last] = value
    return json.dumps(fit)  # NaN and Infinity as Python's json writes them


@pytest.mark.parametrize(
    "text, needle",
    [
        # Planned "predicted error 0.0000" (or nonsense) before.
        (bad_fit(["buckets", "lo", "tau"], -1.0), "buckets.lo.tau must be a positive number"),
        (bad_fit(["buckets", "lo", "tau"], 0), "buckets.lo.tau must be a positive number"),
        (bad_fit(["buckets", "lo", "tau"], float("nan")), "buckets.lo.tau must be a positive"),
        (bad_fit(["buckets", "hi", "b"], 0.2), "buckets.hi.b must be a negative number"),
        (bad_fit(["buckets", "hi", "b"], float("-inf")), "buckets.hi.b must be a negative"),
        (bad_fit(["d"], -0.5), "'d' must be a number >= 0"),
        # Were tracebacks in `scaling plan` (matplotlib) or in the selector.
        (bad_fit(["a"], float("nan")), "'a' must be a positive number, got nan"),
        (bad_fit(["a"], 0), "'a' must be a positive number, got 0"),
        (bad_fit(["d"], float("inf")), "'d' must be a number >= 0, got inf"),
        (bad_fit(["z"], -1), "'z' must be a positive number"),
        (bad_fit(["buckets", "lo", "pool_size"], 1e6), "needs equal-size buckets"),
        (bad_fit(["buckets", "lo", "pool_size"], 0), "buckets.lo.pool_size must be a positive"),
        # Named the file but not the key.
        (bad_fit(["loss"], "small"), "'loss' must be a number"),
        (bad_fit(["buckets", "lo"], [1]), "buckets.lo must be an object"),
        ("[]", "expected a JSON object"),
        ("", "not a JSON fit"),
        (json.dumps(GOOD_FIT)[:60], "not a JSON fit"),
    ],
)
def test_bad_fits_are_refused_by_plan_and_by_the_selector(tmp_path, capsys, text, needle):
    import yaml

    from conftest import write_jsonl

    (tmp_path / "out").mkdir()
    fit_path = tmp_path / "out" / "fit.json"
    fit_path.write_text(text)
    line = cli_error(capsys, *["scaling", "plan", scaling_job(tmp_path, "unused.csv")])
    assert line.startswith(f"tamis: error: {fit_path}: ") and needle in line
    assert not (tmp_path / "out" / "plan.csv").exists()
    pool = [{"id": f"x{i}", "text": "t", "bucket": ["hi", "lo"][i % 2]} for i in range(6)]
    write_jsonl(tmp_path / "pool.jsonl", pool)
    job = {
        "pool": {"path": str(tmp_path / "pool.jsonl")},
        "selection": {
            "selector": "scaling_law",
            "params": {"fit": str(fit_path), "compute": "32M"},
            "output": str(tmp_path / "subset"),
        },
    }
    (tmp_path / "select.yaml").write_text(yaml.safe_dump(job))
    line = cli_error(capsys, *["select", str(tmp_path / "select.yaml")])
    assert line.startswith(f"tamis: error: {fit_path}: ") and needle in line


@pytest.mark.parametrize(
    "rows, needle",
    [
        # A NaN or missing score went to the worst bucket without a word; text was a traceback.
        (['{"id": "x0", "quality_score": NaN}'], "(id 'x0'): 'quality_score' must be a finite"),
        ([{"id": "x0", "quality_score": None}], "(id 'x0'): 'quality_score' must be a finite"),
        ([{"id": "x0", "quality_score": "high"}], "(id 'x0'): 'quality_score' must be a finite"),
        # A null bucket was a TypeError (None sorted with names); a list one a polars error.
        ([{"id": "x0", "bucket": None, "quality_score": 1.0}], "(id 'x0'): 'bucket' must be"),
        ([{"id": "x0", "bucket": ["hi"]}], "(id 'x0'): 'bucket' must be a bucket name"),
        ([{"id": None, "bucket": "hi"}], ": no 'id' (null)"),
    ],
)
def test_bad_bucketed_pools_are_named_by_file_line_id(tmp_path, capsys, rows, needle):
    import yaml

    from conftest import write_jsonl

    (tmp_path / "fit.json").write_text(json.dumps(GOOD_FIT))
    write_jsonl(tmp_path / "pool.jsonl", ["", *rows])
    job = {
        "pool": {"path": str(tmp_path / "pool.jsonl")},
        "selection": {
            "selector": "scaling_law",
            "params": {"fit": str(tmp_path / "fit.json"), "compute": "32M"},
            "output": str(tmp_path / "subset"),
        },
    }
    (tmp_path / "select.yaml").write_text(yaml.safe_dump(job))
    line = cli_error(capsys, *["select", str(tmp_path / "select.yaml")])
    assert f"{tmp_path / 'pool.jsonl'}:2" in line and needle in line
