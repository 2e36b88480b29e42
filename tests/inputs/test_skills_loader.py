"""Skill-table and evaluation loaders: where a bad row is (file and line, across files), and
the column shapes they accept."""

import gzip
import re

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_jsonl
from tamis.inputs.skills import read_evaluation, read_frame, row_location, skill_table
from tamis.records import InputError


def test_row_location_counts_lines_as_an_editor_does_across_files(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"x": 1}, "", "   ", {"x": 2}])
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b'\n{"x": 3}\n{"x": 4}\n'))
    pq.write_table(pa.table({"x": [5, 6]}), tmp_path / "c.parquet")
    pattern = str(tmp_path / "*")
    assert read_frame(pattern).get_column("x").to_list() == [1, 2, 3, 4, 5, 6]
    where = [row_location(pattern, row) for row in range(6)]
    assert where == [
        f"{tmp_path / 'a.jsonl'}:1",
        f"{tmp_path / 'a.jsonl'}:4",
        f"{tmp_path / 'b.jsonl.gz'}:2",
        f"{tmp_path / 'b.jsonl.gz'}:3",
        f"{tmp_path / 'c.parquet'}: row 0",  # Parquet rows are 0-based, as in records
        f"{tmp_path / 'c.parquet'}: row 1",
    ]


def test_skill_columns_of_every_shape_a_file_gives():
    # All-empty lists (List(Null)), all-null columns and fixed-size lists are skill lists.
    for skills in (
        pl.Series([[], []]),
        pl.Series([None, None]),
        pl.Series([["a"], ["b"]], dtype=pl.Array(pl.String, 1)),
    ):
        table = skill_table(pl.DataFrame({"id": ["x", "y"], "skills": skills}), "pool")
        assert table.ids == ["x", "y"] and len(table.offsets) == 3
    table = skill_table(
        pl.DataFrame({"id": [1, 2], "skills": [[" a", "b "], None]}), "pool", aliases={"b": "a"}
    )
    assert table.names == ["a"] and table.ids == ["1", "2"]
    np.testing.assert_array_equal(table.offsets, [0, 2, 2])


def test_evaluation_reads_mixed_flags_and_rewards(tmp_path):
    rows = [
        {"id": "q1", "correct": False, "missing_skills": ["a", " a"]},  # a once per question
        {"id": "q2", "rewards": [0.9, 0.6, 0.95], "missing_skills": ["b"]},  # difficult
        {"id": "q3", "rewards": [0.9, 0.9], "missing_skills": ["a"]},  # easy
        {"id": "q4", "correct": True, "missing_skills": None},  # null: none
        {"id": "q5", "rewards": [1], "correct": False, "missing_skills": []},  # ints; flag
    ]
    write_jsonl(tmp_path / "ev.jsonl", rows)
    ev = read_evaluation(str(tmp_path / "ev.jsonl"), ["a", "b"], 0.85, 0.7)
    assert (ev.questions, ev.difficult, ev.difficult_without_skills) == (5, 3, 1)
    assert sorted(ev.missing_codes.tolist()) == [0, 1]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"id": "q", "rewards": []}], "ev.jsonl:1 (id 'q'): 'rewards' is empty"),
        ([{"id": "q", "rewards": [0.1], "missing_skills": [3]}], "'missing_skills' must be"),
        ([{"rewards": [0.1], "missing_skills": ["a", None]}], "ev.jsonl:1: 'missing_skills' has"),
    ],
)
def test_evaluation_problems_name_the_line(tmp_path, rows, message):
    write_jsonl(
        tmp_path / "ev.jsonl", [{**r, "missing_skills": r.get("missing_skills")} for r in rows]
    )
    with pytest.raises(InputError, match=re.escape(message)):
        read_evaluation(str(tmp_path / "ev.jsonl"), ["a"], 0.85, 0.7)
