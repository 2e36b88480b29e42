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
    # Last modification (seconds since the epoch): with the size, it tells a re-run whether
    # the input changed since finished shards were written.
    mtime: float


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
    """Expand files, globs and directories into a sorted, de-duplicated list of inputs."""
    patterns = [paths] if isinstance(paths, str) else list(paths)
    found: dict[str, InputFile] = {}
    for pattern in patterns:
        if fmt == "hf" or _is_hf_dataset_dir(pattern):
            if not _is_hf_dataset_dir(pattern):
                raise InputError(f"{pattern}: not a `datasets` save_to_disk directory")
            size, mtime = _dir_size_and_mtime(pattern)
            found[pattern] = InputFile(pattern, "hf", size, mtime)
            continue
        if os.path.isdir(pattern):
            pattern = os.path.join(pattern, "*")
        matches = FileSystems.match([pattern])[0].metadata_list
        # Hidden and underscore files (_SUCCESS, _tamis_job.json) are not pool data.
        files = [m for m in matches if not os.path.basename(m.path).startswith((".", "_"))]
        if not files:
            raise InputError(f"{pattern}: matches no file")
        for meta in files:
            found[meta.path] = InputFile(
                meta.path,
                _format_of(meta.path, fmt),
                meta.size_in_bytes,
                meta.last_updated_in_seconds,
            )
    return sorted(found.values(), key=lambda f: f.path)


def _dir_size_and_mtime(path: str) -> tuple[int, float]:
    stats = [
        os.stat(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names
    ]
    return sum(st.st_size for st in stats), max((st.st_mtime for st in stats), default=0.0)


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


def iter_jsonl(
    path: str, pool: PoolConfig, chat_template: Callable | None = None, keep_fields: bool = False
):
    """Read a JSONL (or .gz) file line by line; undecodable bytes reject only their line."""
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as stream:
        for number, data in enumerate(iter(stream.readline, b""), start=1):
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


def _iter_table_rows(batches: Iterator[Any]) -> Iterator[tuple[int, dict]]:
    row = 0
    for batch in batches:
        for item in batch.to_pylist():
            yield row, item
            row += 1


def iter_parquet(
    path: str, pool: PoolConfig, chat_template: Callable | None = None, keep_fields: bool = False
):
    import pyarrow.parquet as pq

    wanted = {pool.id_field, pool.text_field, pool.messages_field}
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        pf = pq.ParquetFile(f)
        columns = None if keep_fields else [n for n in pf.schema_arrow.names if n in wanted]
        for row, item in _iter_table_rows(pf.iter_batches(batch_size=4096, columns=columns)):
            yield to_pool_record(item, path, row, pool, chat_template, None, keep_fields)


def iter_hf_dataset(
    path: str, pool: PoolConfig, chat_template: Callable | None = None, keep_fields: bool = False
):
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        raise InputError(
            f"{path}: is a DatasetDict with splits {list(ds)}; point pool.path at one split"
        )
    wanted = {pool.id_field, pool.text_field, pool.messages_field}
    columns = ds.column_names if keep_fields else [n for n in ds.column_names if n in wanted]
    table = ds.select_columns(columns).with_format("arrow")
    batches = (table[i : i + 4096] for i in range(0, len(table), 4096))
    for row, item in _iter_table_rows(batches):
        yield to_pool_record(item, path, row, pool, chat_template, None, keep_fields)


READERS = {"jsonl": iter_jsonl, "parquet": iter_parquet, "hf": iter_hf_dataset}


def read_input(
    source: InputFile,
    pool: PoolConfig,
    chat_template: Callable | None = None,
    keep_fields: bool = False,
) -> Iterator[ReadResult]:
    """Every record of one input, in file order, as PoolRecord, Rejected or BlankLine.

    With keep_fields, each PoolRecord also carries its whole decoded record.
    """
    reader = READERS[source.format]
    for result in reader(source.path, pool, chat_template, keep_fields):
        if pool.strict and isinstance(result, Rejected):
            raise BadRecordError(result.message())
        yield result


def count_records(source: InputFile) -> int:
    """Cheap record count for progress bars: non-blank lines, or table rows."""
    if source.format == "jsonl":
        with FileSystems.open(source.path, compression_type=CompressionTypes.AUTO) as f:
            return sum(1 for line in iter(f.readline, b"") if line.strip())
    if source.format == "parquet":
        import pyarrow.parquet as pq

        with FileSystems.open(source.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return pq.ParquetFile(f).metadata.num_rows
    import datasets

    return len(datasets.load_from_disk(source.path))


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
            with FileSystems.open(source.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                try:
                    tables.append(pq.read_table(f))
                except (pa.ArrowException, OSError) as err:
                    message = f"{source.path}: not a readable Parquet file ({err})"
                    raise InputError(message) from None
        elif source.format == "jsonl":
            try:
                # Whole bytes, decompressed by gzip itself: Beam's decompressing stream reads
                # a cut .gz short without a word; gzip.decompress raises on it.
                data = read_bytes(source.path)
                if source.path.endswith(".gz"):
                    data = gzip.decompress(data)
            except (OSError, EOFError, zlib.error) as err:
                raise InputError(f"{source.path}: damaged or cut compressed file ({err})") from None
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
