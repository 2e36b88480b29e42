"""Ctrl-C during a multi-process embed: one line, exit 130, no worker left, and a re-run
resumes from the finished shards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import write_jsonl


def processes_with(marker: str) -> list[int]:
    """Live processes whose environment holds `marker` (the run and its workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if marker.encode() in environ and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to find the workers")
def test_ctrl_c_stops_a_two_worker_embed_in_one_line_and_a_rerun_resumes(tmp_path, bbc_records):
    pool = [{"id": r["id"], "text": r["text"][:400]} for r in bbc_records[:800]]
    write_jsonl(tmp_path / "pool.jsonl", pool)
    job = {
        "pool": {"path": str(tmp_path / "pool.jsonl")},
        "embedding": {"output": str(tmp_path / "emb"), "max_length": 64, "shard_size": 40},
        "runner": {"num_workers": 2},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    marker = f"TAMIS_TEST_RUN={uuid.uuid4().hex}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1]}
    command = [sys.executable, "-m", "tamis", "embed", str(tmp_path / "job.yaml"), "--no-progress"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not list((tmp_path / "emb").glob("part-*.parquet")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no shard was finished"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == "tamis: interrupted; finished shards are kept, re-run to resume", err
    assert "Traceback" not in err and "terminate called" not in err, err
    time.sleep(1)
    assert processes_with(marker) == []  # no worker outlives the run
    finished = len(list((tmp_path / "emb").glob("part-*.parquet")))
    assert 0 < finished < 20

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"({finished} already done)" in rerun.stdout
    assert "embedded 800 of 800 records" in rerun.stdout
