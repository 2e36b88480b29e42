"""Bring your own vectors: vectors made elsewhere as a finished tamis embeddings directory.

Sources:
- Parquet files (a file, a glob, or a directory of ``*.parquet``) or JSONL(.gz) files with an
  id column and a vector column (a list or fixed_size_list of numbers);
- a ``.npy`` 2-D array with ``ids=``: a text file with one id per line, or a JSONL/Parquet
  file with an ``id`` column;
- a Hugging Face ``datasets`` directory written by ``save_to_disk``.

The output has the embed pipeline's layout (``part-NNNNN.parquet``, ``manifest.json``,
``rejected.jsonl``), so every selector reads it like embeddings tamis computed. Vectors are
stored as float32 as given, never normalised; the manifest's ``model.normalized`` says
whether they all already have unit norm.

Everything is checked before the output is touched; every problem is an `InputError` naming
the file, the column and the first offending ids. Vectors are read column-wise in blocks into
one float32 matrix (zero-copy where the source is float32 already): memory stays at about
one copy of the vectors plus a block.

Re-running with the same vectors into the same output rewrites it; an output holding other
embeddings raises `OutputConflictError` unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

import tamis
from tamis.pipelines.embed import (
    JOB_FILE,
    MANIFEST,
    REJECTED,
    OutputConflictError,
    part_path,
    shard_parquet_bytes,
    shard_table,
)
from tamis.records import (
    InputError,
    _is_hf_dataset_dir,
    atomic_write,
    parquet_source,
    read_json,
    read_table_files,
    resolve_inputs,
    write_json_atomic,
)

STAGE = "import"
MODEL_NAME = "imported"
# Rows per block when converting and checking vectors (a float64 block is 50 MB at dim 384).
BATCH_ROWS = 16384
NORM_TOLERANCE = 1e-3
SHOWN = 5  # offending ids quoted in an error message
WRITE_THREADS = min(4, os.cpu_count() or 1)
_TABLE_SUFFIXES = (".parquet", ".pq", ".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")


def import_embeddings(
    source: str,
    output: str,
    *,
    id_column: str = "id",
    vector_column: str | None = None,
    ids: str | None = None,
    shard_size: int = 5000,
    overwrite: bool = False,
) -> dict:
    """Write the vectors of `source` as a finished embeddings directory `output`; return
    the manifest written.

    `vector_column` None picks the only list-of-numbers column. `ids` is for ``.npy`` sources
    only. Raises `InputError` for a source that cannot be imported as it is, and
    `OutputConflictError` when `output` holds other embeddings and `overwrite` is False.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    started = time.perf_counter()
    if source.lower().endswith(".npy"):
        read = _read_npy(source, ids)
    else:
        if ids is not None:
            raise InputError(
                f"{source}: ids= is only for .npy sources; this source's ids come from its "
                f"{id_column!r} column"
            )
        read = _read_tables(source, id_column, vector_column)
    fingerprint, normalized = _fingerprint(read.ids, read.vectors)
    _prepare_output(output, fingerprint, source, overwrite)

    n, dim = read.vectors.shape

    def write_part(index: int) -> str:
        start, end = index * shard_size, min(n, (index + 1) * shard_size)
        stats = {"part": index, "records": end - start, "first_row": start, "stage": STAGE}
        table = shard_table(
            read.ids[start:end].to_pylist(),
            read.vectors[start:end],
            np.zeros(end - start, np.int32),  # no tokenizer saw these texts
            stats,
        )
        path = part_path(output, index)
        atomic_write(path, shard_parquet_bytes(table))
        return os.path.basename(path)

    # Parquet encoding and file writes release the GIL: a few parts at a time.
    with ThreadPoolExecutor(max_workers=WRITE_THREADS) as pool:
        parts = list(pool.map(write_part, range(-(-n // shard_size))))
    atomic_write(FileSystems.join(output, REJECTED), b"")

    manifest = {
        "stage": STAGE,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": fingerprint,
        "source": read.info,
        "model": {
            "dim": int(dim),
            "model": MODEL_NAME,
            "source": source,
            "normalized": normalized,
            "source_dtype": read.dtype,
        },
        "counts": {
            "records": n,
            "embedded": n,
            "rejected": 0,
            "rejected_by_reason": {},
            "blank_lines": 0,
            "tokens": 0,
            "truncated": 0,
            "shards": len(parts),
            "shards_skipped": 0,
            "duplicate_ids": 0,
        },
        "duplicate_id_examples": [],
        "parts": parts,
        "seconds": {
            "encode": 0.0,
            "model_load": 0.0,
            "wall": round(time.perf_counter() - started, 3),
        },
        "versions": {
            "tamis": tamis.__version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pyarrow": pa.__version__,
        },
    }
    write_json_atomic(FileSystems.join(output, MANIFEST), manifest)
    return manifest


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass
class _Read:
    ids: pa.StringArray
    vectors: np.ndarray  # (n, dim) float32
    dtype: str  # the source's number type
    info: dict  # where the vectors came from, for the manifest


@dataclass
class _TablePart:
    """One file of a table source: its rows, schema and a way to stream two columns."""

    path: str
    format: str  # parquet | jsonl | hf
    num_rows: int
    schema: pa.Schema
    batches: Callable[[list[str]], Iterator[pa.RecordBatch]]


def _quote(values: list, total: int) -> str:
    """The first offending ids (or row numbers, for rows without an id) and how many more."""
    shown = ", ".join(repr(v) if isinstance(v, str) else f"row {v}" for v in values[:SHOWN])
    return shown + (f" and {total - SHOWN} more" if total > SHOWN else "")


def _open(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _guarded(batches: Iterator, path: str, what: str) -> Iterator:
    """`batches`, with a read error mid-file raised as an InputError naming the file."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError, EOFError) as err:
            raise InputError(f"{path}: cannot read as {what}: {err}") from None
        yield batch


def _table_parts(source: str) -> list[_TablePart]:
    if _is_hf_dataset_dir(source):
        return [_hf_part(source)]
    pattern = source
    if os.path.isdir(source):
        parquet = os.path.join(source, "*.parquet")
        if FileSystems.match([parquet])[0].metadata_list:
            pattern = parquet  # e.g. an embeddings dir: its parts, not its manifest
    elif os.path.isfile(source) and not source.lower().endswith(_TABLE_SUFFIXES):
        raise InputError(
            f"{source}: cannot tell the format from the name; import reads .parquet, "
            ".jsonl[.gz], .npy (with ids=) or a `datasets` save_to_disk directory"
        )
    parts = []
    for found in resolve_inputs(pattern):
        if found.format == "parquet":
            parts.append(_parquet_part(found.path))
        elif found.format == "jsonl":
            parts.append(_jsonl_part(found.path))
        else:
            raise InputError(f"{found.path}: expected Parquet or JSONL")
    return parts


def _parquet_part(path: str) -> _TablePart:
    try:
        pf = pq.ParquetFile(parquet_source(path))
        num_rows, schema = pf.metadata.num_rows, pf.schema_arrow
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path}: cannot read as Parquet: {err}") from None

    def batches(columns: list[str]) -> Iterator[pa.RecordBatch]:
        yield from pq.ParquetFile(parquet_source(path)).iter_batches(
            batch_size=BATCH_ROWS, columns=columns
        )

    return _TablePart(path, "parquet", num_rows, schema, batches)


def _jsonl_part(path: str) -> _TablePart:
    try:
        table = read_table_files(path)  # a cut .gz is an InputError there
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path}: cannot read as JSONL: {err}") from None

    def batches(columns: list[str]) -> Iterator[pa.RecordBatch]:
        yield from table.select(columns).to_batches(max_chunksize=BATCH_ROWS)

    return _TablePart(path, "jsonl", table.num_rows, table.schema, batches)


def _hf_part(path: str) -> _TablePart:
    import datasets

    try:
        ds = datasets.load_from_disk(path)
    except Exception as err:  # datasets raises many kinds for a damaged directory
        raise InputError(f"{path}: cannot read the `datasets` directory: {err}") from None
    if isinstance(ds, datasets.DatasetDict):
        raise InputError(f"{path}: is a DatasetDict with splits {list(ds)}; import one split")

    def batches(columns: list[str]) -> Iterator[pa.RecordBatch]:
        table = ds.select_columns(columns).with_format("arrow")  # memory-mapped
        for start in range(0, len(table), BATCH_ROWS):
            yield from table[start : start + BATCH_ROWS].to_batches()

    return _TablePart(path, "hf", len(ds), ds.features.arrow_schema, batches)


def _is_list(kind: pa.DataType) -> bool:
    return (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    )


def _is_number_list(kind: pa.DataType) -> bool:
    if not _is_list(kind):
        return False
    value = kind.value_type
    return pa.types.is_integer(value) or pa.types.is_floating(value) or pa.types.is_null(value)


def _columns(part: _TablePart, id_column: str, vector_column: str | None) -> str:
    """Check the id and vector columns of a file; return the vector column's name."""
    names = part.schema.names
    present = ", ".join(f"{f.name} ({f.type})" for f in part.schema)
    if id_column not in names:
        raise InputError(f"{part.path}: no id column {id_column!r} (columns: {present})")
    if vector_column is None:
        candidates = [
            f.name for f in part.schema if f.name != id_column and _is_number_list(f.type)
        ]
        if not candidates:
            raise InputError(
                f"{part.path}: no column of number lists to import as vectors "
                f"(columns: {present}); name one with vector_column"
            )
        if len(candidates) > 1:
            raise InputError(
                f"{part.path}: several columns hold number lists ({', '.join(candidates)}); "
                "choose one with vector_column"
            )
        return candidates[0]
    if vector_column not in names:
        raise InputError(f"{part.path}: no vector column {vector_column!r} (columns: {present})")
    kind = part.schema.field(vector_column).type
    if not _is_number_list(kind):
        raise InputError(f"{part.path}: column {vector_column!r} is {kind}, not a list of numbers")
    return vector_column


def _id_strings(column: pa.Array, path: str, id_column: str) -> pa.Array:
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.dictionary_decode(), kind.value_type
    if pa.types.is_string(kind):
        return column
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return column.cast(pa.string())
    if pa.types.is_integer(kind):
        return pc.cast(column, pa.string())
    if pa.types.is_null(kind):  # every id null: reported as null ids
        return pa.nulls(len(column), pa.string())
    raise InputError(f"{path}: id column {id_column!r} is {kind}; ids must be strings or integers")


class _Problems:
    """The bad rows of one file, by kind, counted in full and quoted by their first ids."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.examples: dict[str, list] = {}

    def add(self, kind: str, examples: list) -> None:
        self.count[kind] = self.count.get(kind, 0) + len(examples)
        kept = self.examples.setdefault(kind, [])
        kept.extend(examples[: SHOWN - len(kept)])

    def message(self, kind: str) -> str:
        return _quote(self.examples[kind], self.count[kind])


def _read_tables(source: str, id_column: str, vector_column: str | None) -> _Read:
    parts = _table_parts(source)
    total = sum(p.num_rows for p in parts)
    if total == 0:
        raise InputError(f"{source}: no rows to import")
    vectors: np.ndarray | None = None
    dim: int | None = None
    first_id = ""
    dtypes = set()
    id_chunks: list[pa.Array] = []
    position = 0
    for part in parts:
        column = _columns(part, id_column, vector_column)
        vector_column = vector_column or column
        dtypes.add(str(part.schema.field(column).type.value_type))
        problems = _Problems()
        row = 0  # 0-based row in this file
        what = {"parquet": "Parquet", "jsonl": "JSONL", "hf": "a `datasets` table"}[part.format]
        for batch in _guarded(part.batches([id_column, column]), part.path, what):
            k = batch.num_rows
            batch_ids = _id_strings(batch.column(0), part.path, id_column)
            vec = batch.column(1)

            def label(i: int, batch_ids: pa.Array = batch_ids, row: int = row) -> str | int:
                rid = batch_ids[int(i)].as_py()
                return rid if rid is not None else row + int(i)

            if batch_ids.null_count:
                nulls = np.flatnonzero(batch_ids.is_null().to_numpy(zero_copy_only=False))
                problems.add("null_ids", [row + int(i) for i in nulls])
            valid = ~vec.is_null().to_numpy(zero_copy_only=False)
            if not valid.all():
                problems.add("null_vectors", [label(i) for i in np.flatnonzero(~valid)])
            if pa.types.is_fixed_size_list(vec.type):
                lengths = np.full(k, vec.type.list_size)
            else:
                lengths = pc.fill_null(pc.list_value_length(vec), 0).to_numpy()
            if dim is None and valid.any():
                first = int(np.flatnonzero(valid)[0])
                dim, first_id = int(lengths[first]), _quote([label(first)], 1)
                if dim == 0:
                    raise InputError(
                        f"{part.path}: column {column!r}: the vector of {first_id} is empty; "
                        "vectors need dimension >= 1"
                    )
            ragged = valid & (lengths != dim)
            if ragged.any():
                problems.add(
                    "ragged", [(label(i), int(lengths[i])) for i in np.flatnonzero(ragged)]
                )
            if valid.all() and not ragged.any() and k:
                values = vec.flatten()
                if values.null_count:
                    holes = values.is_null().to_numpy(zero_copy_only=False).reshape(k, dim)
                    problems.add("null_values", [label(i) for i in np.flatnonzero(holes.any(1))])
                elif not problems.count:  # fill only while the file is clean so far
                    if vectors is None:
                        vectors = np.empty((total, dim), dtype=np.float32)
                    block = vectors[position : position + k]
                    with np.errstate(over="ignore"):  # beyond float32: inf, refused below
                        block[...] = values.to_numpy(zero_copy_only=False).reshape(k, dim)
                    finite = np.isfinite(block).all(axis=1)
                    if not finite.all():
                        problems.add("nonfinite", [label(i) for i in np.flatnonzero(~finite)])
            id_chunks.append(batch_ids)
            position += k
            row += k
        _raise_problems(problems, part.path, id_column, column, dim, first_id)
    if position != total or vectors is None:
        raise InputError(f"{source}: read {position} rows where the files declare {total}")
    all_ids = pa.chunked_array(id_chunks, pa.string()).combine_chunks()
    _check_unique(all_ids, parts[0].path if len(parts) == 1 else source, id_column)
    info = {
        "path": source,
        "format": parts[0].format,
        "files": [p.path for p in parts],
        "id_column": id_column,
        "vector_column": vector_column,
    }
    return _Read(all_ids, vectors, "/".join(sorted(dtypes)), info)


def _raise_problems(
    problems: _Problems, path: str, id_column: str, column: str, dim: int | None, first_id: str
) -> None:
    """One InputError naming the file and every kind of bad row found in it."""
    if not problems.count:
        return
    said = []
    c = problems.count
    if "null_ids" in c:
        said.append(
            f"column {id_column!r}: {c['null_ids']} null ids ({problems.message('null_ids')})"
        )
    if "null_vectors" in c:
        said.append(
            f"column {column!r}: {c['null_vectors']} null vectors "
            f"(ids {problems.message('null_vectors')})"
        )
    if "ragged" in c:
        shown = [f"{_quote([rid], 1)} has {n}" for rid, n in problems.examples["ragged"]]
        more = f" and {c['ragged'] - SHOWN} more" if c["ragged"] > SHOWN else ""
        said.append(
            f"column {column!r}: vectors differ in dimension: {c['ragged']} rows do not have "
            f"the {dim} values of the first row ({first_id}): {', '.join(shown)}{more}"
        )
    if "null_values" in c:
        said.append(
            f"column {column!r}: {c['null_values']} vectors hold null values "
            f"(ids {problems.message('null_values')})"
        )
    if "nonfinite" in c:
        said.append(
            f"column {column!r}: {c['nonfinite']} vectors hold NaN or inf values "
            f"(ids {problems.message('nonfinite')})"
        )
    raise InputError(f"{path}: " + "; ".join(said))


def _check_unique(ids: pa.Array, where: str, id_column: str) -> None:
    if len(pc.unique(ids)) == len(ids):
        return
    counts = pc.value_counts(ids)  # in order of first appearance
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    shown = [
        f"{rid!r} ({n} rows)"
        for rid, n in zip(
            repeated.field("values")[:SHOWN].to_pylist(),
            repeated.field("counts")[:SHOWN].to_pylist(),
            strict=True,
        )
    ]
    more = f" and {len(repeated) - SHOWN} more" if len(repeated) > SHOWN else ""
    raise InputError(
        f"{where}: column {id_column!r}: {len(repeated)} ids occur more than once: "
        f"{', '.join(shown)}{more}"
    )


def _read_ids_file(path: str, source: str) -> pa.Array:
    """The ids of a .npy source; errors name the ids file and the source."""
    of = f"(the ids of {source})"
    if path.lower().endswith((".parquet", ".pq")):
        part = _parquet_part(path)
        if "id" not in part.schema.names:
            present = ", ".join(part.schema.names)
            raise InputError(f"{path} {of}: no id column 'id' (columns: {present})")
        chunks = [
            _id_strings(b.column(0), path, "id")
            for b in _guarded(part.batches(["id"]), path, "Parquet")
        ]
        ids = pa.chunked_array(chunks, pa.string()).combine_chunks()
        if ids.null_count:
            rows = np.flatnonzero(ids.is_null().to_numpy(zero_copy_only=False)).tolist()
            raise InputError(
                f"{path} {of}: column 'id': {ids.null_count} null ids ({_quote(rows, len(rows))})"
            )
        return ids
    from tamis.inputs.probabilities import read_id_list

    try:
        return pa.array(read_id_list(path), pa.string())
    except InputError as err:  # names the file and line already
        raise InputError(f"{err} {of}") from None
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise InputError(f"{path} {of}: cannot read the ids: {err}") from None


def _read_npy(source: str, ids_path: str | None) -> _Read:
    if ids_path is None:
        raise InputError(
            f"{source}: a .npy file holds no ids; pass ids= (a text file with one id per "
            "line, or a JSONL/Parquet file with an 'id' column)"
        )
    try:
        if "://" in source:
            with _open(source) as f:
                array = np.load(f, allow_pickle=False)
        else:
            array = np.load(source, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"{source}: cannot read as a .npy array: {err}") from None
    if array.ndim != 2:
        raise InputError(
            f"{source}: expected a 2-D array (rows x dimension), got shape {array.shape}"
        )
    if array.dtype.kind not in "fiu":
        raise InputError(f"{source}: holds {array.dtype} values, not real numbers")
    n, dim = array.shape
    if n == 0:
        raise InputError(f"{source}: no rows to import")
    if dim == 0:
        raise InputError(f"{source}: vectors have dimension 0; they need dimension >= 1")
    ids = _read_ids_file(ids_path, source)
    if len(ids) != n:
        raise InputError(f"{source}: {n} vectors, but {ids_path} holds {len(ids)} ids")
    _check_unique(ids, f"{ids_path} (the ids of {source})", "id")
    if array.dtype == np.float32 and array.dtype.isnative and array.flags.c_contiguous:
        vectors = array  # memory-mapped: no copy in memory
    else:
        vectors = np.empty((n, dim), dtype=np.float32)
    bad: list[int] = []
    for start in range(0, n, BATCH_ROWS):
        block = array[start : start + BATCH_ROWS]
        if vectors is not array:
            with np.errstate(over="ignore"):  # beyond float32: inf, refused below
                vectors[start : start + len(block)] = block
            block = vectors[start : start + len(block)]
        bad.extend((start + np.flatnonzero(~np.isfinite(block).all(axis=1))).tolist())
    if bad:
        shown = _quote([ids[i].as_py() for i in bad[:SHOWN]], len(bad))
        raise InputError(
            f"{source}: {len(bad)} vectors hold NaN or inf values (ids {shown}; rows "
            f"{', '.join(map(str, bad[:SHOWN]))})"
        )
    info = {"path": source, "format": "npy", "files": [source], "ids": ids_path}
    return _Read(ids, vectors, str(array.dtype), info)


# ---------------------------------------------------------------------------------------------
# Fingerprint and output


def _fingerprint(ids: pa.Array, vectors: np.ndarray) -> tuple[str, bool]:
    """sha256 over the ids and the float32 vectors (so the same vectors from any file format
    give the same fingerprint), and whether every vector has unit norm."""
    n, dim = vectors.shape
    digest = hashlib.sha256(f"tamis.import.v1 {n} {dim}\n".encode())
    normalized = True
    for start in range(0, n, BATCH_ROWS):
        block = np.ascontiguousarray(vectors[start : start + BATCH_ROWS], dtype="<f4")
        digest.update(json.dumps(ids[start : start + len(block)].to_pylist()).encode())
        digest.update(block)
        if normalized:
            norms = np.sqrt(np.einsum("ij,ij->i", block, block))
            normalized = bool(np.all(np.abs(norms - 1.0) <= NORM_TOLERANCE))
    return digest.hexdigest()[:20], normalized


def _describe(manifest: dict) -> str:
    if manifest.get("stage") == STAGE:
        return f"vectors imported from {manifest.get('model', {}).get('source')}"
    if manifest.get("stage") == "embed":
        return "embeddings written by `tamis embed`"
    return f"a {manifest.get('stage', 'tamis')} output"


def _prepare_output(output: str, fingerprint: str, source: str, overwrite: bool) -> None:
    """Refuse an output holding other embeddings (unless overwrite); clear ours for rewriting
    and record the job, so that an interrupted import can be re-run."""
    if not FileSystems.exists(output):
        FileSystems.mkdirs(output)
    existing = [m.path for m in FileSystems.match([FileSystems.join(output, "*")])[0].metadata_list]
    names = {os.path.basename(p): p for p in existing}
    if not overwrite:
        conflict = None
        if MANIFEST in names:
            try:
                previous = read_json(names[MANIFEST])
            except ValueError:
                previous = {}
            if previous.get("fingerprint") != fingerprint:
                conflict = (
                    f"{_describe(previous)} (fingerprint {previous.get('fingerprint')} != "
                    f"{fingerprint}, the fingerprint of {source})"
                )
        elif JOB_FILE in names:
            previous = read_json(names[JOB_FILE])
            if previous.get("fingerprint") != fingerprint:
                conflict = f"an unfinished job of other inputs ({names[JOB_FILE]})"
        elif any(name.startswith("part-") for name in names):
            conflict = "part files that tamis did not record"
        if conflict:
            raise OutputConflictError(
                f"{output}: holds {conflict}; choose another output or pass overwrite=True "
                "(--overwrite)"
            )
    stale = [
        path
        for name, path in names.items()
        if name.startswith("part-") or name in (MANIFEST, REJECTED, JOB_FILE) or ".tmp-" in name
    ]
    if stale:
        FileSystems.delete(stale)
    write_json_atomic(
        FileSystems.join(output, JOB_FILE),
        {"fingerprint": fingerprint, "stage": STAGE, "source": source},
    )
