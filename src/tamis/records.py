"""Pool records: finding input files, reading them, turning records into text, dead letters.

Readers yield, for every record of an input file, either a `PoolRecord` (id + text to embed)
or a `Rejected` dead letter with the file, line and reason. Nothing is dropped silently:
whitespace-only JSONL lines are not records and are counted apart as blank lines.

Positions: JSONL lines are 1-based (as an editor shows them); Parquet and `datasets` rows are
0-based (as a dataframe shows them). A record without an id gets ``<file>:<position>``.

All file access goes through Beam's FileSystems, so the same code reads local paths and
gs:// paths on Dataflow workers.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from tamis.config import PoolConfig

# Reasons a record is rejected (the keys of manifest counts.rejected_by_reason).
MALFORMED_JSON = "malformed_json"
UNDECODABLE_BYTES = "undecodable_bytes"
NOT_AN_OBJECT = "not_an_object"
MISSING_TEXT = "missing_text"
EMPTY_TEXT = "empty_text"
TEXT_NOT_STRING = "text_not_string"
BAD_MESSAGES = "bad_messages"
BAD_ID = "bad_id"
TEMPLATE_ERROR = "template_error"
# Whole-file dead letters (non-strict mode; strict mode raises InputError): a compressed file
# that ends early, or whose data is corrupt, part way. The lines before it were read.
TRUNCATED_FILE = "truncated_file"
DAMAGED_FILE = "damaged_file"
FILE_REASONS = (TRUNCATED_FILE, DAMAGED_FILE)
# The encoder gave a vector with NaN or inf in it (the embed stage's own dead letter).
NON_FINITE_EMBEDDING = "non_finite_embedding"

RAW_SNIPPET_CHARS = 300
# Number of the first record in each format: JSONL lines count from 1, table rows from 0.
FIRST_POSITION = {"jsonl": 1, "parquet": 0, "hf": 0}
TULU_EOS = "</s>"


class BadRecordError(ValueError):
    """Raised in strict mode for the first bad record; the message names file and line."""


class InputError(ValueError):
    """An input path that matches nothing or cannot be read as a pool."""


@dataclass(frozen=True)
class InputFile:
    path: str
    format: str  # jsonl | parquet | hf
    size: int
    # Last modification (seconds since the epoch): recorded in manifests, for people.
    mtime: float
    # What a re-run compares to tell whether the input changed (`content_digest`); filled by
    # the embed plan, which hashes every input once.
    digest: str | None = None


@dataclass(frozen=True)
class PoolRecord:
    id: str
    text: str
    source: str
    line: int
    # The whole decoded record, kept only when asked for (joining records into subsets).
    fields: dict | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Rejected:
    source: str
    line: int
    reason: str
    detail: str
    id: str | None = None
    raw: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    def message(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}: {self.detail}"


@dataclass(frozen=True)
class BlankLine:
    source: str
    line: int


ReadResult = PoolRecord | Rejected | BlankLine


# ---------------------------------------------------------------------------------------------
# Finding inputs


def _format_of(path: str, requested: str) -> str:
    if requested != "auto":
        return requested
    name = path.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".ndjson.gz")):
        return "jsonl"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise InputError(
        f"{path}: cannot tell the format from the name; use .jsonl[.gz] or .parquet, "
        "or set pool.format"
    )


def _is_hf_dataset_dir(path: str) -> bool:
    return os.path.isdir(path) and (
        os.path.isfile(os.path.join(path, "dataset_info.json"))
        or os.path.isfile(os.path.join(path, "state.json"))
        or os.path.isfile(os.path.join(path, "dataset_dict.json"))
    )


def resolve_inputs(paths: str | list[str], fmt: str = "auto") -> list[InputFile]:
    """Expand files, globs and directories into a sorted, de-duplicated list of inputs.

    A directory's own files are its inputs; a subdirectory in it (other than a `datasets`
    directory, which is one input) is an error rather than silently left out.
    """
    patterns = [paths] if isinstance(paths, str) else list(paths)
    found: dict[str, InputFile] = {}
    for pattern in patterns:
        if fmt == "hf" or _is_hf_dataset_dir(pattern):
            if not _is_hf_dataset_dir(pattern):
                raise InputError(f"{pattern}: not a `datasets` save_to_disk directory")
            size, mtime = _dir_size_and_mtime(pattern)
            found[pattern] = InputFile(pattern, "hf", size, mtime)
            continue
        if os.path.islink(pattern) and not os.path.exists(pattern):
            raise InputError(f"{pattern}: a symbolic link to nothing (dangling, or a loop)")
        directory = os.path.isdir(pattern)
        if directory:
            _check_no_subdirectories(pattern)
            pattern = os.path.join(pattern, "*")
        matches = FileSystems.match([pattern])[0].metadata_list
        # Hidden and underscore files (_SUCCESS, _tamis_job.json) are not pool data.
        files = [m for m in matches if not os.path.basename(m.path).startswith((".", "_"))]
        if not files:
            if directory:
                raise InputError(f"{os.path.dirname(pattern)}: the directory holds no input file")
            raise InputError(f"{pattern}: matches no file")
        for meta in files:
            found[meta.path] = InputFile(
                meta.path,
                _format_of(meta.path, fmt),
                meta.size_in_bytes,
                meta.last_updated_in_seconds,
            )
    return sorted(found.values(), key=lambda f: f.path)


def _check_no_subdirectories(directory: str) -> None:
    """A pool directory's files are read, its subdirectories are not: refuse to leave their
    files out without a word (hidden and underscore names are not data), and name a broken
    link in it."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as err:
        message = f"{directory}: cannot list the directory ({err.strerror or err})"
        raise InputError(message) from None
    subdirs, tables = [], []
    for entry in entries:
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_symlink() and not os.path.exists(entry.path):
            raise InputError(f"{entry.path}: a symbolic link to nothing (dangling, or a loop)")
        if entry.is_dir():
            (tables if _is_hf_dataset_dir(entry.path) else subdirs).append(entry.name)
    if subdirs:
        shown = ", ".join(f"{name}/" for name in subdirs[:5])
        raise InputError(
            f"{directory}: holds subdirectories ({shown}) whose files would not be read; "
            "name the files to read with a glob (dir/*.jsonl, dir/*/*.jsonl) or a list"
        )
    if tables:
        raise InputError(
            f"{directory}: holds the `datasets` directory {tables[0]}/, which is not read as "
            "part of it; list it in pool.path on its own"
        )


