"""`tamis select` with stat: profile, closed-form weights, sampled draws, composable pools."""

import json

import polars as pl
import pytest
import yaml

from conftest import cli_error, write_jsonl
from tamis.cli import main as tamis_main
from tamis.config import ConfigError, config_from_dict
from tamis.pipelines.select import run_select

POOL = [
    {"id": "p0", "text": "solve x + 1 = 2", "skills": ["algebra"]},
    {"id": "p1", "text": "area of a right triangle", "skills": ["algebra", "geometry"]},
    {"id": "p2", "text": "angles of a square", "skills": ["geometry"]},
    {"id": "p3", "text": "count the subsets", "skills": ["counting"]},
    {"id": "p4", "text": "a story", "skills": []},
    {"id": "p5", "text": "solve 2x = 4", "skills": ["Algebra "]},  # a spelling variant
]
EVALUATION = [
    {"id": "q1", "correct": False, "missing_skills": ["algebra"]},
    {
        "id": "q2",
        "rewards": [0.9, 0.6, 0.95],
        "missing_skills": ["algebra", "geometry", "topology"],
    },
    {"id": "q3", "correct": True, "missing_skills": ["counting"]},  # not difficult
    {"id": "q4", "rewards": [0.9, 0.9, 0.9], "missing_skills": ["counting"]},  # not difficult
    {"id": "q5", "correct": False, "missing_skills": []},  # difficult, adds nothing
]


@pytest.fixture()
def stat_job(tmp_path):
    write_jsonl(tmp_path / "pool.jsonl", POOL)
    write_jsonl(tmp_path / "evaluation.jsonl", EVALUATION)

    def job(**params):
        return {
            "pool": {"path": str(tmp_path / "pool.jsonl")},
            "selection": {
                "selector": "stat",
                "budget": "100%",
                "params": {
                    "evaluation": str(tmp_path / "evaluation.jsonl"),
                    "skill_aliases": {"Algebra": "algebra"},
                    **params,
                },
                "join_records": True,
                "output": str(tmp_path / "out"),
            },
        }

    return tmp_path, job


def read_subset(root) -> list[dict]:
    return [json.loads(line) for line in (root / "out" / "subset.jsonl").read_text().splitlines()]


