"""The embed pipeline on broken inputs and outputs: every problem is one `tamis: error:` line
naming the file (exit 2, no traceback), or a dead letter with its reason; nothing is lost
without a word, and a re-run repairs what it can."""

import gzip
import json
import os
import shutil

import numpy as np
import polars as pl
import pytest

from conftest import cli_error, embed_config, write_jsonl
from tamis.cli import main as tamis_main
from tamis.config import ConfigError
from tamis.pipelines.embed import (
    OutputConflictError,
    pipeline_error,
    plan_embed,
    prepare_output,
    run_embed,
)
from tamis.records import InputError, count_records, resolve_inputs


def write_job(tmp_path, pool, output, name="job.yaml", **embedding) -> str:
    job = tmp_path / name
    pool_section = pool if isinstance(pool, dict) else {"path": str(pool)}
    embedding = {"output": str(output), "max_length": 32, **embedding}
    job.write_text(json.dumps({"pool": pool_section, "embedding": embedding}))
    return str(job)


def read_vectors(output):
    frame = pl.read_parquet(sorted(output.glob("part-*.parquet")))
    return frame["id"].to_list(), frame["embedding"].to_numpy()


@pytest.fixture(scope="module")
def small_pool(tmp_path_factory, bbc_records):
    path = tmp_path_factory.mktemp("small") / "pool.jsonl"
    return write_jsonl(path, [{"id": r["id"], "text": r["text"][:150]} for r in bbc_records[:25]])


@pytest.fixture(scope="module")
def finished(tmp_path_factory, small_pool):
    """A finished embeddings dir of the small pool: 3 shards of 10, 10 and 5."""
    output = tmp_path_factory.mktemp("finished") / "emb"
    run_embed(embed_config(small_pool, output, shard_size=10, max_length=32), progress=False)
    return output


# ---------------------------------------------------------------------------------------------
# 1. A cut .jsonl.gz pool


