"""The embed pipeline on real Beam runners (FnApiRunner, 1 and 2 worker processes)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import embed_config, write_jsonl
from tamis.cli import main as tamis_main
from tamis.config import config_from_dict
from tamis.pipelines.embed import OutputConflictError, run_embed


def read_embeddings(output) -> tuple[list[str], np.ndarray, np.ndarray]:
    frame = pl.read_parquet(sorted(output.glob("part-*.parquet")))
    return (
        frame["id"].to_list(),
        frame["embedding"].to_numpy(),
        frame["n_tokens"].to_numpy(),
    )


def good_texts(pool) -> dict[str, str]:
    """id -> text of the pool's valid records (the BBC ones), in file order."""
    records = [json.loads(line) for line in pool.read_bytes().splitlines() if b'"bbc-' in line]
    return {r["id"]: r["text"] for r in records}


@pytest.fixture(scope="module")
def bbc_pool(tmp_path_factory, bbc_records):
    """120 BBC articles, cut to different lengths, with a few bad lines mixed in."""
    records = []
    for i, r in enumerate(bbc_records[::18][:120]):
        records.append({"id": r["id"], "text": r["text"][: 80 + 23 * i], "topic": r["topic"]})
    # Every kind of bad record, and a blank line (not a record).
    records.insert(10, "{broken json")
    records.insert(30, b'{"id": "latin1", "text": "caf\xe9"}')
    records.insert(50, {"id": "empty", "text": ""})
    records.insert(60, {"id": "number", "text": 42})
    records.insert(70, {"id": "no-text", "title": "only a title"})
    records.insert(80, ["a", "list"])
    records.insert(90, "")
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    return write_jsonl(path, records)


@pytest.fixture(scope="module")
def one_worker_run(tmp_path_factory, bbc_pool):
    output = tmp_path_factory.mktemp("emb1")
    manifest = run_embed(embed_config(bbc_pool, output, shard_size=40), progress=False)
    return output, manifest


