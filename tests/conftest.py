"""Shared fixtures: the default encoder (loaded once per session), tiny pools, BBC texts."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from tamis.config import EmbeddingConfig, config_from_dict

# Tests run offline and on 2 cores; fix threads so runs are comparable.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def default_encoder():
    from tamis.embeddings.encoder import Encoder

    return Encoder(EmbeddingConfig(max_length=512))


@pytest.fixture(scope="session")
def make_encoder(default_encoder):
    """The session's default model with other embedding settings (no reload)."""

    def make(**overrides):
        encoder = copy.copy(default_encoder)
        encoder.cfg = dataclasses.replace(default_encoder.cfg, **overrides)
        return encoder

    return make


@pytest.fixture(scope="session")
def bbc_records():
    from tamis.data.bbcnews import bbcnews_records

    return bbcnews_records()


def write_jsonl(path: Path, records: list) -> Path:
    """Write records (dicts, or raw str/bytes lines written as they are) one per line."""
    with path.open("wb") as f:
        for record in records:
            if isinstance(record, bytes):
                f.write(record + b"\n")
            elif isinstance(record, str):
                f.write(record.encode() + b"\n")
            else:
                f.write(json.dumps(record).encode() + b"\n")
    return path


def embed_config(pool_path, output, **embedding):
    """A minimal valid config for embedding `pool_path` into `output`."""
    embedding = {"output": str(output), "max_length": 128, **embedding}
    return config_from_dict({"pool": {"path": str(pool_path)}, "embedding": embedding})


def write_embeddings_dir(path: Path, vectors, shard: int, ids: list[str] | None = None) -> str:
    """A finished embeddings dir of the embed pipeline's layout, from given vectors."""
    from tamis.pipelines.embed import write_vectors_dir

    ids = [f"item-{i}" for i in range(len(vectors))] if ids is None else ids
    return write_vectors_dir(str(path), ids, vectors, shard)


def cli_error(capsys, *args) -> str:
    """Run the CLI; expect exit 2, exactly one `tamis: error:` line, last on stderr, and no
    Python traceback; return that line."""
    from tamis.cli import main

    capsys.readouterr()
    try:
        status = main([str(a) for a in args])
    except SystemExit as stop:  # argparse's own errors
        status = stop.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("tamis: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]
