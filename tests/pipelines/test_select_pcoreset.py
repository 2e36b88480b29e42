"""`tamis select` with pcoreset: probabilities from the pool records or a file, one AL round."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import write_jsonl
from tamis.cli import main as tamis_main
from tamis.config import ConfigError, config_from_dict
from tamis.inputs.probabilities import softmax
from tamis.pipelines.select import run_select
from tamis.records import InputError
from tamis.selectors.kcenter import k_center_greedy

CLASSES = ["business", "sport", "tech", "politics"]


@pytest.fixture()
def pool(tmp_path):
    """40 records with 4-class probabilities; the first of each class is labelled."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 4))
    logits[np.arange(40), np.arange(40) % 4] += 3
    probs = softmax(logits)
    records = [
        {
            "id": f"doc{i}",
            "text": f"article {i}",
            "topic": CLASSES[i % 4],
            "probs": probs[i].tolist(),
            "labeled": i < 4,
        }
        for i in range(40)
    ]
    write_jsonl(tmp_path / "pool.jsonl", records)
    return tmp_path, records, probs.astype(np.float32)


def job(root, **selection):
    return {
        "pool": {"path": str(root / "pool.jsonl")},
        "selection": {
            "selector": "pcoreset",
            "budget": "per_class",
            "params": {"labeled_field": "labeled"},
            "join_records": True,
            "output": str(root / "subset"),
            **selection,
        },
    }


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_round_from_the_pool_records_equals_the_core(pool, capsys):
    root, records, probs = pool
    (root / "job.yaml").write_text(yaml.safe_dump(job(root)))
    assert tamis_main(["select", str(root / "job.yaml")]) == 0
    out = capsys.readouterr().out
    assert "selected 4 of 36 candidates with pcoreset" in out
    assert "coverage radius (euclidean)" in out and "4 labelled before" in out
    subset = read_jsonl(root / "subset" / "subset.jsonl")
    expected = k_center_greedy(probs, 4, [0, 1, 2, 3])  # budget per_class = 4 classes
    assert [r["id"] for r in subset] == [f"doc{i}" for i in expected.index]
    radius = [r["coverage_radius"] for r in subset]
    assert radius == expected.radius.tolist() and radius == sorted(radius, reverse=True)
    assert [r["score"] for r in subset] == radius
    assert all(r["topic"] == records[int(r["id"][3:])]["topic"] for r in subset)  # joined
    manifest = json.loads((root / "subset" / "manifest.json").read_text())
    assert manifest["counts"]["labeled"] == 4 and manifest["counts"]["budget"] == 4
    assert manifest["inputs"]["probabilities"]["classes"] == 4
    assert manifest["inputs"]["labeled"] == {
        "path": str(root / "pool.jsonl"),
        "field": "labeled",
        "count": 4,
    }


def test_probabilities_file_and_labelled_id_file(pool):
    root, records, probs = pool
    logits = np.log(probs.astype(np.float64))
    pq.write_table(
        pa.table({"id": [r["id"] for r in records], "logits": logits.tolist()}),
        root / "preds.parquet",
    )
    (root / "labeled.txt").write_text("doc7\ndoc3\n")
    params = {"probabilities": str(root / "preds.parquet"), "labeled": str(root / "labeled.txt")}
    manifest = run_select(config_from_dict(job(root, budget=6, params=params)))
    assert manifest["counts"]["labeled"] == 2
    subset = read_jsonl(root / "subset" / "subset.jsonl")
    expected = k_center_greedy(softmax(logits).astype(np.float32), 6, [3, 7])
    assert [r["id"] for r in subset] == [f"doc{i}" for i in expected.index]


def test_no_labelled_set_starts_at_the_first_record_or_a_seeded_random_one(pool):
    root, records, _ = pool
    # Without labeled_field a boolean `labeled` column is used (see below): drop it here.
    write_jsonl(root / "pool.jsonl", [{k: v for k, v in r.items() if k != "labeled"}
                                      for r in records])  # fmt: skip
    manifest = run_select(config_from_dict(job(root, budget=3, params={})))
    subset = read_jsonl(root / "subset" / "subset.jsonl")
    assert subset[0]["id"] == "doc0" and subset[0]["coverage_radius"] is None  # JSON null
    assert manifest["info"]["coverage_radius_first"] is None
    assert pq.read_table(root / "subset" / "subset.parquet")["score"][0].as_py() == np.inf
    run_select(config_from_dict(job(root, budget=3, seed=5, params={"first": "random"})),
               overwrite=True)  # fmt: skip
    first = read_jsonl(root / "subset" / "subset.jsonl")[0]["id"]
    run_select(config_from_dict(job(root, budget=3, seed=5, params={"first": "random"})))
    assert read_jsonl(root / "subset" / "subset.jsonl")[0]["id"] == first


def test_bad_pcoreset_inputs_fail_before_selecting(pool):
    root, records, probs = pool
    (root / "labeled.txt").write_text("doc1\nnot-a-doc\n")
    params = {"labeled": str(root / "labeled.txt")}
    with pytest.raises(InputError, match="labeled: 1 ids are not in the pool: 'not-a-doc'"):
        run_select(config_from_dict(job(root, params=params)))
    with pytest.raises(ConfigError, match="selection.budget: 37 is larger than the pool"):
        run_select(config_from_dict(job(root, budget=37)))
    records[9]["probs"] = [0.5, 0.5, 0.5, 0.5]
    write_jsonl(root / "pool.jsonl", records)
    with pytest.raises(InputError, match=r"row 9 \(id 'doc9'\): 'probs' sums to 2"):
        run_select(config_from_dict(job(root)))
    assert not (root / "subset").exists()


def test_a_labeled_column_is_used_by_default_and_must_hold_booleans(pool, caplog):
    import logging

    root, records, probs = pool
    with caplog.at_level(logging.INFO, logger="tamis"):
        auto = run_select(config_from_dict(job(root, budget=4, params={})))
    assert auto["counts"]["labeled"] == 4
    assert "labelled set: the 'labeled' column (4 true)" in caplog.text
    explicit = run_select(config_from_dict(job(root, budget=4)), overwrite=True)  # labeled_field
    assert auto["counts"] == explicit["counts"]
    rows = [{**r, "labeled": ["yes", "false", "no", "true"][i % 4] if i < 8 else None}
            for i, r in enumerate(records)]  # fmt: skip
    write_jsonl(root / "pool.jsonl", rows)
    for params in ({}, {"labeled_field": "labeled"}):
        with pytest.raises(
            InputError, match=r"record 'doc0'\) ?|'labeled' must be true or false, got 'yes'"
        ):
            run_select(config_from_dict(job(root, budget=4, params=params)), overwrite=True)
    with pytest.raises(InputError, match=r"no record has a 'done' field"):
        config = config_from_dict(job(root, budget=4, params={"labeled_field": "done"}))
        run_select(config, overwrite=True)
    pq.write_table(
        pa.table({"id": [r["id"] for r in records], "probs": probs.tolist(),
                  "is_labeled": [str(i < 4) for i in range(40)]}),
        root / "preds.parquet",
    )  # fmt: skip
    params = {"probabilities": str(root / "preds.parquet"), "labeled_field": "is_labeled"}
    with pytest.raises(InputError, match=r"preds.parquet: row 0 \(id 'doc0'\): 'is_labeled' must"):
        run_select(config_from_dict(job(root, budget=4, params=params)), overwrite=True)