def test_a_cut_gzip_pool_is_reported_not_read_as_complete(tmp_path, capsys, caplog, bbc_records):
    rows = [{"id": f"r{i}", "text": bbc_records[i % 50]["text"][:120]} for i in range(2000)]
    whole = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[:6039])
    output = tmp_path / "emb"
    job = write_job(tmp_path, cut, output, shard_size=500)
    with caplog.at_level("WARNING", logger="tamis"):
        assert tamis_main(["embed", job, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "truncated_file 1" in out
    assert any(f"{cut}: damaged or cut compressed file" in r.getMessage() for r in caplog.records)
    manifest = json.loads((output / "manifest.json").read_text())
    counts = manifest["counts"]
    (source,) = resolve_inputs(str(cut))
    assert counts["records"] == count_records(source) == counts["embedded"] + 1
    (dead,) = [json.loads(line) for line in (output / "rejected.jsonl").read_text().splitlines()]
    assert dead["reason"] == "truncated_file" and dead["source"] == str(cut)
    assert dead["line"] == counts["embedded"] + 1
    assert f"after line {counts['embedded']}" in dead["detail"]

    strict = write_job(tmp_path, {"path": str(cut), "strict": True}, tmp_path / "s", "s.yaml")
    line = cli_error(capsys, "embed", strict, "--no-progress")
    assert f"{cut}: damaged or cut compressed file: it ends early" in line
    assert "[while running" not in line
    assert not (tmp_path / "s" / "manifest.json").exists()


# ---------------------------------------------------------------------------------------------
# 2. Non-finite vectors from the encoder


def test_a_non_finite_vector_is_a_dead_letter_and_stays_one_on_resume(tmp_path, monkeypatch):
    """The pooling output of one record is made NaN (the model gives none on real text):
    what is tested is the dead-letter path, not the model."""
    from tamis.embeddings.encoder import Encoder

    original = Encoder.forward_pooled

    def poisoned(self, batch):
        out = original(self, batch)
        (poison,) = self.tokenizer("poison", add_special_tokens=False)["input_ids"]
        for row, ids in enumerate(batch):
            if poison in ids:
                out[row, 3] = np.nan
        return out

    monkeypatch.setattr(Encoder, "forward_pooled", poisoned)
    texts = ["an ordinary pear", "a poison apple", "a red car", "green hills", "blue sea"]
    pool = write_jsonl(
        tmp_path / "pool.jsonl", [{"id": f"t{i}", "text": t} for i, t in enumerate(texts)]
    )
    config = embed_config(pool, tmp_path / "emb", shard_size=3)
    manifest = run_embed(config, progress=False)
    counts = manifest["counts"]
    assert (counts["records"], counts["embedded"], counts["rejected"]) == (5, 4, 1)
    assert counts["rejected_by_reason"] == {"non_finite_embedding": 1}
    rejected = (tmp_path / "emb" / "rejected.jsonl").read_text()
    (dead,) = [json.loads(line) for line in rejected.splitlines()]
    assert (dead["source"], dead["line"], dead["id"]) == (str(pool), 2, "t1")
    assert dead["reason"] == "non_finite_embedding" and "1 NaN/inf values of 384" in dead["detail"]
    ids, vectors = read_vectors(tmp_path / "emb")
    assert ids == ["t0", "t2", "t3", "t4"] and np.isfinite(vectors).all()

    again = run_embed(config, progress=False)  # every shard skipped: the dead letter remains
    assert again["counts"]["shards_skipped"] == 2
    assert again["counts"]["rejected_by_reason"] == {"non_finite_embedding": 1}
    assert (tmp_path / "emb" / "rejected.jsonl").read_text() == rejected


# ---------------------------------------------------------------------------------------------
# 3. Errors that were tracebacks


def test_cli_corrupt_parquet_pool_is_an_error_naming_it(tmp_path, capsys):
    junk = tmp_path / "pool.parquet"
    junk.write_bytes(b"\x00 not a parquet file \xff" * 100)
    job = write_job(tmp_path, junk, tmp_path / "emb")
    # Found by the reader inside the pipeline (no progress: nothing is counted first).
    line = cli_error(capsys, "embed", job, "--no-progress")
    assert f"tamis: error: {junk}: not a readable Parquet file" in line
    assert "[while running" not in line


def test_cli_parquet_format_on_a_jsonl_file_is_an_error_naming_it(tmp_path, capsys):
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"id": "a", "text": "x"}])
    job = write_job(tmp_path, {"path": str(pool), "format": "parquet"}, tmp_path / "emb")
    # Found when the records are counted for the progress bar, before the pipeline.
    line = cli_error(capsys, "embed", job)
    assert f"{pool}: not a readable Parquet file" in line
    assert "it looks like JSON lines: is the format (pool.format) right?" in line


def test_cli_output_that_is_or_is_under_a_file(tmp_path, capsys, small_pool):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    line = cli_error(capsys, "embed", write_job(tmp_path, small_pool, blocker))
    assert line == f"tamis: error: embedding.output: {blocker} is a file, not a directory"
    under = blocker / "emb"
    line = cli_error(capsys, "embed", write_job(tmp_path, small_pool, under))
    assert f"embedding.output: cannot create the directory {under}: {blocker} is a file" in line


def test_cli_layer_out_of_range_names_the_key_and_the_range(tmp_path, capsys, small_pool):
    job = write_job(tmp_path, small_pool, tmp_path / "emb", layer=99)
    line = cli_error(capsys, "embed", job, "--no-progress")
    assert line.startswith("tamis: error: embedding.layer: 99 is out of range")
    assert "6 layers" in line and "0..6" in line and "-7..-2" in line


def test_cli_unreadable_job_record_is_a_conflict_naming_it(finished, tmp_path, capsys, small_pool):
    output = tmp_path / "emb"
    shutil.copytree(finished, output)
    (output / "_tamis_job.json").write_text('{"fingerprint": ')
    job = write_job(tmp_path, small_pool, output, shard_size=10)
    line = cli_error(capsys, "embed", job, "--no-progress")
    assert f"{output / '_tamis_job.json'}: unreadable" in line and "--overwrite" in line


