"""Reading an embeddings directory (the embed pipeline's output) shard by shard."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from tamis.records import InputError, read_json

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class EmbeddingBlock:
    ids: list[str]
    vectors: np.ndarray  # (n, dim) float32
    n_tokens: np.ndarray  # (n,) int32


def embedding_parts(directory: str) -> list[str]:
    """The part files of a finished embeddings directory, in order."""
    if not FileSystems.exists(FileSystems.join(directory, MANIFEST)):
        raise InputError(
            f"{directory}: not a finished embeddings directory (no {MANIFEST}); "
            "run `tamis embed` first"
        )
    pattern = FileSystems.join(directory, "part-*.parquet")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def embeddings_manifest(directory: str) -> dict:
    embedding_parts(directory)  # checks it is finished
    return read_json(FileSystems.join(directory, MANIFEST))


def read_part(path: str) -> EmbeddingBlock:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        table = pq.read_table(f)
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    flat = column.values.to_numpy(zero_copy_only=False)
    vectors = np.asarray(flat, dtype=np.float32).reshape(-1, dim)
    return EmbeddingBlock(
        table.column("id").to_pylist(),
        vectors,
        table.column("n_tokens").to_numpy().astype(np.int32),
    )


def read_ids(directory: str) -> list[str]:
    """The pool ids of an embeddings directory, in order, without reading the vectors."""
    ids: list[str] = []
    for path in embedding_parts(directory):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            ids.extend(pq.read_table(f, columns=["id"]).column("id").to_pylist())
    return ids


def iter_embedding_blocks(directory: str) -> Iterator[EmbeddingBlock]:
    """One block per part file, in pool order; memory is one shard at a time."""
    for path in embedding_parts(directory):
        yield read_part(path)


def read_embeddings(directory: str) -> tuple[list[str], np.ndarray]:
    """All ids and an (N, dim) float32 matrix (for query sets and small pools)."""
    ids: list[str] = []
    blocks = []
    for block in iter_embedding_blocks(directory):
        ids.extend(block.ids)
        blocks.append(block.vectors)
    if not blocks:
        dim = embeddings_manifest(directory).get("model", {}).get("dim", 0)
        return ids, np.zeros((0, dim), dtype=np.float32)
    return ids, np.concatenate(blocks)
