"""Reading embeddings dirs that were damaged after `tamis embed` wrote them: an InputError
naming the part or manifest (the CLI's one `tamis: error:` line), never a traceback."""

import numpy as np
import pytest

from conftest import write_embeddings_dir
from tamis.embeddings.store import (
    embeddings_manifest,
    iter_vector_blocks,
    part_offsets,
    read_embeddings,
    read_ids,
)
from tamis.records import InputError


@pytest.fixture
def emb_dir(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32)
    write_embeddings_dir(tmp_path / "emb", vectors, shard=10)
    return tmp_path / "emb", vectors


def test_intact_dir_reads_back(emb_dir):
    directory, vectors = emb_dir
    ids, read = read_embeddings(str(directory))
    assert len(ids) == 30
    np.testing.assert_array_equal(read, vectors)


@pytest.mark.parametrize("damage", ["cut", "empty", "junk"])
def test_a_damaged_part_is_an_input_error_naming_it(emb_dir, damage):
    directory, _ = emb_dir
    part = directory / "part-00001.parquet"
    data = part.read_bytes()
    part.write_bytes(
        {"cut": data[: len(data) // 2], "empty": b"", "junk": b"x" * len(data)}[damage]
    )
    readers = [
        read_embeddings,
        read_ids,
        part_offsets,
        lambda d: list(iter_vector_blocks(d)),
    ]
    for reader in readers:
        with pytest.raises(InputError, match=rf"^{part}: damaged embeddings part .*tamis embed"):
            reader(str(directory))


def test_an_unreadable_manifest_is_an_input_error_naming_it(emb_dir):
    directory, _ = emb_dir
    (directory / "manifest.json").write_text('{"model": ')
    with pytest.raises(InputError, match=rf"^{directory / 'manifest.json'}: unreadable manifest"):
        embeddings_manifest(str(directory))
