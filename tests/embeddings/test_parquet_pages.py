"""Vectors read straight from Parquet data pages equal pyarrow's decoding, and any layout the
shortcut does not cover falls back to pyarrow."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tamis.embeddings.parquet_pages import vector_segments
from tamis.embeddings.store import iter_part_vectors, read_part
from tamis.pipelines.embed import ROW_GROUP_ROWS, embeddings_schema, shard_parquet_bytes

DIM = 24


def part_table(n: int, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    if n:
        vectors[0, :3] = [np.nan, np.inf, -0.0]  # bit patterns must survive
    table = pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
            "n_tokens": np.arange(n, dtype=np.int32),
        }
    ).cast(embeddings_schema(DIM))
    return table, vectors


def segments_of(path) -> list | None:
    with open(path, "rb") as f:
        return vector_segments(f, pq.read_metadata(f), "embedding", DIM)


def bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_part_layout_is_read_from_pages_bitwise_equal_to_pyarrow(tmp_path):
    n = 2 * ROW_GROUP_ROWS + 123  # two full row groups and a short one
    table, vectors = part_table(n)
    path = tmp_path / "part-00000.parquet"
    path.write_bytes(shard_parquet_bytes(table))

    groups = segments_of(path)
    assert groups is not None, "the embed pipeline's own layout must take the page shortcut"
    assert [g.rows for g in groups] == [ROW_GROUP_ROWS, ROW_GROUP_ROWS, 123]

    blocks = list(iter_part_vectors(str(path)))
    assert [b.shape for b in blocks] == [(g.rows, DIM) for g in groups]
    got = np.concatenate(blocks)
    decoded = pq.read_table(path).column("embedding").combine_chunks().flatten().to_numpy()
    assert bitwise_equal(got, decoded.reshape(-1, DIM))
    assert bitwise_equal(got, vectors)

    block = read_part(str(path))
    assert block.ids == [f"r{i}" for i in range(n)]
    assert bitwise_equal(block.vectors, vectors)
    assert block.n_tokens.tolist() == list(range(n))


def test_several_pages_per_row_group(tmp_path):
    table, vectors = part_table(3000, seed=1)
    path = tmp_path / "part.parquet"
    pq.write_table(
        table, path, compression="none", use_dictionary=False, data_page_size=10_000,
        data_page_version="2.0", row_group_size=1000,
    )  # fmt: skip
    groups = segments_of(path)
    assert groups is not None
    assert all(len(g.segments) > 1 for g in groups)
    assert bitwise_equal(np.concatenate(list(iter_part_vectors(str(path)))), vectors)


@pytest.mark.parametrize(
    "options",
    [
        {"compression": "snappy"},
        {"compression": "none", "use_dictionary": True},
        {"compression": "none", "use_dictionary": False, "data_page_version": "1.0"},
        {"compression": "none", "use_dictionary": False, "column_encoding": {
            "embedding": "BYTE_STREAM_SPLIT"}},
    ],
    ids=["snappy", "dictionary", "v1-pages", "byte-stream-split"],
)  # fmt: skip
def test_other_layouts_fall_back_to_pyarrow(tmp_path, options):
    table, vectors = part_table(5000, seed=2)
    path = tmp_path / "part.parquet"
    pq.write_table(table, path, row_group_size=2048, **options)
    assert segments_of(path) is None
    assert bitwise_equal(np.concatenate(list(iter_part_vectors(str(path)))), vectors)


def test_null_vectors_fall_back_to_pyarrow(tmp_path):
    table, vectors = part_table(100, seed=3)
    column = pa.array(
        [None if i == 7 else row.tolist() for i, row in enumerate(vectors)],
        pa.list_(pa.float32(), DIM),
    )
    table = table.set_column(1, pa.field("embedding", column.type), column)
    path = tmp_path / "part.parquet"
    pq.write_table(table, path, compression="none", use_dictionary=False, data_page_version="2.0")
    assert segments_of(path) is None


def test_empty_part(tmp_path):
    table, _ = part_table(0)
    path = tmp_path / "part.parquet"
    path.write_bytes(shard_parquet_bytes(table))
    block = read_part(str(path))
    assert block.ids == [] and block.vectors.shape == (0, DIM)