def test_weights_mode_writes_the_profile_and_closed_form_weights(stat_job, capsys):
    root, job = stat_job
    (root / "job.yaml").write_text(yaml.safe_dump(job(k=3)))
    assert tamis_main(["select", str(root / "job.yaml")]) == 0
    out = capsys.readouterr().out
    assert "most missed skills: algebra (2), geometry (1), topology (1)" in out
    assert "no training example carries: topology (1)" in out
    # c_algebra = 2 (q1, q2), c_geometry = 1 (q2); algebra: p0, p1, p5; geometry: p1, p2.
    k = 3
    expected = {"p0": 2 * k / 3, "p1": 2 * k / 3 + k / 2, "p2": k / 2, "p5": 2 * k / 3}
    total = sum(expected.values())
    subset = read_subset(root)
    assert [r["id"] for r in subset] == ["p1", "p0", "p5", "p2"]  # heaviest first, ties by pool
    for row in subset:
        assert row["weight"] == pytest.approx(expected[row["id"]] / total)
    assert subset[2]["skills"] == ["algebra"] and "text" in subset[0]
    profile = pl.read_parquet(root / "out" / "missing_skill_profile.parquet")
    # uniform_share: algebra 3, geometry 2, counting 1 of 6 (example, skill) pairs.
    assert profile.rows() == [
        ("algebra", 2, 0.5, 3, pytest.approx(0.6), 0.5),
        ("geometry", 1, 0.25, 2, pytest.approx(0.4), pytest.approx(1 / 3)),
        ("topology", 1, 0.25, 0, 0.0, 0.0),  # the pool cannot teach it
        ("counting", 0, 0.0, 1, 0.0, pytest.approx(1 / 6)),
    ]
    manifest = json.loads((root / "out" / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["difficult"] == 3 and c["difficult_without_missing_skills"] == 1
    assert c["unknown_skills"] == {"topology": 1} and c["examples_with_weight"] == 4


def test_mix_uniform_keeps_every_example(stat_job):
    root, job = stat_job
    run_select(config_from_dict(job(mix_uniform=0.3)))
    subset = read_subset(root)
    assert len(subset) == 6 and sum(r["weight"] for r in subset) == pytest.approx(1.0)
    assert {r["id"]: r["weight"] for r in subset}["p4"] == pytest.approx(0.3 / 6)


def test_sample_mode_draws_the_budget_reproducibly(stat_job):
    root, job = stat_job
    config = job(mode="sample")
    config["selection"]["budget"] = 5000
    run_select(config_from_dict(config))
    first = read_subset(root)
    assert sum(r["draws"] for r in first) == 5000
    assert all(r["weight"] == r["draws"] for r in first)
    # Only examples carrying a missing skill are drawn (frequencies vs weights: the core's
    # convergence test; here the first stage's list has just 3 pairs x k = 9 entries).
    assert {r["id"] for r in first} <= {"p0", "p1", "p2", "p5"}
    run_select(config_from_dict(config))
    assert read_subset(root) == first


def test_a_previous_subset_can_be_the_pool(stat_job):
    root, job = stat_job
    first = job(mix_uniform=0.5)
    first["selection"]["budget"] = 4
    first["selection"]["output"] = str(root / "first")
    run_select(config_from_dict(first))  # four examples, with their skills joined
    second = job(pool_subset=str(root / "first"))
    manifest = run_select(config_from_dict(second))
    assert manifest["counts"]["pool"] == 4
    assert {r["id"] for r in read_subset(root)} <= {r["id"] for r in POOL}


def test_bad_stat_configs_fail_clearly(stat_job):
    root, job = stat_job
    no_eval = job()
    del no_eval["selection"]["params"]["evaluation"]
    with pytest.raises(ConfigError, match="stat needs the student's evaluation"):
        run_select(config_from_dict(no_eval))
    write_jsonl(root / "evaluation.jsonl", [{"id": "q", "correct": False, "missing_skills": ["x"]}])
    with pytest.raises(ConfigError, match="no difficult question misses a skill"):
        run_select(config_from_dict(job()))


def test_report_draws_the_skill_profile(stat_job, capsys):
    root, job = stat_job
    run_select(config_from_dict(job()))
    assert tamis_main(["report", str(root / "out")]) == 0
    out = capsys.readouterr().out
    assert "skill profile:" in out
    png = root / "out" / "skills.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_worked_example_runs_as_documented(tmp_path, capsys):
    """configs/stat.yaml on `tamis data humaneval` (paths moved under tmp_path)."""
    from pathlib import Path

    config = Path(__file__).parents[2] / "configs" / "stat.yaml"
    data = tmp_path / "humaneval"
    assert tamis_main(["data", "humaneval", str(data)]) == 0
    overrides = [
        f"pool.path={data / 'humaneval_pool.jsonl'}",
        f"selection.params.evaluation={data / 'humaneval_evaluation.jsonl'}",
        f"selection.output={tmp_path / 'out'}",
    ]
    args = ["select", str(config)] + [a for o in overrides for a in ("--set", o)]
    assert tamis_main(args) == 0
    out = capsys.readouterr().out
    assert "120 HumanEval problems" in out and "44 questions" in out
    assert "most missed skills: number-theory" in out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"]["pool"] == 120 and manifest["counts"]["difficult"] > 0
    rows = [json.loads(x) for x in (data / "humaneval_evaluation.jsonl").read_text().splitlines()]
    assert all(r["note"].startswith("made-up student evaluation") for r in rows)


# First rows without the column under test (Arrow's reader refuses a column whose type
# changes between rows, naming the file: the row-by-row checks here come after it).
BY_FLAG = {"id": "q1", "correct": False, "missing_skills": ["algebra"]}
BY_REWARDS = {"id": "q1", "rewards": [0.1], "missing_skills": ["algebra"]}
NO_SKILLS = {"id": "q1", "correct": False}


@pytest.mark.parametrize(
    "first, second, needle",
    [
        # Were counted as "not difficult" without a word.
        (BY_FLAG, {"id": "q2", "rewards": [], "missing_skills": []}, "'rewards' is empty"),
        (BY_FLAG, '{"id": "q2", "rewards": [0.9, NaN]}', "'rewards' must be finite"),
        (BY_FLAG, '{"id": "q2", "rewards": [Infinity]}', "'rewards' must be finite"),
        (BY_FLAG, {"id": "q2", "rewards": [0.5, None]}, "'rewards' must be finite"),
        (BY_REWARDS, {"id": "q2", "correct": "no"}, "'correct' must be true or false"),
        (BY_REWARDS, {"id": "q2", "correct": 0}, "'correct' must be true or false"),
        (BY_FLAG, {"id": "q2", "missing_skills": []}, "neither 'correct' nor 'rewards'"),
        # Were polars tracebacks.
        (BY_FLAG, {"id": "q2", "rewards": 0.4}, "'rewards' must be a list"),
        (BY_FLAG, {"id": "q2", "rewards": ["0.4"]}, "'rewards' must be a list"),
        (NO_SKILLS, {"id": "q2", "correct": False, "missing_skills": [1]}, "must be a list"),
        (NO_SKILLS, {"id": "q2", "correct": True, "missing_skills": [None]}, "has a null"),
        (BY_FLAG, {"id": "q2", "correct": False, "missing_skills": [" "]}, "has a blank"),
        (NO_SKILLS, {"id": "q2", "correct": False, "missing_skills": [["a"]]}, "must be a list"),
    ],
)
def test_bad_evaluation_rows_are_named_by_file_line_id_and_key(
    stat_job, capsys, first, second, needle
):
    root, job = stat_job
    write_jsonl(root / "evaluation.jsonl", [first, "", second])  # line 2 is blank
    (root / "job.yaml").write_text(yaml.safe_dump(job()))
    line = cli_error(capsys, *["select", str(root / "job.yaml")])
    assert f"{root / 'evaluation.jsonl'}:3 (id 'q2'): " in line and needle in line


@pytest.mark.parametrize(
    "rows, needle",
    [
        # A whole column of one wrong type: polars errors before.
        ([{"id": "q1", "rewards": "0.4", "missing_skills": []}], "'rewards' must be a list"),
        ([{"id": "q1", "correct": False, "missing_skills": "algebra"}], "must be a list of skill"),
        ([{"id": "q1", "rewards": None, "missing_skills": []}], "neither 'correct' nor"),
        (["", "  "], "no questions"),
        ([{"id": "q1", "missing_skills": []}], "each question needs 'correct' or 'rewards'"),
        ([{"id": "q1", "correct": False}], "no 'missing_skills' column"),
        (['{"id": "q1", "correct": false, "missing_skills": ["alg'], "JSON parse error"),
    ],
)
def test_bad_evaluation_files_fail_clearly(stat_job, capsys, rows, needle):
    root, job = stat_job
    write_jsonl(root / "evaluation.jsonl", rows)
    (root / "job.yaml").write_text(yaml.safe_dump(job()))
    line = cli_error(capsys, *["select", str(root / "job.yaml")])
    assert str(root / "evaluation.jsonl") in line and needle in line


def test_empty_missing_skills_lists_are_no_missing_skills(stat_job, capsys):
    """`missing_skills: []` on every row (an all-empty list column) was a polars traceback:
    now it is simply no missing skill; with nothing to target, the error names the file."""
    root, job = stat_job
    write_jsonl(root / "evaluation.jsonl", [{"id": "q1", "correct": False, "missing_skills": []}])
    (root / "job.yaml").write_text(yaml.safe_dump(job()))
    line = cli_error(capsys, *["select", str(root / "job.yaml")])
    assert "selection.params.evaluation: no difficult question misses a skill" in line
    assert str(root / "evaluation.jsonl") in line
    (root / "job.yaml").write_text(yaml.safe_dump(job(mix_uniform=0.5)))
    assert tamis_main(["select", str(root / "job.yaml")]) == 0
    manifest = json.loads((root / "out" / "manifest.json").read_text())
    assert manifest["counts"]["difficult_without_missing_skills"] == 1
    # Sample mode with nothing to draw from was a traceback (stat_sample's ValueError).
    sample = job(mode="sample", mix_uniform=0.5)
    sample["selection"].update(budget=10, output=str(root / "sample"))
    (root / "job.yaml").write_text(yaml.safe_dump(sample))
    assert "no difficult question misses" in cli_error(capsys, *["select", str(root / "job.yaml")])


def test_evaluation_rows_in_parquet_are_named_by_row(stat_job, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, job = stat_job
    table = pa.table(
        {
            "id": ["q1", "q2"],
            "rewards": [[0.1, 0.2], [float("nan")]],
            "missing_skills": [["algebra"], []],
        }
    )
    pq.write_table(table, root / "evaluation.parquet")
    (root / "job.yaml").write_text(yaml.safe_dump(job(evaluation=str(root / "evaluation.parquet"))))
    line = cli_error(capsys, *["select", str(root / "job.yaml")])
    assert f"{root / 'evaluation.parquet'}: row 1 (id 'q2'): 'rewards' must be finite" in line


@pytest.mark.parametrize(
    "record, needle",
    [
        ({"id": "p9", "text": "t", "skills": [1, 2]}, "(id 'p9'): 'skills' must be a list of"),
        ({"id": "p9", "text": "t", "skills": "algebra"}, "(id 'p9'): 'skills' must be a list of"),
        ({"id": "p9", "text": "t", "skills": [None]}, "(id 'p9'): 'skills' has a null skill"),
        ({"id": "p9", "text": "t", "skills": [""]}, "(id 'p9'): 'skills' has a blank skill"),
        ({"id": "p9", "text": "t", "skills": [["x"]]}, "(id 'p9'): 'skills' must be a list of"),
        ({"id": None, "text": "t", "skills": ["algebra"]}, ": no 'id' (null)"),
    ],
)
def test_bad_pool_skill_lists_are_named_by_file_line_id(stat_job, capsys, record, needle):
    root, job = stat_job
    # A first example without skills (null: none), a blank line, then the bad one.
    write_jsonl(root / "pool.jsonl", [{"id": "p0", "text": "t"}, "", record])
    (root / "job.yaml").write_text(yaml.safe_dump(job()))
    line = cli_error(capsys, *["select", str(root / "job.yaml")])
    assert f"{root / 'pool.jsonl'}:3" in line and needle in line


def test_pools_without_any_skill_and_blank_aliases(stat_job, capsys):
    root, job = stat_job
    # Every skill list empty: an all-null list column (a traceback before).
    write_jsonl(root / "pool.jsonl", [{**r, "skills": []} for r in POOL])
    (root / "job.yaml").write_text(yaml.safe_dump(job(mix_uniform=0.5)))
    assert tamis_main(["select", str(root / "job.yaml")]) == 0
    capsys.readouterr()
    (root / "job.yaml").write_text(yaml.safe_dump(job(skill_aliases={"algebra": " "})))
    line = cli_error(capsys, *["select", str(root / "job.yaml")])
    assert "selection.params.skill_aliases.algebra: must be a skill name" in line