def test_output_files_schema_and_counts(one_worker_run, bbc_pool):
    output, manifest = one_worker_run
    counts = manifest["counts"]
    assert counts == {
        **counts,
        "records": 126,
        "embedded": 120,
        "rejected": 6,
        "blank_lines": 1,
        "rejected_by_reason": {
            "empty_text": 1,
            "malformed_json": 1,
            "missing_text": 1,
            "not_an_object": 1,
            "text_not_string": 1,
            "undecodable_bytes": 1,
        },
        "shards": 4,
        "shards_skipped": 0,
        "duplicate_ids": 0,
    }
    schema = pq.read_schema(output / "part-00000.parquet")
    assert schema.field("id").type == pa.string()
    vector = schema.field("embedding").type
    assert pa.types.is_fixed_size_list(vector) and vector.list_size == 384
    assert vector.value_type == pa.float32() and not vector.value_field.nullable
    assert schema.field("n_tokens").type == pa.int32()
    ids, emb, n_tokens = read_embeddings(output)
    assert emb.shape == (120, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert int(n_tokens.sum()) == counts["tokens"]
    assert ids == list(good_texts(bbc_pool))  # input order
    rejected = [json.loads(line) for line in (output / "rejected.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rejected] == [
        (11, "malformed_json"),
        (31, "undecodable_bytes"),
        (51, "empty_text"),
        (61, "text_not_string"),
        (71, "missing_text"),
        (81, "not_an_object"),
    ]
    assert all(r["source"] == str(bbc_pool) for r in rejected)
    assert manifest["config"]["embedding"]["shard_size"] == 40
    assert manifest["model"]["dim"] == 384 and manifest["model"]["pooling"] == "weighted_mean"
    on_disk = json.loads((output / "manifest.json").read_text())
    assert on_disk["counts"] == counts and "wall" in on_disk["seconds"]


def test_pipeline_only_moves_data(one_worker_run, make_encoder, bbc_pool):
    """Shard embeddings equal the Encoder called directly on the same shard's texts."""
    output, _ = one_worker_run
    ids, emb, n_tokens = read_embeddings(output)
    texts = good_texts(bbc_pool)
    first_shard = pl.read_parquet(output / "part-00000.parquet")["id"].to_list()
    direct = make_encoder(max_length=128).encode([texts[i] for i in first_shard])
    np.testing.assert_allclose(emb[: len(first_shard)], direct.embeddings, atol=1e-6)
    assert n_tokens[: len(first_shard)].tolist() == direct.n_tokens.tolist()


@pytest.mark.slow
def test_two_worker_processes_give_identical_embeddings(one_worker_run, bbc_pool, tmp_path):
    output, manifest = one_worker_run
    config = embed_config(bbc_pool, tmp_path, shard_size=40)
    config.runner.num_workers = 2
    manifest2 = run_embed(config, progress=False)
    assert manifest2["counts"] == manifest["counts"]
    ids1, emb1, tok1 = read_embeddings(output)
    ids2, emb2, tok2 = read_embeddings(tmp_path)
    assert ids1 == ids2
    assert np.array_equal(emb1, emb2) and np.array_equal(tok1, tok2)
    assert (tmp_path / "rejected.jsonl").read_text() == (output / "rejected.jsonl").read_text()


def test_rerun_skips_finished_shards_and_conflicts_are_refused(one_worker_run, bbc_pool, tmp_path):
    output, _ = one_worker_run
    config = embed_config(bbc_pool, tmp_path, shard_size=40)
    run_embed(config, progress=False)
    (tmp_path / "part-00002.parquet").unlink()
    (tmp_path / "manifest.json").unlink()
    rerun = run_embed(config, progress=False)
    assert rerun["counts"]["shards_skipped"] == 3
    assert rerun["counts"]["embedded"] == 120
    assert read_embeddings(tmp_path)[0] == read_embeddings(output)[0]
    assert np.array_equal(read_embeddings(tmp_path)[1], read_embeddings(output)[1])
    changed = embed_config(bbc_pool, tmp_path, shard_size=40, max_length=64)
    with pytest.raises(OutputConflictError, match="different job"):
        run_embed(changed, progress=False)
    fresh = run_embed(changed, overwrite=True, progress=False)
    assert fresh["counts"]["shards_skipped"] == 0
    assert fresh["config"]["embedding"]["max_length"] == 64


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_uninterrupted_result(bbc_records, tmp_path):
    """Kill a real `tamis embed` process mid-run, run it again, compare with a clean run."""
    pool = write_jsonl(
        tmp_path / "pool.jsonl",
        [{"id": r["id"], "text": r["text"][:600]} for r in bbc_records[:240]],
    )
    job = tmp_path / "job.yaml"
    job.write_text(
        f"pool: {{path: {pool}}}\n"
        f"embedding: {{output: {tmp_path / 'emb'}, max_length: 128, shard_size: 20}}\n"
    )
    command = [sys.executable, "-m", "tamis", "embed", str(job), "--no-progress"]
    process = subprocess.Popen(command, start_new_session=True, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "emb").glob("part-*.parquet"))) < 2:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = len(list((tmp_path / "emb").glob("part-*.parquet")))
    assert 2 <= done_before < 12, "the kill should land mid-run"
    assert not (tmp_path / "emb" / "manifest.json").exists()

    resumed = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "already done" in resumed.stdout
    manifest = json.loads((tmp_path / "emb" / "manifest.json").read_text())
    assert manifest["counts"]["shards"] == 12
    assert manifest["counts"]["shards_skipped"] >= done_before

    clean = run_embed(embed_config(pool, tmp_path / "clean", shard_size=20), progress=False)
    assert clean["counts"]["embedded"] == manifest["counts"]["embedded"] == 240
    resumed_ids, resumed_emb, _ = read_embeddings(tmp_path / "emb")
    clean_ids, clean_emb, _ = read_embeddings(tmp_path / "clean")
    assert resumed_ids == clean_ids
    assert np.array_equal(resumed_emb, clean_emb)
    assert not list((tmp_path / "emb").glob("*.tmp-*"))