def _dir_files(path: str) -> list[str]:
    """Every file under a directory, as sorted paths relative to it."""
    try:
        return sorted(
            os.path.relpath(os.path.join(root, name), path)
            for root, _, names in os.walk(path, onerror=_raise)
            for name in names
        )
    except OSError as err:
        raise InputError(f"{path}: cannot read the `datasets` directory ({err})") from None


def _dir_size_and_mtime(path: str) -> tuple[int, float]:
    try:
        stats = [os.stat(os.path.join(path, name)) for name in _dir_files(path)]
    except OSError as err:
        raise InputError(f"{path}: cannot read the `datasets` directory ({err})") from None
    return sum(st.st_size for st in stats), max((st.st_mtime for st in stats), default=0.0)


def _raise(err: OSError) -> None:
    raise err


def content_digest(source: InputFile) -> str:
    """A hash of an input's content, which tells a re-run whether the input changed (size
    and mtime do not: an edit of the same size with its mtime put back keeps both).

    Local files are hashed whole with SHA-256 in 1 MiB blocks: 0.08-0.14 s for a 100 MB
    JSONL here (740-1200 MiB/s on one core with SHA extensions; blake2b did 350-700), well
    under 0.1% of embedding it. A `datasets` directory hashes its files' names and bytes.
    Remote files use the checksum their store keeps (GCS: crc32c), read from metadata
    without downloading the file; where the store gives none, the bytes are hashed.
    """
    if "://" in source.path and source.format != "hf":
        try:
            return f"checksum:{FileSystems.checksum(source.path)}"
        except Exception:  # a filesystem without checksums: hash the bytes
            pass
    digest = hashlib.sha256()
    if source.format == "hf":
        for name in _dir_files(source.path):
            digest.update(name.encode() + b"\0")
            _hash_file(os.path.join(source.path, name), digest)
    else:
        _hash_file(source.path, digest)
    return f"sha256:{digest.hexdigest()}"


