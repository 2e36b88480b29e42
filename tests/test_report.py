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
    format_summary,
    plot_score_histogram,
    report,
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