def test_cli_damaged_parts_are_embedded_again_on_a_rerun(
    finished, tmp_path, capsys, caplog, small_pool
):
    """A part cut short and a part holding another shard's rows are found, named and
    embedded again; the other part is skipped (after a mere touch of the pool)."""
    output = tmp_path / "emb"
    shutil.copytree(finished, output)
    (output / "manifest.json").unlink()
    cut = output / "part-00001.parquet"
    cut.write_bytes(cut.read_bytes()[:1000])
    shutil.copy(output / "part-00000.parquet", output / "part-00002.parquet")
    os.utime(small_pool)  # a new mtime, the same content: still the same job
    job = write_job(tmp_path, small_pool, output, shard_size=10)
    with caplog.at_level("WARNING", logger="tamis"):
        assert tamis_main(["embed", job, "--no-progress"]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(cut) in w and "embedding its shard again" in w for w in warnings)
    assert any(
        "part-00002.parquet: holds lines 1..10 (10 rows), not its shard's 21..25" in w
        for w in warnings
    )
    assert "(1 already done)" in capsys.readouterr().out
    counts = json.loads((output / "manifest.json").read_text())["counts"]
    assert (counts["shards_skipped"], counts["shards_replaced"], counts["embedded"]) == (1, 2, 25)
    ids, vectors = read_vectors(output)
    reference_ids, reference = read_vectors(finished)
    assert ids == reference_ids
    np.testing.assert_array_equal(vectors, reference)


# ---------------------------------------------------------------------------------------------
# 4. Inputs are fingerprinted by content


def test_a_same_size_edit_with_its_mtime_put_back_is_a_different_job(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"id": "a", "text": "first version"}])
    config = embed_config(pool, tmp_path / "emb")
    prepare_output(plan_embed(config), overwrite=False)
    stat = os.stat(pool)
    write_jsonl(pool, [{"id": "a", "text": "other version"}])  # same size
    os.utime(pool, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(pool).st_size == stat.st_size
    with pytest.raises(OutputConflictError, match="different job"):
        prepare_output(plan_embed(config), overwrite=False)


def test_pipeline_errors_are_unwrapped_to_tamis_errors():
    annotated = InputError("/data/p.parquet: not a readable Parquet file [while running 'X/Y']")
    assert str(pipeline_error(annotated)) == "/data/p.parquet: not a readable Parquet file"
    wrapped = RuntimeError(
        "Traceback ...\ntamis.config.ConfigError: embedding.layer: 99 is out of range "
        "[while running 'EncodeAndWrite']\n"
    )
    ours = pipeline_error(wrapped)
    assert isinstance(ours, ConfigError)
    assert str(ours) == "embedding.layer: 99 is out of range"
    assert pipeline_error(RuntimeError("something else")) is None
    strict = RuntimeError(
        "tamis.records.BadRecordError: p.jsonl:3: empty_text: x [while running 'R']"
    )
    assert str(pipeline_error(strict)) == "bad record (strict mode): p.jsonl:3: empty_text: x"


def test_a_pool_with_nothing_to_embed_is_said_so(tmp_path, caplog):
    """Blank lines only (a UTF-8 byte-order mark, CRLF): a warning for library callers (an
    empty query set is its caller's to judge), an InputError naming the file for
    `tamis embed` (require_records)."""
    pool = tmp_path / "blank.jsonl"
    pool.write_bytes(b"\xef\xbb\xbf\n  \r\n\n")
    with caplog.at_level("WARNING", logger="tamis"):
        manifest = run_embed(embed_config(pool, tmp_path / "emb"), progress=False)
    counts = manifest["counts"]
    assert (counts["records"], counts["embedded"], counts["blank_lines"]) == (0, 0, 3)
    assert any(
        f"{pool}: no record of the pool could be embedded (0 records, 3 blank lines)"
        in r.getMessage()
        for r in caplog.records
    )
    assert not list((tmp_path / "emb").glob("part-*.parquet"))
    junk = write_jsonl(tmp_path / "junk.jsonl", [b"\x00\xff\xfe junk", "{no json"])
    config = embed_config(junk, tmp_path / "emb2")
    with pytest.raises(InputError, match=rf"^{junk}: no record of the pool could be embedded"):
        run_embed(config, progress=False, require_records=True)
    with pytest.raises(InputError, match=r"all rejected: malformed_json 1, undecodable_bytes 1"):
        run_embed(config, progress=False, require_records=True)
