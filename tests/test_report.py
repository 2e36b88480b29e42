"""`tamis report`: the subset summary, its text, the score histogram and the CLI verb."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tamis.cli import main as tamis_main
from tamis.records import InputError
from tamis.report import (
    format_funnel,
    format_summary,
    plot_funnel,
    plot_score_histogram,
    report,
    summarize_recipe,
    summarize_subset,
)


def write_subset(
    directory: Path,
    columns: dict[str, list],
    manifest: dict | None = None,
) -> Path:
    """A subset directory as `run_select` writes it (parquet + manifest), built by hand."""
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), directory / "subset.parquet")
    n = len(columns["id"])
    manifest = manifest or {
        "stage": "select",
        "selector": columns["selector"][0] if n else "rds",
        "params": {"aggregation": "max"},
        "counts": {"pool": 10 * n, "excluded_duplicates": 3, "candidates": 10 * n - 3},
    }
    manifest.setdefault("counts", {}).update(selected=n, budget=n)
    (directory / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return directory


@pytest.fixture
def scores() -> np.ndarray:
    return np.random.default_rng(0).uniform(0.2, 0.9, size=60)


@pytest.fixture
def subset_dir(tmp_path: Path, scores: np.ndarray) -> Path:
    """60 picks of two tasks (40 tech, 20 sports) from two files, with derived ids."""
    n = scores.size
    tasks = ["tech" if i % 3 else "sports" for i in range(n)]
    files = ["data/a.jsonl" if i < 45 else "gs://bucket/b.jsonl" for i in range(n)]
    return write_subset(
        tmp_path / "subset",
        {
            "id": [f"{f}:{i + 1}" for i, f in enumerate(files)],
            "rank": list(range(n)),
            "score": scores.tolist(),
            "weight": [0.5] * n,
            "selector": ["rds"] * n,
            "task": tasks,
            "text": [f"text {i}" for i in range(n)],
        },
        {
            "stage": "select",
            "selector": "rds",
            "params": {"aggregation": "max", "multi_task": "round_robin"},
            "config": {"selection": {"label_field": "topic"}},
            "counts": {
                "pool": 500,
                "excluded_duplicates": 4,
                "candidates": 496,
                "per_task": {"tech": 40, "sports": 20},
            },
            "label_agreement": {
                "tech": {"picked": 40, "on_label": 30},
                "sports": {"picked": 20, "on_label": 20},
            },
        },
    )


def test_summary_numbers(subset_dir: Path, scores: np.ndarray) -> None:
    summary = summarize_subset(subset_dir)
    assert summary["selector"] == "rds"
    assert summary["counts"]["rows"] == 60
    assert summary["counts"]["candidates"] == 496
    s = summary["scores"]
    assert s["min"] == pytest.approx(scores.min())
    assert s["max"] == pytest.approx(scores.max())
    assert s["median"] == pytest.approx(np.median(scores))
    assert s["mean"] == pytest.approx(scores.mean())
    assert s["p10"] == pytest.approx(np.percentile(scores, 10))
    assert s["p90"] == pytest.approx(np.percentile(scores, 90))
    assert summary["non_finite_scores"] == 0
    assert summary["weight_sum"] == pytest.approx(30.0)

    per_task = summary["per_task"]
    assert list(per_task) == ["tech", "sports"]  # most common first
    assert per_task["tech"] == {"count": 40, "share": pytest.approx(40 / 60)}
    assert per_task["sports"]["count"] == 20
    assert sum(v["share"] for v in per_task.values()) == pytest.approx(1.0)

    # ids "<file>:<line>" -> the file, also for a URL with its own ':'
    assert summary["source_from"] == "id prefix"
    per_source = summary["per_source"]
    assert per_source["data/a.jsonl"] == {"count": 45, "share": pytest.approx(0.75)}
    assert per_source["gs://bucket/b.jsonl"] == {"count": 15, "share": pytest.approx(0.25)}
    assert sum(v["share"] for v in per_source.values()) == pytest.approx(1.0)

    agreement = summary["label_agreement"]
    assert agreement["tech"] == {"picked": 40, "on_label": 30, "rate": pytest.approx(0.75)}
    assert agreement["sports"]["rate"] == pytest.approx(1.0)
    json.dumps(summary)  # JSON-able


def test_source_column_wins_and_plain_ids_have_no_source(tmp_path: Path) -> None:
    with_source = write_subset(
        tmp_path / "a",
        {
            "id": ["x:1", "x:2", "y:1", "z"],
            "score": [0.1, 0.2, 0.3, 0.4],
            "selector": ["random"] * 4,
            "source": ["wiki", "wiki", "web", None],
        },
    )
    summary = summarize_subset(with_source)
    assert summary["source_from"] == "source column"
    assert summary["per_source"]["wiki"]["share"] == pytest.approx(0.5)
    assert summary["per_source"]["(none)"]["count"] == 1
    assert summary["per_task"] is None
    assert summary["weight_sum"] is None
    assert summary["label_agreement"] is None

    # explicit ids (no ":<line>" on every one) give no per-source breakdown
    plain = write_subset(
        tmp_path / "b",
        {"id": ["bbc-1", "bbc-2", "f.jsonl:3"], "score": [1.0, 2.0, 3.0], "selector": ["r"] * 3},
    )
    summary = summarize_subset(plain)
    assert summary["per_source"] is None
    assert summary["source_from"] is None
    assert "per source" not in format_summary(summary)


def test_format_summary_mentions_selector_counts_and_shares(subset_dir: Path) -> None:
    text = format_summary(summarize_subset(subset_dir))
    assert "rds" in text
    assert "60 rows" in text
    assert "496 candidates" in text
    assert "4 exact duplicates removed" in text
    assert "66.7%" in text and "33.3%" in text  # task shares
    assert "30/40 on topic (75%)" in text
    assert "data/a.jsonl" in text and "75.0%" in text
    assert "median" in text
    assert len(text.splitlines()) < 20  # short


def test_non_finite_and_constant_scores(tmp_path: Path) -> None:
    directory = write_subset(
        tmp_path / "s",
        {
            "id": ["a", "b", "c", "d"],
            "score": [0.0, 0.0, float("nan"), None],
            "selector": ["random"] * 4,
        },
    )
    summary = summarize_subset(directory)
    assert summary["non_finite_scores"] == 2
    assert summary["scores"]["median"] == 0.0
    assert "NaN" in format_summary(summary)
    _, png = report(directory)
    assert Image.open(png).size[0] > 100


def test_empty_subset(tmp_path: Path) -> None:
    directory = write_subset(
        tmp_path / "s",
        {
            "id": pa.array([], pa.string()),
            "score": pa.array([], pa.float64()),
            "task": pa.array([], pa.string()),
        },
        {"stage": "select", "selector": "rds", "counts": {}},
    )
    text, png = report(directory)
    assert "scores: none finite" in text
    assert Path(png).is_file()


def assert_png(path: str | Path) -> None:
    data = Path(path).read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert 400 <= width <= 3000 and 200 <= height <= 2000


def test_plot_score_histogram(tmp_path: Path, scores: np.ndarray) -> None:
    single = plot_score_histogram(scores, tmp_path / "one.png")
    assert_png(single)
    by_task = {"tech": scores[:40], "sports": scores[40:]}
    stacked = plot_score_histogram(scores, tmp_path / "nested" / "two.png", by_task)
    assert stacked == str(tmp_path / "nested" / "two.png")
    assert_png(stacked)


def test_report_writes_default_and_chosen_png(subset_dir: Path, tmp_path: Path) -> None:
    text, png = report(subset_dir)
    assert png == str(subset_dir / "scores.png")
    assert_png(png)
    assert text == format_summary(summarize_subset(subset_dir))
    _, chosen = report(subset_dir, tmp_path / "elsewhere.png")
    assert chosen == str(tmp_path / "elsewhere.png")
    assert_png(chosen)


def test_not_a_subset_dir(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a directory"):
        summarize_subset(tmp_path / "missing")
    with pytest.raises(InputError, match=r"not a subset directory.*subset\.parquet"):
        summarize_subset(tmp_path)
    (tmp_path / "subset.parquet").write_bytes(b"")
    with pytest.raises(InputError, match=re.escape(str(tmp_path)) + r".*manifest\.json"):
        report(tmp_path)
    (tmp_path / "manifest.json").write_text("{}", encoding="utf-8")
    with pytest.raises(InputError, match=r"subset\.parquet: cannot read"):
        report(tmp_path)
    assert isinstance(InputError("x"), ValueError)


def test_cli_report(subset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert tamis_main(["report", str(subset_dir)]) == 0
    out = capsys.readouterr().out
    assert "selector: rds" in out
    assert "60 rows" in out
    assert str(subset_dir / "scores.png") in out
    assert_png(subset_dir / "scores.png")

    png = tmp_path / "cli.png"
    assert tamis_main(["report", str(subset_dir), "--png", str(png)]) == 0
    assert str(png) in capsys.readouterr().out
    assert_png(png)


def test_cli_report_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert tamis_main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a subset directory" in err and str(tmp_path) in err
    with pytest.raises(SystemExit):
        tamis_main(["report", str(tmp_path), "--runner=DirectRunner"])


# --- recipes: a chain of stages over one pool -------------------------------------------------

FUNNEL = [
    {"name": "dedup", "selector": "exact_dedup", "kind": "filter", "dir": "01-dedup",
     "in": 2213, "kept": 2120, "removed": 93, "seconds": 0.41, "skipped": False},
    {"name": "target", "selector": "rds", "kind": "select", "dir": "02-target",
     "in": 2120, "kept": 300, "removed": 1820, "seconds": 1.2, "skipped": True},
    {"name": "balance", "selector": "stat", "kind": "weight", "dir": "03-balance",
     "in": 300, "kept": 290, "removed": 10, "seconds": 0.3, "skipped": False},
]  # fmt: skip


def subset_columns(n: int, selector: str, text: bool = False) -> dict[str, list]:
    rng = np.random.default_rng(n)
    columns = {
        "id": [f"pool.jsonl:{i + 1}" for i in range(n)],
        "rank": list(range(n)),
        "score": rng.uniform(0, 1, size=n).tolist(),
        "weight": [1.0] * n,
        "selector": [selector] * n,
        "task": ["tech" if i % 2 else "sports" for i in range(n)],
    }
    if text:
        columns["text"] = [f"record {i}" for i in range(n)]
    return columns


def write_recipe(directory: Path, funnel: list | None = None, **manifest_changes) -> Path:
    """A recipe directory as the recipe runner writes it: one subset dir per stage, the
    final subset (records joined) and the recipe manifest, built by hand."""
    funnel = FUNNEL if funnel is None else funnel
    for step in funnel:
        if isinstance(step, dict) and "dir" in step:
            write_subset(directory / step["dir"], subset_columns(step["kept"], step["selector"]))
    write_subset(directory, subset_columns(290, "stat", text=True))  # replaced just below
    manifest = {
        "stage": "recipe",
        "created": "2026-12-02T23:00:00+00:00",
        "pool": 2213,
        "funnel": funnel,
        "final": {"rows": 290, "subset": "subset.parquet"},
        "config": {"stages": [{"name": "dedup"}, {"name": "target"}, {"name": "balance"}]},
        "seconds": {"wall": 3.4},
        "versions": {"tamis": "0.0.0"},
    }
    manifest.update(manifest_changes)
    (directory / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return directory


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    return write_recipe(tmp_path / "out" / "recipe")


def test_recipe_summary(recipe_dir: Path) -> None:
    summary = summarize_recipe(recipe_dir)
    assert summary["pool"] == 2213
    assert [s["name"] for s in summary["funnel"]] == ["dedup", "target", "balance"]
    assert [s["kept"] for s in summary["funnel"]] == [2120, 300, 290]
    assert [s["skipped"] for s in summary["funnel"]] == [False, True, False]
    assert summary["final_rows"] == 290
    assert summary["warnings"] == []
    final = summary["final"]
    assert final["counts"]["rows"] == 290
    assert final["selector"] == "stat"
    assert final["per_task"]["tech"]["count"] == 145
    json.dumps(summary)  # JSON-able


def test_recipe_report_text_is_funnel_then_final_summary(recipe_dir: Path) -> None:
    text, png = report(recipe_dir)
    lines = text.splitlines()
    assert lines[0] == f"recipe {recipe_dir}: 2,213 pool items -> 290 in the final subset"
    # pool first, then each stage with its kept count, in order, one line each
    expected = [
        ("pool", "2,213"),
        ("01 dedup (exact_dedup, filter)", "2,120"),
        ("02 target (rds, select)", "300"),
        ("03 balance (stat, weight)", "290"),
    ]
    positions = []
    for label, kept in expected:
        (i,) = [i for i, line in enumerate(lines) if line.startswith(f"  {label} ")]
        assert re.search(rf"\s{kept}\s", lines[i] + " "), lines[i]
        positions.append(i)
    assert positions == sorted(positions) and positions[-1] - positions[0] == 3
    assert "-93" in lines[positions[1]] and "0.4 s" in lines[positions[1]]
    assert "-1,820" in lines[positions[2]] and "skipped: unchanged" in lines[positions[2]]
    assert "skipped" not in lines[positions[3]]
    # the kept column lines up
    ends = {lines[i].index(f" {k}") + len(k) for i, (_, k) in zip(positions, expected, strict=True)}
    assert len(ends) == 1
    assert "warning" not in text
    # then the usual summary of the final subset
    final = text[text.index("\nsubset ") + 1 :]
    assert final == format_summary(summarize_recipe(recipe_dir)["final"])
    assert "selector: stat" in final and "selected: 290 rows" in final
    assert text.startswith(format_funnel(summarize_recipe(recipe_dir)))

    assert png == str(recipe_dir / "funnel.png")
    assert_png(png)
    assert not (recipe_dir / "scores.png").exists()


def test_recipe_report_chosen_png(recipe_dir: Path, tmp_path: Path) -> None:
    _, png = report(recipe_dir, tmp_path / "plots" / "f.png")
    assert png == str(tmp_path / "plots" / "f.png")
    assert_png(png)
    # a stage directory on its own is still an ordinary subset directory
    text, stage_png = report(recipe_dir / "02-target")
    assert text.startswith(f"subset {recipe_dir / '02-target'}")
    assert "300 rows" in text
    assert stage_png == str(recipe_dir / "02-target" / "scores.png")


def test_plot_funnel_other_kinds_and_one_step(tmp_path: Path) -> None:
    steps = summarize_recipe(write_recipe(tmp_path / "r"))["funnel"]
    odd = [dict(steps[0], kind="custom"), dict(steps[1], kind="other", removed=0)]
    assert_png(plot_funnel(2213, odd, tmp_path / "odd.png"))
    assert_png(
        plot_funnel(5, [dict(steps[0], **{"in": 5, "kept": 0, "removed": 5})], tmp_path / "z.png")
    )


def test_recipe_counts_that_do_not_add_up_are_warned(tmp_path: Path) -> None:
    funnel = [dict(FUNNEL[0]), dict(FUNNEL[1], **{"in": 2000}), dict(FUNNEL[2], kept=280)]
    directory = write_recipe(tmp_path / "r", funnel, final={"rows": 291})
    text, _ = report(directory)
    warnings = [line for line in text.splitlines() if "warning" in line]
    assert len(warnings) == 5
    assert "funnel[1] (target): in 2,000 but the step before kept 2,120" in text
    assert "funnel[1] (target): in 2,000 - kept 300 != removed 1,820" in text
    assert "funnel[2] (balance): in 300 - kept 280 != removed 10" in text
    assert "the last stage kept 280 but the final subset has 290 rows" in text
    assert "final rows 291" in text


def _without(step: dict, key: str) -> dict:
    return {k: v for k, v in step.items() if k != key}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"funnel": None}, r"'funnel' should be a non-empty list"),
        ({"funnel": []}, r"'funnel' should be a non-empty list"),
        ({"funnel": {"dedup": 2120}}, r"'funnel' should be a non-empty list"),
        ({"funnel": [FUNNEL[0], "target"]}, r"funnel\[1\]: expected an object"),
        ({"funnel": [FUNNEL[0], _without(FUNNEL[1], "kept")]},
         r"funnel\[1\] \(target\): missing key 'kept'"),
        ({"funnel": [_without(FUNNEL[0], "name")]}, r"funnel\[0\]: missing key 'name'"),
        ({"funnel": [dict(FUNNEL[0], kept="2120")]},
         r"funnel\[0\] \(dedup\): 'kept' should be a count"),
        ({"funnel": [dict(FUNNEL[0], removed=-1)]}, r"'removed' should be a count"),
        ({"funnel": [dict(FUNNEL[0], kept=True)]}, r"'kept' should be a count"),
        ({"funnel": [dict(FUNNEL[0], selector=3)]}, r"'selector' should be a non-empty string"),
        ({"funnel": [dict(FUNNEL[0], seconds="fast")]}, r"'seconds' should be a number"),
        ({"funnel": [dict(FUNNEL[0], skipped="no")]}, r"'skipped' should be true or false"),
        ({"pool": None}, r"'pool' should be the pool's item count"),
        ({"final": "subset.parquet"}, r"'final' should be an object"),
    ],
)  # fmt: skip
def test_garbled_recipe_manifest(tmp_path: Path, changes: dict, match: str) -> None:
    directory = write_recipe(tmp_path / "r")
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    manifest.update(changes)
    manifest = {k: v for k, v in manifest.items() if v is not None}
    (directory / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(
        InputError, match=re.escape(str(directory / "manifest.json")) + ".*" + match
    ):
        report(directory)


def test_recipe_without_final_subset(recipe_dir: Path, capsys: pytest.CaptureFixture) -> None:
    (recipe_dir / "subset.parquet").unlink()
    final = re.escape(str(recipe_dir / "subset.parquet"))
    with pytest.raises(
        InputError, match=final + r": the recipe's final subset is missing.*final\.subset"
    ):
        report(recipe_dir)
    assert tamis_main(["report", str(recipe_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tamis: error: ") and str(recipe_dir / "subset.parquet") in err
    assert not (recipe_dir / "funnel.png").exists()


def test_cli_report_recipe(recipe_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert tamis_main(["report", str(recipe_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"recipe {recipe_dir}: 2,213 pool items -> 290")
    assert out.index("01 dedup") < out.index("02 target") < out.index("03 balance")
    assert str(recipe_dir / "funnel.png") in out
    assert_png(recipe_dir / "funnel.png")
