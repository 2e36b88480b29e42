"""Probability tables for PCoreSet: every format gives the same vectors, bad rows are named."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_jsonl
from tamis.inputs.probabilities import (
    positions_of,
    probabilities_from_rows,
    read_id_list,
    read_probability_table,
    softmax,
)
from tamis.records import InputError


def rows(n=6, classes=3, seed=0) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes))
    return [f"r{i}" for i in range(n)], logits, softmax(logits)


def test_parquet_and_jsonl_give_the_same_probabilities(tmp_path):
    ids, logits, probs = rows()
    table = pa.table({"id": ids, "probs": probs.tolist(), "logits": logits.tolist()})
    pq.write_table(table, tmp_path / "p.parquet")
    write_jsonl(tmp_path / "p.jsonl", table.to_pylist())
    from_parquet = read_probability_table(str(tmp_path / "p.parquet"))
    from_jsonl = read_probability_table(str(tmp_path / "p.jsonl"))
    assert from_parquet.ids == from_jsonl.ids == ids
    assert from_parquet.fields == ("probs",)  # auto: probs before logits
    np.testing.assert_array_equal(from_parquet.probs, from_jsonl.probs)
    np.testing.assert_allclose(from_parquet.probs, probs, rtol=1e-6)
    assert from_parquet.probs.dtype == np.float32 and from_parquet.n_classes == 3


def test_logits_with_temperature_and_two_heads_blended(tmp_path):
    ids, logits, _ = rows()
    other = logits[:, ::-1].copy()
    pq.write_table(
        pa.table({"id": ids, "logits_ce": logits.tolist(), "logits_kd": other.tolist()}),
        tmp_path / "heads.parquet",
    )
    blended = read_probability_table(str(tmp_path / "heads.parquet"))  # auto finds the heads
    assert blended.fields == ("logits_ce", "logits_kd")
    np.testing.assert_allclose(blended.probs, 0.5 * softmax(logits) + 0.5 * softmax(other), 1e-6)
    hot = read_probability_table(str(tmp_path / "heads.parquet"), field="logits_ce", temperature=2)
    np.testing.assert_allclose(hot.probs, softmax(logits / 2), rtol=1e-6)
    weighted = read_probability_table(
        str(tmp_path / "heads.parquet"), field=["logits_ce", "logits_kd"], blend_weight=0.25
    )
    np.testing.assert_allclose(
        weighted.probs, 0.75 * softmax(logits) + 0.25 * softmax(other), rtol=1e-6
    )


def test_rows_not_summing_to_one_are_named(tmp_path):
    ids, _, probs = rows()
    probs[4] *= 1.01
    pq.write_table(pa.table({"id": ids, "probs": probs.tolist()}), tmp_path / "p.parquet")
    with pytest.raises(InputError, match=r"p.parquet: row 4 \(id 'r4'\): 'probs' sums to 1.01"):
        read_probability_table(str(tmp_path / "p.parquet"))
    probs[4] /= 1.01
    probs[4] += 5e-5  # within the 1e-4 tolerance (3 classes x 5e-5 = 1.5e-4 is not)
    probs[4, 0] -= 1e-4
    pq.write_table(pa.table({"id": ids, "probs": probs.tolist()}), tmp_path / "ok.parquet")
    assert read_probability_table(str(tmp_path / "ok.parquet")).ids == ids


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"probs": [0.5, float("nan"), 0.5]}, "NaN or infinite"),
        ({"probs": [1.5, -0.5, 0.0]}, "negative probability"),
        ({"probs": [0.5, 0.5]}, "has 2 values, the first row has 3"),
        ({"probs": "0.2,0.8"}, "is not a list"),
    ],
)
def test_bad_jsonl_rows_name_the_file_and_row(tmp_path, bad, message):
    ids, _, probs = rows()
    records = [{"id": i, "probs": p} for i, p in zip(ids, probs.tolist(), strict=True)]
    records[3].update(bad)
    write_jsonl(tmp_path / "p.jsonl", records)
    with pytest.raises(InputError) as err:
        read_probability_table(str(tmp_path / "p.jsonl"))
    assert "p.jsonl" in str(err.value) and message in str(err.value)
    assert "r3" in str(err.value) or ":4:" in str(err.value)


def test_missing_columns_and_duplicate_ids(tmp_path):
    ids, _, probs = rows()
    pq.write_table(pa.table({"id": ids, "scores": probs.tolist()}), tmp_path / "p.parquet")
    with pytest.raises(InputError, match="no probability column found"):
        read_probability_table(str(tmp_path / "p.parquet"))
    with pytest.raises(InputError, match="no column 'probz'"):
        read_probability_table(str(tmp_path / "p.parquet"), field="probz")
    ids[5] = ids[1]
    pq.write_table(pa.table({"id": ids, "probs": probs.tolist()}), tmp_path / "d.parquet")
    with pytest.raises(InputError, match="row 5: id 'r1' appears twice"):
        read_probability_table(str(tmp_path / "d.parquet"))


def test_probabilities_from_pool_records():
    ids, _, probs = rows()
    records = [
        (i, {"id": i, "text": "t", "probs": p}) for i, p in zip(ids, probs.tolist(), strict=True)
    ]
    table = probabilities_from_rows(records, source="pool x.jsonl")
    np.testing.assert_allclose(table.probs, probs, rtol=1e-6)
    records[2][1]["probs"] = [0.9, 0.9, 0.9]
    with pytest.raises(InputError, match=r"pool x.jsonl: row 2 \(id 'r2'\): 'probs' sums to 2.7"):
        probabilities_from_rows(records, source="pool x.jsonl")


def test_id_lists_and_unknown_ids(tmp_path):
    (tmp_path / "ids.txt").write_text("a\n\nb\n")
    (tmp_path / "ids.jsonl").write_text(json.dumps({"id": "a"}) + "\n" + json.dumps({"id": 2}))
    pq.write_table(pa.table({"id": ["b", "a"]}), tmp_path / "ids.parquet")
    assert read_id_list(str(tmp_path / "ids.txt")) == ["a", "b"]
    assert read_id_list(str(tmp_path / "ids.jsonl")) == ["a", "2"]
    assert read_id_list(str(tmp_path / "ids.parquet")) == ["b", "a"]
    assert positions_of(["x", "a", "b"], ["b", "a"], "labeled").tolist() == [2, 1]
    with pytest.raises(InputError, match=r"labeled: 2 ids are not in the pool: 'q', 'z'"):
        positions_of(["x", "a"], ["q", "a", "z"], "labeled")
