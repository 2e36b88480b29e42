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


# ---------------------------------------------------------------------------------------------
# Damaged and unusual input files: an error naming the file, or a dead letter saying what
# was lost; never a quietly short pool.


def _gzip_pool(tmp_path, lines=2000):
    rows = [{"id": f"r{i}", "text": f"record number {i} " * 5} for i in range(lines)]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    whole = tmp_path / "big.jsonl.gz"
    whole.write_bytes(gzip.compress(data))
    return whole


def test_a_cut_gzip_pool_ends_with_a_dead_letter_and_count_records_agrees(tmp_path):
    whole = _gzip_pool(tmp_path)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole.read_bytes()[:6039])  # `head -c 6039 big.jsonl.gz`
    results = _read(cut)
    *records, last = results
    assert all(isinstance(r, PoolRecord) for r in records)
    n = len(records)
    assert 0 < n < 2000
    # The partial line where the data stops is not a record: it is part of what was lost.
    assert [r.line for r in records] == list(range(1, n + 1))
    assert isinstance(last, Rejected) and last.reason == "truncated_file"
    assert last.source == str(cut) and last.line == n + 1
    assert f"after line {n}" in last.detail and "the rest of the file is lost" in last.detail
    (source,) = resolve_inputs(str(cut))
    assert count_records(source) == len(results) == n + 1
    with pytest.raises(InputError, match=rf"^{cut}: damaged or cut compressed file: it ends early"):
        _read(cut, strict=True)
    # The whole file is read in full, as before.
    (whole_source,) = resolve_inputs(str(whole))
    assert count_records(whole_source) == len(_read(whole)) == 2000


def test_corrupt_gzip_data_is_a_dead_letter_and_plain_text_named_gz_an_error(tmp_path):
    whole = _gzip_pool(tmp_path, lines=300).read_bytes()
    damaged = tmp_path / "damaged.jsonl.gz"
    damaged.write_bytes(whole[:400] + bytes(64) + whole[464:])
    results = _read(damaged)
    assert isinstance(results[-1], Rejected) and results[-1].reason == "damaged_file"
    assert results[-1].line == len(results)
    (source,) = resolve_inputs(str(damaged))
    assert count_records(source) == len(results)
    plain = tmp_path / "plain.jsonl.gz"
    plain.write_text('{"text": "not compressed"}\n')
    with pytest.raises(InputError, match=rf"^{plain}: not a gzip file"):
        _read(plain)
    # And for selector tables (read_table_files), which share the reading code.
    from tamis.records import read_table_files

    with pytest.raises(InputError, match=rf"{damaged}: damaged or cut compressed file"):
        read_table_files(str(damaged))


def test_bom_crlf_utf16_and_wrong_format_jsonl(tmp_path):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"id": "a", "text": "x"}\r\n\r\n{"id": "b", "text": "y"}\r\n')
    results = _read(bom)
    assert [(type(r).__name__, r.line) for r in results] == [
        ("PoolRecord", 1),
        ("BlankLine", 2),
        ("PoolRecord", 3),
    ]
    assert [r.text for r in results if isinstance(r, PoolRecord)] == ["x", "y"]
    (source,) = resolve_inputs(str(bom))
    assert count_records(source) == 2
    utf16 = tmp_path / "utf16.jsonl"
    utf16.write_bytes('{"id": "a", "text": "x"}\n'.encode("utf-16"))
    with pytest.raises(InputError, match=rf"^{utf16}: UTF-16 or UTF-32 text"):
        _read(utf16)
    parquet = tmp_path / "table.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": ["x"]}), parquet)
    (source,) = resolve_inputs(str(parquet), "jsonl")
    with pytest.raises(InputError, match=rf"^{parquet}: a Parquet file, not JSON lines"):
        list(read_input(source, PoolConfig(path=str(parquet), format="jsonl")))


