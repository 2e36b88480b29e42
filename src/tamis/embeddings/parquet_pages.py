"""Where a Parquet part's float32 vector values lie in the file, so they can be read straight
into a numpy array.

Every embeddings part is written in one layout (``pipelines.embed.shard_parquet_bytes``):
no compression, PLAIN encoding, version-2 data pages, no null vectors. In that layout the
values of a ``fixed_size_list<float32>`` column are stored as plain little-endian float32
runs, one per data page, between the page's level bytes and the next page header. Reading
those runs directly skips Arrow's list decoding (repetition and definition levels for every
float), which costs about as much as the similarity GEMM of a whole RDS+ pass.

``vector_segments`` checks everything the shortcut relies on against the file's own
metadata and page headers, and returns ``None`` for any other layout; callers then read the
file with pyarrow. The values read either way are bitwise equal (tested).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pyarrow.parquet as pq

# parquet.thrift: PageType and Encoding values
_DATA_PAGE_V2 = 3
_PLAIN = 0
# PageHeader fields
_TYPE, _COMPRESSED_PAGE_SIZE, _DATA_PAGE_HEADER_V2 = 1, 3, 8
# DataPageHeaderV2 fields
_NUM_VALUES, _NUM_NULLS, _ENCODING, _DEF_LEVELS_LEN, _REP_LEVELS_LEN = 1, 2, 4, 5, 6
# Page headers are a few dozen bytes (their statistics hold one float min and max here).
_HEADER_READ_BYTES = 1024


@dataclass(frozen=True)
class RowGroupSegments:
    """One row group's vector values: ``rows`` vectors stored as float32 runs
    ``(file_offset, n_values)``, in order."""

    rows: int
    segments: tuple[tuple[int, int], ...]


def vector_segments(
    f: BinaryIO, metadata: pq.FileMetaData, column: str, dim: int
) -> list[RowGroupSegments] | None:
    """The value runs of ``column`` (a non-null ``fixed_size_list<float32>[dim]``) in every
    row group, or ``None`` when the file is not in the plain layout."""
    leaf = _leaf_index(metadata, column)
    if leaf is None:
        return None
    groups = []
    for g in range(metadata.num_row_groups):
        chunk = metadata.row_group(g).column(leaf)
        if (
            chunk.compression != "UNCOMPRESSED"
            or chunk.physical_type != "FLOAT"
            or chunk.has_dictionary_page
        ):
            return None
        rows = metadata.row_group(g).num_rows
        segments = _chunk_segments(f, chunk.data_page_offset, chunk.total_compressed_size)
        if segments is None or sum(n for _, n in segments) != rows * dim:
            return None
        groups.append(RowGroupSegments(rows, tuple(segments)))
    return groups


def read_row_group(f: BinaryIO, group: RowGroupSegments, dim: int) -> np.ndarray:
    """A row group's vectors as a fresh (rows, dim) float32 array (one copy, from the file)."""
    out = np.empty((group.rows, dim), dtype="<f4")
    flat = memoryview(out.reshape(-1)).cast("B")
    filled = 0
    for offset, n_values in group.segments:
        f.seek(offset)
        wanted = n_values * 4
        view = flat[filled : filled + wanted]
        got = 0
        while got < wanted:
            n = f.readinto(view[got:])
            if not n:
                raise OSError(f"{getattr(f, 'name', 'part')}: file ends inside a data page")
            got += n
        filled += wanted
    return out


def _leaf_index(metadata: pq.FileMetaData, column: str) -> int | None:
    leaves = [
        i
        for i in range(metadata.num_columns)
        if metadata.schema.column(i).path.split(".")[0] == column
    ]
    if len(leaves) != 1:
        return None
    leaf = metadata.schema.column(leaves[0])
    # A non-null list of non-null floats: levels say nothing a fixed size does not.
    if leaf.physical_type != "FLOAT" or leaf.max_definition_level > 2:
        return None
    return leaves[0]


def _chunk_segments(f: BinaryIO, start: int, size: int) -> list[tuple[int, int]] | None:
    segments = []
    position, end = start, start + size
    while position < end:
        f.seek(position)
        head = f.read(_HEADER_READ_BYTES)
        try:
            header, header_len = _read_struct(head, 0)
        except (IndexError, struct.error):
            return None  # a header longer than we read (large statistics): not our layout
        v2 = header.get(_DATA_PAGE_HEADER_V2)
        if header.get(_TYPE) != _DATA_PAGE_V2 or not isinstance(v2, dict):
            return None
        if v2.get(_ENCODING) != _PLAIN or v2.get(_NUM_NULLS) != 0:
            return None
        levels = v2[_DEF_LEVELS_LEN] + v2[_REP_LEVELS_LEN]
        page_bytes = header[_COMPRESSED_PAGE_SIZE]
        n_values = v2[_NUM_VALUES]
        if page_bytes - levels != n_values * 4:
            return None
        segments.append((position + header_len + levels, n_values))
        position += header_len + page_bytes
    return segments if position == end else None


# Thrift compact protocol: just enough to decode a PageHeader (structs, ints, lists, binary).
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _zigzag(buf: bytes, pos: int) -> tuple[int, int]:
    n, pos = _varint(buf, pos)
    return (n >> 1) ^ -(n & 1), pos


def _read_value(buf: bytes, pos: int, kind: int):
    if kind in (1, 2):  # bool (inside lists: one byte)
        return buf[pos] == 1, pos + 1
    if kind == 3:
        return buf[pos], pos + 1
    if kind in (4, 5, 6):
        return _zigzag(buf, pos)
    if kind == 7:
        return struct.unpack_from("<d", buf, pos)[0], pos + 8
    if kind == 8:
        length, pos = _varint(buf, pos)
        if pos + length > len(buf):
            raise IndexError("binary runs past the buffer")
        return bytes(buf[pos : pos + length]), pos + length
    if kind in (9, 10):
        head = buf[pos]
        pos += 1
        size, element = head >> 4, head & 0x0F
        if size == 15:
            size, pos = _varint(buf, pos)
        items = []
        for _ in range(size):
            item, pos = _read_value(buf, pos, element)
            items.append(item)
        return items, pos
    if kind == 11:
        size, pos = _varint(buf, pos)
        if not size:
            return {}, pos
        types = buf[pos]
        pos += 1
        pairs = {}
        for _ in range(size):
            key, pos = _read_value(buf, pos, types >> 4)
            pairs[key], pos = _read_value(buf, pos, types & 0x0F)
        return pairs, pos
    if kind == 12:
        return _read_struct(buf, pos)
    raise struct.error(f"unknown thrift compact type {kind}")


def _read_struct(buf: bytes, pos: int) -> tuple[dict, int]:
    fields: dict = {}
    field_id = 0
    while True:
        head = buf[pos]
        pos += 1
        if head == 0:
            return fields, pos
        kind, delta = head & 0x0F, head >> 4
        if delta:
            field_id += delta
        else:
            field_id, pos = _zigzag(buf, pos)
        if kind in (1, 2):  # a bool field carries its value in its type
            fields[field_id] = kind == 1
        else:
            fields[field_id], pos = _read_value(buf, pos, kind)
