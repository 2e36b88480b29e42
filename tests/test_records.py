"""Readers, validation, templates and ids: every record ends as a PoolRecord or a dead letter."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_jsonl
from tamis.config import PoolConfig
from tamis.records import (
    BadRecordError,
    BlankLine,
    InputError,
    PoolRecord,
    Rejected,
    atomic_write,
    count_records,
    read_input,
    render_messages,
    resolve_inputs,
)

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": " What is 2+2? "},
    {"role": "assistant", "content": "4"},
]


def _read(path, **pool):
    (source,) = resolve_inputs(str(path))
    return list(read_input(source, PoolConfig(path=str(path), **pool)))


def test_templates_render_exact_strings():
    assert render_messages(MESSAGES, "plain") == (
        "system: Be brief.\nuser:  What is 2+2? \nassistant: 4"
    )
    assert render_messages(MESSAGES, "tulu") == (
        "<|system|>\nBe brief.\n<|user|>\nWhat is 2+2?\n<|assistant|>\n4</s>\n"
    )
    chat = render_messages(MESSAGES, "chat", lambda m: "|".join(x["role"] for x in m))
    assert chat == "system|user|assistant"
    with pytest.raises(ValueError, match="chat template"):
        render_messages(MESSAGES, "chat")


def test_every_bad_kind_is_a_dead_letter_with_line_and_reason(tmp_path):
    path = write_jsonl(
        tmp_path / "pool.jsonl",
        [
            {"id": "ok", "text": "fine"},
            "{not json",
            b'{"id": "bytes", "text": "caf\xe9"}',
            "[1, 2]",
            {"id": "empty", "text": "   "},
            {"id": "num", "text": 3},
            {"id": "none"},
            {"id": "msgs", "messages": [{"role": "user"}]},
            {"id": ["x"], "text": "bad id"},
            "",
            {"text": "no id"},
            {"id": 7, "messages": MESSAGES},
        ],
    )
    results = _read(path, template="tulu")
    kinds = [
        (r.line, r.reason) if isinstance(r, Rejected) else (r.line, type(r).__name__)
        for r in results
    ]
    assert kinds == [
        (1, "PoolRecord"),
        (2, "malformed_json"),
        (3, "undecodable_bytes"),
        (4, "not_an_object"),
        (5, "empty_text"),
        (6, "text_not_string"),
        (7, "missing_text"),
        (8, "bad_messages"),
        (9, "bad_id"),
        (10, "BlankLine"),
        (11, "PoolRecord"),
        (12, "PoolRecord"),
    ]
    by_line = {r.line: r for r in results}
    assert by_line[11].id == f"{path}:11"  # derived id: <file>:<line>
    assert by_line[12].id == "7"
    assert by_line[12].text.startswith("<|system|>\nBe brief.")
    assert by_line[6].id == "num" and by_line[6].source == str(path)
    assert "messages[0].content" in by_line[8].detail
    assert by_line[2].raw == "{not json\n"


def test_strict_mode_raises_naming_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"text": "fine"}, {"text": ""}])
    with pytest.raises(BadRecordError, match=rf"^{path}:2: empty_text"):
        _read(path, strict=True)


def test_gzip_parquet_and_hf_dataset_readers_agree(tmp_path):
    rows = [{"id": f"r{i}", "text": f"text number {i}", "extra": i} for i in range(5)]
    rows[2]["text"] = ""
    with gzip.open(tmp_path / "pool.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pool.parquet")
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))

    def summary(results):
        return [(r.id, r.text) if isinstance(r, PoolRecord) else r.reason for r in results]

    gz = _read(tmp_path / "pool.jsonl.gz")
    parquet = _read(tmp_path / "pool.parquet")
    hf = _read(tmp_path / "hf")
    assert summary(gz) == summary(parquet) == summary(hf)
    assert summary(gz)[2] == "empty_text"
    assert [r.line for r in gz] == [1, 2, 3, 4, 5]  # JSONL lines are 1-based
    assert [r.line for r in parquet] == [0, 1, 2, 3, 4]  # table rows are 0-based


def test_derived_ids_for_tables_use_row_index(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"text": "a"}, {"text": "b"}]), tmp_path / "p.parquet")
    ids = [r.id for r in _read(tmp_path / "p.parquet")]
    assert ids == [f"{tmp_path / 'p.parquet'}:0", f"{tmp_path / 'p.parquet'}:1"]


def test_resolve_inputs_globs_directories_and_errors(tmp_path):
    for name in ["b.jsonl", "a.jsonl", "c.parquet"]:
        (tmp_path / name).write_text("")
    (tmp_path / "_SUCCESS").write_text("")
    names = [i.path.rsplit("/", 1)[-1] for i in resolve_inputs(str(tmp_path / "*.jsonl"))]
    assert names == ["a.jsonl", "b.jsonl"]
    formats = {i.path.rsplit("/", 1)[-1]: i.format for i in resolve_inputs(str(tmp_path))}
    assert formats == {"a.jsonl": "jsonl", "b.jsonl": "jsonl", "c.parquet": "parquet"}
    with pytest.raises(InputError, match="matches no file"):
        resolve_inputs(str(tmp_path / "*.csv"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="cannot tell the format"):
        resolve_inputs(str(tmp_path / "notes.txt"))


def test_count_records_skips_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "a"}, "", "{bad", "  "])
    (source,) = resolve_inputs(str(path))
    assert count_records(source) == 2
    results = _read(path)
    assert sum(isinstance(r, BlankLine) for r in results) == 2


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write(str(target), b"first")
    atomic_write(str(target), b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_selector_input_tables_refuse_cut_gzip_and_corrupt_parquet(tmp_path):
    from tamis.records import InputError, read_table_files

    rows = [{"id": f"r{i}", "x": i} for i in range(2000)]
    whole = gzip.compress("\n".join(json.dumps(r) for r in rows).encode() + b"\n")
    (tmp_path / "whole.jsonl.gz").write_bytes(whole)
    assert read_table_files(str(tmp_path / "whole.jsonl.gz")).num_rows == 2000
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=r"cut.jsonl.gz: damaged or cut compressed file"):
        read_table_files(str(tmp_path / "cut.jsonl.gz"))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=r"bad.parquet: not a readable Parquet file"):
        read_table_files(str(tmp_path / "bad.parquet"))
