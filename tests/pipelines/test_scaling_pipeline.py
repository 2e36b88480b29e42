"""`tamis scaling fit|plan`: tables checked row by row, the worked example end to end."""

import json
from pathlib import Path

import pytest

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
            "row 2: samples_seen must be positive",
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
    high = run_select(config_from_dict(job("3.2B")))
    assert high["info"]["top_m"] == 3 and high["counts"]["selected"] == 30
    # Without a bucket column: quantiles of quality_score (highest = best bucket).
    for row in pool:
        del row["bucket"]
    write_jsonl(tmp_path / "pool.jsonl", pool)
    by_score = run_select(config_from_dict(job("32M")))
    rows = [json.loads(x) for x in (tmp_path / "out" / "subset.jsonl").read_text().splitlines()]
    assert by_score["counts"]["selected"] == 10 and all(r["score"] == 0.0 for r in rows)
