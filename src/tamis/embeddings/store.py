"""Reading an embeddings directory (the embed pipeline's output) shard by shard."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from tamis.embeddings.parquet_pages import read_row_group, vector_segments
from tamis.records import InputError, parquet_source, read_json

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
    path = FileSystems.join(directory, MANIFEST)
    try:
        manifest = read_json(path)
    except (ValueError, OSError) as err:
        raise InputError(f"{path}: unreadable manifest ({err})") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{path}: unreadable manifest (not a JSON object)")
    return manifest


@contextmanager
def _reading_part(path: str) -> Iterator[None]:
    """A part that cannot be read (cut short, not Parquet, columns missing) is an InputError
    naming it; `tamis embed` run again embeds a damaged part's shard anew."""
    try:
        yield
    except (pa.ArrowException, OSError, KeyError) as err:
        raise InputError(
            f"{path}: damaged embeddings part ({type(err).__name__}: {err}); run `tamis embed` "
            "again to embed its shard anew"
        ) from None


def read_part(path: str) -> EmbeddingBlock:
    with _reading_part(path):
        table = _read_parquet(path, ["id", "n_tokens"])
        blocks = list(iter_part_vectors(path))
        if len(blocks) == 1:
            vectors = blocks[0]
        elif blocks:
            vectors = np.concatenate(blocks)
        else:  # a part with no rows
            dim = _read_parquet(path, ["embedding"]).schema.field("embedding").type.list_size
            vectors = np.zeros((0, dim), dtype=np.float32)
    return EmbeddingBlock(
        table.column("id").to_pylist(),
        vectors,
        table.column("n_tokens").to_numpy().astype(np.int32),
    )


def iter_vector_blocks(directory: str) -> Iterator[np.ndarray]:
    """(rows, dim) float32 blocks of the pool, in order, one per Parquet row group.

    Reads only the vectors, and hands each row group over without first joining a part's
    row groups into one array (no extra copy, small peak memory).
    """
    for path in embedding_parts(directory):
        yield from iter_part_vectors(path)


def iter_part_vectors(path: str) -> Iterator[np.ndarray]:
    """A part's (rows, dim) float32 vectors, one array per row group.

    Local parts in the embed pipeline's layout are read straight from their data pages
    (``parquet_pages``); any other part is decoded by pyarrow. Both give the same values.
    """
    with _reading_part(path):
        yield from _part_vectors(path)


def _part_vectors(path: str) -> Iterator[np.ndarray]:
    if "://" not in path:
        with open(path, "rb", buffering=0) as f:
            metadata = pq.read_metadata(f)
            dim = metadata.schema.to_arrow_schema().field("embedding").type.list_size
            groups = vector_segments(f, metadata, "embedding", dim)
            if groups is not None:
                for group in groups:
                    yield read_row_group(f, group, dim)
                return
    column = _read_parquet(path, ["embedding"]).column("embedding")
    dim = column.type.list_size
    for chunk in column.chunks:
        values = chunk.flatten().to_numpy(zero_copy_only=False)
        yield np.asarray(values, dtype=np.float32).reshape(-1, dim)
    del column
    # Arrow's allocator keeps freed decode buffers for reuse; hand them back so a pass
    # over the pool stays at about one part of memory.
    pa.default_memory_pool().release_unused()


def _read_parquet(path: str, columns: list[str] | None = None):
    """A part as an Arrow table: local files memory-mapped by path (native, multi-threaded
    decoding), others through Beam's FileSystems."""
    if "://" not in path:
        return pq.read_table(path, columns=columns, memory_map=True)
    return pq.read_table(parquet_source(path), columns=columns)


def read_ids(directory: str) -> pa.Array:
    """The pool ids of an embeddings directory, in order, without reading the vectors."""
    chunks = []
    for path in embedding_parts(directory):
        with _reading_part(path):
            chunks.append(_read_parquet(path, ["id"]).column("id"))
    if not chunks:
        return pa.array([], pa.string())
    return pa.chunked_array([c for chunked in chunks for c in chunked.chunks]).combine_chunks()


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


def part_offsets(directory: str) -> list[tuple[str, int]]:
    """(part path, pool position of its first row), from the Parquet footers alone."""
    offsets, start = [], 0
    for path in embedding_parts(directory):
        with _reading_part(path):
            rows = pq.ParquetFile(parquet_source(path)).metadata.num_rows
        offsets.append((path, start))
        start += rows
    return offsets