def test_unreadable_parquet_and_datasets_inputs_are_errors_naming_them(tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"\x00\x01 not parquet " * 50)
    with pytest.raises(InputError, match=rf"^{junk}: not a readable Parquet file"):
        _read(junk)
    (source,) = resolve_inputs(str(junk))
    with pytest.raises(InputError, match=rf"^{junk}: not a readable Parquet file"):
        count_records(source)
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(100)], "text": ["x"] * 100}), good)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(InputError, match=rf"^{cut}: not a readable Parquet file"):
        _read(cut)
    jsonl = write_jsonl(tmp_path / "records.jsonl", [{"id": "a", "text": "x"}])
    (source,) = resolve_inputs(str(jsonl), "parquet")
    with pytest.raises(InputError, match=r"it looks like JSON lines: is the format"):
        list(read_input(source, PoolConfig(path=str(jsonl), format="parquet")))

    import datasets

    rows = {"id": [f"h{i}" for i in range(20)], "text": ["some text"] * 20}
    for name in ("state", "arrow"):
        datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / name))
    (tmp_path / "state" / "state.json").write_text("{not json")
    for arrow in (tmp_path / "arrow").glob("*.arrow"):
        arrow.write_bytes(arrow.read_bytes()[:200])
    for name in ("state", "arrow"):
        with pytest.raises(InputError, match=rf"^{tmp_path / name}: not a readable `datasets`"):
            _read(tmp_path / name)


def test_resolve_inputs_names_broken_links_subdirectories_and_empty_directories(tmp_path):
    (tmp_path / "loop.jsonl").symlink_to("loop.jsonl")
    (tmp_path / "dangling.jsonl").symlink_to("nothing.jsonl")
    for name in ("loop.jsonl", "dangling.jsonl"):
        with pytest.raises(InputError, match=rf"{tmp_path / name}: a symbolic link to nothing"):
            resolve_inputs(str(tmp_path / name))
    pool = tmp_path / "pool"
    (pool / "more").mkdir(parents=True)
    write_jsonl(pool / "a.jsonl", [{"text": "a"}])
    write_jsonl(pool / "more" / "b.jsonl", [{"text": "b"}])
    with pytest.raises(InputError, match=r"pool: holds subdirectories \(more/\) whose files"):
        resolve_inputs(str(pool))
    # A glob says which files are meant.
    assert len(resolve_inputs([str(pool / "*.jsonl"), str(pool / "*" / "*.jsonl")])) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: the directory holds no input file"):
        resolve_inputs(str(tmp_path / "empty"))


def test_a_file_that_cannot_be_opened_is_an_error_naming_it(tmp_path, monkeypatch):
    """Permission denied (tests run as root here, so the open is made to fail)."""
    from tamis import records

    path = write_jsonl(tmp_path / "pool.jsonl", [{"text": "a"}])
    opened = records.FileSystems.open

    def refuse(name, *args, **kwargs):
        if name == str(path):
            raise PermissionError(13, "Permission denied", name)
        return opened(name, *args, **kwargs)

    monkeypatch.setattr(records.FileSystems, "open", refuse)
    (source,) = resolve_inputs(str(path))
    with pytest.raises(InputError, match=rf"^{path}: cannot read \(Permission denied\)"):
        _read(path)
    with pytest.raises(InputError, match=rf"^{path}: cannot read"):
        count_records(source)
    with pytest.raises(InputError, match=rf"^{path}: cannot read"):
        records.content_digest(source)


def test_content_digest_sees_a_same_size_edit_and_ignores_a_touch(tmp_path):
    import os

    from tamis.records import content_digest

    path = write_jsonl(tmp_path / "pool.jsonl", [{"id": "a", "text": "first version"}])
    (source,) = resolve_inputs(str(path))
    before = content_digest(source)
    os.utime(path, (1, 1))
    (touched,) = resolve_inputs(str(path))
    assert touched.mtime != source.mtime and content_digest(touched) == before
    write_jsonl(path, [{"id": "a", "text": "other version"}])
    os.utime(path, (1, 1))
    (edited,) = resolve_inputs(str(path))
    assert (edited.size, edited.mtime) == (touched.size, touched.mtime)
    assert content_digest(edited) != before

    import datasets

    datasets.Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(str(tmp_path / "hf"))
    (hf,) = resolve_inputs(str(tmp_path / "hf"))
    assert content_digest(hf) == content_digest(hf)
    assert content_digest(hf).startswith("sha256:")