def _hash_file(path: str, digest: Any) -> None:
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from None


# ---------------------------------------------------------------------------------------------
# Turning a record into text


def render_messages(
    messages: list[dict[str, str]], template: str, chat_template: Callable | None = None
) -> str:
    """Render a conversation as one string with the named template."""
    if template == "plain":
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    if template == "tulu":
        # open-instruct's Tulu format, as used by the RDS+ reference code.
        parts = []
        for m in messages:
            content = m["content"].strip()
            if m["role"] == "assistant":
                parts.append(f"<|assistant|>\n{content}{TULU_EOS}\n")
            else:
                parts.append(f"<|{m['role']}|>\n{content}\n")
        return "".join(parts)
    if template == "chat":
        if chat_template is None:
            raise ValueError("template 'chat' needs the tokenizer's chat template")
        return chat_template(messages)
    raise ValueError(f"unknown template {template!r}")


def _check_messages(messages: Any) -> str | None:
    """Return why `messages` is not a list of {role, content} strings, or None if it is."""
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list of {role, content}"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"messages[{i}] is not an object"
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                return f"messages[{i}].{key} must be a string"
    return None


def to_pool_record(
    raw: Any,
    source: str,
    line: int,
    pool: PoolConfig,
    chat_template: Callable | None = None,
    snippet: str | None = None,
    keep_fields: bool = False,
) -> PoolRecord | Rejected:
    """Validate one decoded record and produce its id and text, or a dead letter."""

    def reject(reason: str, detail: str, rid: str | None = None) -> Rejected:
        return Rejected(source, line, reason, detail, rid, snippet)

    if not isinstance(raw, dict):
        return reject(NOT_AN_OBJECT, f"expected a JSON object, got {type(raw).__name__}")
    rid = raw.get(pool.id_field)
    if rid is None:
        rid = f"{source}:{line}"
    elif isinstance(rid, bool) or not isinstance(rid, (str, int)):
        return reject(BAD_ID, f"{pool.id_field!r} must be a string or integer, got {rid!r}")
    rid = str(rid)
    if rid == "":
        return reject(BAD_ID, f"{pool.id_field!r} is empty")

    if pool.text_field in raw and raw[pool.text_field] is not None:
        text = raw[pool.text_field]
        if not isinstance(text, str):
            kind = type(text).__name__
            return reject(TEXT_NOT_STRING, f"{pool.text_field!r} is a {kind}, not a string", rid)
    elif pool.messages_field in raw and raw[pool.messages_field] is not None:
        messages = raw[pool.messages_field]
        problem = _check_messages(messages)
        if problem:
            return reject(BAD_MESSAGES, problem, rid)
        try:
            text = render_messages(messages, pool.template, chat_template)
        except Exception as err:  # a chat template may raise anything (jinja errors)
            return reject(TEMPLATE_ERROR, f"{pool.template} template failed: {err}", rid)
    else:
        fields = f"{pool.text_field!r} or {pool.messages_field!r}"
        return reject(MISSING_TEXT, f"record has no {fields} field", rid)
    if not text.strip():
        return reject(EMPTY_TEXT, "text is empty or whitespace", rid)
    return PoolRecord(rid, text, source, line, raw if keep_fields else None)


# ---------------------------------------------------------------------------------------------
# Reading files


def _snippet(data: bytes | str) -> str:
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="replace")
    return data[:RAW_SNIPPET_CHARS]