def test_cli_strict_mode_names_the_bad_record(bbc_pool, tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(f"pool: {{path: {bbc_pool}}}\nembedding: {{output: {tmp_path / 'e'}}}\n")
    status = tamis_main(["embed", str(job), "--strict", "--no-progress"])
    assert status == 2
    err = capsys.readouterr().err
    assert f"tamis: error: bad record (strict mode): {bbc_pool}:11: malformed_json" in err
    assert "[while running" not in err and "Traceback" not in err


def test_cli_config_error_names_the_key_before_any_work(bbc_pool, tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(f"pool: {{path: {bbc_pool}}}\nembedding: {{output: {tmp_path / 'e'}}}\n")
    status = tamis_main(["embed", str(job), "--set", "embedding.pooling=max"])
    assert status == 2
    assert "embedding.pooling: expected one of" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_messages_with_tulu_template_and_derived_ids(tmp_path, make_encoder):
    messages = [
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "An apple."},
    ]
    pool = write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}, {"text": "plain"}])
    config = config_from_dict(
        {
            "pool": {"path": str(pool), "template": "tulu"},
            "embedding": {"output": str(tmp_path / "e"), "max_length": 128},
        }
    )
    manifest = run_embed(config, progress=False)
    assert manifest["counts"]["embedded"] == 2
    ids, emb, _ = read_embeddings(tmp_path / "e")
    assert ids == [f"{pool}:1", f"{pool}:2"]
    text = "<|user|>\nName a fruit.\n<|assistant|>\nAn apple.</s>\n"
    direct = make_encoder(max_length=128).encode([text]).embeddings
    np.testing.assert_allclose(emb[:1], direct, atol=1e-6)


def test_beam_metrics_count_records_and_outcomes(bbc_pool, tmp_path):
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from tamis.pipelines.embed import METRICS_NAMESPACE, build_embed, plan_embed, prepare_output

    plan = plan_embed(embed_config(bbc_pool, tmp_path, shard_size=40))
    prepare_output(plan, overwrite=False)
    pipeline = beam.Pipeline(runner=FnApiRunner())
    build_embed(pipeline, plan)
    result = pipeline.run()
    result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))[
            "counters"
        ]
    }
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert counters["records"] == manifest["counts"]["records"] == 126
    assert counters["embedded"] == 120
    assert counters["tokens"] == manifest["counts"]["tokens"]
    assert counters["blank_lines"] == 1
    assert counters["rejected_undecodable_bytes"] == 1
    assert counters["shards_written"] == 4


@pytest.mark.slow
def test_model_shared_across_worker_processes_gives_the_same_embeddings(
    one_worker_run, bbc_pool, tmp_path
):
    output, _ = one_worker_run
    config = embed_config(bbc_pool, tmp_path, shard_size=40, share_model_across_processes=True)
    config.runner.num_workers = 2
    manifest = run_embed(config, progress=False)
    assert manifest["counts"]["embedded"] == 120
    ids, emb, _ = read_embeddings(tmp_path)
    ids1, emb1, _ = read_embeddings(output)
    assert ids == ids1
    np.testing.assert_allclose(emb, emb1, atol=1e-6)


def test_chat_template_needs_a_tokenizer_that_has_one(bbc_pool, tmp_path):
    from tamis.config import ConfigError

    config = config_from_dict(
        {
            "pool": {"path": str(bbc_pool), "template": "chat"},
            "embedding": {"output": str(tmp_path / "e")},
        }
    )
    with pytest.raises(ConfigError, match="pool.template: 'chat' needs a chat template"):
        run_embed(config, progress=False)


def test_a_changed_input_is_a_different_job(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"id": "a", "text": "first version"}])
    run_embed(embed_config(pool, tmp_path / "e"), progress=False)
    write_jsonl(pool, [{"id": "a", "text": "other version"}])  # same size, new content
    os.utime(pool, (time.time() + 5, time.time() + 5))
    with pytest.raises(OutputConflictError, match="different job"):
        run_embed(embed_config(pool, tmp_path / "e"), progress=False)