class DamagedFileError(InputError):
    """A compressed input that ends early or holds corrupt data part way; `lines` lines of it
    were read before that. Readers turn it into a dead letter (non-strict) or an error."""

    def __init__(self, path: str, lines: int, reason: str, detail: str):
        super().__init__(f"{path}: {detail}")
        self.path, self.lines, self.reason, self.detail = path, lines, reason, detail


def parquet_source(path: str) -> Any:
    """What Arrow reads a Parquet file from: a local path, or a remote file's bytes copied
    into memory Arrow owns. Never a Python object (a file, or bytes): Arrow's reader threads
    drop their last reference to the source after a read has returned, and a thread that
    releases a Python object while the interpreter is exiting (an input error right after
    the read, say) is stopped inside a noexcept destructor, which aborts the process
    ("terminate called without an active exception", exit 134)."""
    import numpy as np
    import pyarrow as pa

    if "://" not in path:
        return path
    if path.startswith("file://"):
        return path.removeprefix("file://")
    data = read_bytes(path)
    buffer = pa.allocate_buffer(len(data))
    np.frombuffer(buffer, np.uint8)[:] = np.frombuffer(data, np.uint8)
    return pa.BufferReader(buffer)


def _open_raw(path: str, compression: str = CompressionTypes.UNCOMPRESSED) -> Any:
    try:
        return FileSystems.open(path, compression_type=compression)
    except OSError as err:  # BeamIOError is an OSError too
        raise InputError(f"{path}: cannot read ({getattr(err, 'strerror', None) or err})") from None


def _text_stream(path: str) -> Any:
    """A text input's bytes, .gz decompressed by gzip itself: Beam's decompressing stream
    ends a cut .gz early without a word, gzip raises (see `_stream_error`)."""
    if path.lower().endswith(".gz"):
        return gzip.GzipFile(fileobj=_open_raw(path), mode="rb")
    return _open_raw(path, CompressionTypes.AUTO)


_STREAM_ERRORS = (EOFError, OSError, zlib.error)  # gzip.BadGzipFile is an OSError


def _stream_error(path: str, err: BaseException, lines: int | None) -> InputError:
    """What a failed read of a text input means; `lines` were read before (None: unknown)."""
    after = "" if lines is None else f", after line {lines}"
    if isinstance(err, EOFError):
        return DamagedFileError(
            path,
            lines or 0,
            TRUNCATED_FILE,
            f"damaged or cut compressed file: it ends early{after} ({err}); "
            "the rest of the file is lost",
        )
    if isinstance(err, (gzip.BadGzipFile, zlib.error)):
        if not lines and "Not a gzipped file" in str(err):
            return InputError(f"{path}: not a gzip file, though its name ends in .gz")
        return DamagedFileError(
            path,
            lines or 0,
            DAMAGED_FILE,
            f"damaged or cut compressed file: corrupt data{after} ({err}); "
            "the rest of the file is lost",
        )
    message = getattr(err, "strerror", None) or err
    return InputError(f"{path}: read failed{after} ({message})")


def _raw_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(number from 1, bytes) for every line of a text input; a damaged or cut compressed
    file raises DamagedFileError with the count of lines read."""
    number = 0
    with _text_stream(path) as stream:
        try:
            for data in iter(stream.readline, b""):
                number += 1
                yield number, data
        except _STREAM_ERRORS as err:
            raise _stream_error(path, err, number) from None


def _text_bytes(path: str) -> bytes:
    """A whole text input, decompressed as `_raw_lines` does (the same errors)."""
    with _text_stream(path) as stream:
        try:
            return stream.read()
        except _STREAM_ERRORS as err:
            raise _stream_error(path, err, None) from None


_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# Files read as JSONL whose first bytes say they are something else (pool.format: jsonl on a
# Parquet file, gzip data under a name without .gz): every line would be a dead letter.
_NOT_TEXT = ((b"PAR1", "a Parquet file"), (b"\x1f\x8b", "gzip-compressed data (name it .gz)"))


def _jsonl_lines(path: str) -> Iterator[tuple[int, bytes]]:
    """The lines of a JSONL file as the reader and the record count both see them: a UTF-8
    byte-order mark is dropped; a UTF-16/32 file is refused (its every line would be junk)."""
    for number, data in _raw_lines(path):
        if number == 1:
            if data.startswith(_UTF16_BOMS):
                raise InputError(
                    f"{path}: UTF-16 or UTF-32 text (it starts with a byte-order mark); JSONL "
                    "is read as UTF-8: convert it first (iconv -f UTF-16 -t UTF-8)"
                )
            for magic, kind in _NOT_TEXT:
                if data.startswith(magic):
                    raise InputError(f"{path}: {kind}, not JSON lines: is the format right?")
            data = data.removeprefix(_UTF8_BOM)
        yield number, data


def iter_jsonl(
    path: str, pool: PoolConfig, chat_template: Callable | None = None, keep_fields: bool = False
):
    """Read a JSONL (or .gz) file line by line; undecodable bytes reject only their line. A
    compressed file cut short or damaged ends with one dead letter saying so."""
    try:
        for number, data in _jsonl_lines(path):
            if not data.strip():
                yield BlankLine(path, number)
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as err:
                yield Rejected(
                    path, number, UNDECODABLE_BYTES, f"not UTF-8: {err}", None, _snippet(data)
                )
                continue
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as err:
                yield Rejected(path, number, MALFORMED_JSON, str(err), None, _snippet(text))
                continue
            yield to_pool_record(
                raw, path, number, pool, chat_template, _snippet(text), keep_fields
            )
    except DamagedFileError as err:
        yield Rejected(path, err.lines + 1, err.reason, err.detail)


def _iter_table_rows(batches: Iterator[Any]) -> Iterator[tuple[int, dict]]:
    row = 0
    for batch in batches:
        for item in batch.to_pylist():
            yield row, item
            row += 1


def _not_parquet(path: str, err: Exception) -> str:
    """Why a file could not be read as Parquet, and what it looks like when that helps."""
    message = f"{path}: not a readable Parquet file ({err})"
    try:
        with _open_raw(path) as f:
            head = f.read(64).lstrip()
    except (InputError, OSError):
        return message
    if head.startswith((b"{", b"[")) or head.startswith(b"\x1f\x8b"):
        kind = "gzip-compressed data" if head.startswith(b"\x1f\x8b") else "JSON lines"
        message += f"; it looks like {kind}: is the format (pool.format) right?"
    return message


def iter_parquet(
    path: str, pool: PoolConfig, chat_template: Callable | None = None, keep_fields: bool = False
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    wanted = {pool.id_field, pool.text_field, pool.messages_field}
    try:
        pf = pq.ParquetFile(parquet_source(path))
        columns = None if keep_fields else [n for n in pf.schema_arrow.names if n in wanted]
        batches = pf.iter_batches(batch_size=4096, columns=columns)
        for row, item in _iter_table_rows(batches):
            yield to_pool_record(item, path, row, pool, chat_template, None, keep_fields)
    except FileNotFoundError as err:
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from None
    except (pa.ArrowException, OSError) as err:
        raise InputError(_not_parquet(path, err)) from None


def _load_hf_dataset(path: str) -> Any:
    import datasets

    try:
        ds = datasets.load_from_disk(path)
    except Exception as err:  # a damaged dir raises anything: JSON, Arrow, missing files
        raise InputError(
            f"{path}: not a readable `datasets` directory ({type(err).__name__}: {err})"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        raise InputError(
            f"{path}: is a DatasetDict with splits {list(ds)}; point pool.path at one split"
        )
    return ds


def iter_hf_dataset(
    path: str, pool: PoolConfig, chat_template: Callable | None = None, keep_fields: bool = False
):
    import pyarrow as pa

    ds = _load_hf_dataset(path)
    wanted = {pool.id_field, pool.text_field, pool.messages_field}
    columns = ds.column_names if keep_fields else [n for n in ds.column_names if n in wanted]
    try:
        table = ds.select_columns(columns).with_format("arrow")
        batches = (table[i : i + 4096] for i in range(0, len(table), 4096))
        for row, item in _iter_table_rows(batches):
            yield to_pool_record(item, path, row, pool, chat_template, None, keep_fields)
    except (pa.ArrowException, OSError) as err:
        raise InputError(
            f"{path}: not a readable `datasets` directory ({type(err).__name__}: {err})"
        ) from None


READERS = {"jsonl": iter_jsonl, "parquet": iter_parquet, "hf": iter_hf_dataset}


def read_input(
    source: InputFile,
    pool: PoolConfig,
    chat_template: Callable | None = None,
    keep_fields: bool = False,
) -> Iterator[ReadResult]:
    """Every record of one input, in file order, as PoolRecord, Rejected or BlankLine.

    With keep_fields, each PoolRecord also carries its whole decoded record. In strict mode
    the first bad record raises BadRecordError, a damaged file InputError.
    """
    reader = READERS[source.format]
    for result in reader(source.path, pool, chat_template, keep_fields):
        if pool.strict and isinstance(result, Rejected):
            if result.reason in FILE_REASONS:
                raise InputError(f"{result.source}: {result.detail}")
            raise BadRecordError(result.message())
        yield result


def count_records(source: InputFile) -> int:
    """The number of records `read_input` gives (records and dead letters, not blank lines),
    counted cheaply: non-blank lines (a damaged compressed file's dead letter counts as
    one), or table rows."""
    if source.format == "jsonl":
        count = 0
        try:
            for _, line in _jsonl_lines(source.path):
                count += bool(line.strip())
        except DamagedFileError:
            count += 1
        return count
    if source.format == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(parquet_source(source.path)).metadata.num_rows
        except (pa.ArrowException, OSError) as err:
            raise InputError(_not_parquet(source.path, err)) from None
    return len(_load_hf_dataset(source.path))


def iter_pool_records(
    pool: PoolConfig, chat_template: Callable | None = None, keep_fields: bool = False
) -> Iterator[PoolRecord]:
    """The valid records of the whole pool, in pool order (dead letters are skipped here:
    the embed stage already reported them)."""
    for source in resolve_inputs(pool.path, pool.format):
        for result in read_input(source, pool, chat_template, keep_fields):
            if isinstance(result, PoolRecord):
                yield result


# ---------------------------------------------------------------------------------------------
# Writing


def atomic_write(path: str, data: bytes) -> None:
    """Write bytes so that `path` either does not exist or holds all of them."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def write_jsonl_atomic(path: str, lines: list[str]) -> None:
    atomic_write(path, "".join(line + "\n" for line in lines).encode("utf-8"))


def write_parquet_atomic(path: str, table: Any) -> None:
    """An Arrow table as one Parquet file, written atomically (local or gs://)."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    atomic_write(path, buffer.getvalue())


def write_json_atomic(path: str, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_table_files(path: str | list[str]) -> Any:
    """Parquet or JSONL files (a glob or list) as one Arrow table, in file order (the tables
    of selector inputs: probabilities, stream items, skills)."""
    import pyarrow as pa
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    tables = []
    for source in resolve_inputs(path):
        if source.format == "parquet":
            try:
                tables.append(pq.read_table(parquet_source(source.path)))
            except (pa.ArrowException, OSError) as err:
                raise InputError(_not_parquet(source.path, err)) from None
        elif source.format == "jsonl":
            # Decompressed by gzip itself, as the pool reader does: a cut .gz is an error.
            data = _text_bytes(source.path)
            try:
                tables.append(pajson.read_json(pa.BufferReader(data)))
            except pa.ArrowInvalid as err:
                raise InputError(f"{source.path}: {err}") from None
        else:
            raise InputError(f"{source.path}: expected Parquet or JSONL")
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="default")


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path).decode("utf-8"))
