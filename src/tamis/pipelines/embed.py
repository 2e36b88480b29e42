"""The embed pipeline: read -> validate -> shard -> encode (length-sorted batches) -> write.

Output directory (the public contract):
- ``part-NNNNN.parquet``: ``id`` (string), ``embedding`` (fixed_size_list<float32>[D]),
  ``n_tokens`` (int32); one shard per `shard_size` input lines of a file, in input order.
- ``rejected.jsonl``: every bad record with source, line, reason and detail.
- ``manifest.json``: resolved config, inputs, model, counts by outcome, tokens, seconds.

Resumption: shards are numbered from the input alone and written atomically, so a re-run of
the same job (same config and input contents, recorded in ``_tamis_job.json``) skips every
shard that exists and ends with output identical to an uninterrupted run. A part that cannot
be read back (cut short by a copy, say) or that holds other lines than its shard is embedded
again, with a warning naming it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import platform
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import TestOptions
from apache_beam.runners.runner import PipelineResult

import tamis
from tamis.config import (
    Config,
    ConfigError,
    EmbeddingConfig,
    PoolConfig,
    make_output_dir,
    require,
)
from tamis.records import (
    FILE_REASONS,
    FIRST_POSITION,
    NON_FINITE_EMBEDDING,
    BadRecordError,
    BlankLine,
    InputError,
    InputFile,
    Rejected,
    atomic_write,
    content_digest,
    count_records,
    read_input,
    read_json,
    resolve_inputs,
    write_json_atomic,
    write_jsonl_atomic,
)
from tamis.runners.options import make_runner

log = logging.getLogger(__name__)

METRICS_NAMESPACE = "tamis.embed"
JOB_FILE = "_tamis_job.json"
MANIFEST = "manifest.json"
REJECTED = "rejected.jsonl"
SHARD_METADATA_KEY = b"tamis.shard"
# Config keys that change the embeddings; the rest (output, sharing, downloads) do not.
_NON_FINGERPRINT_KEYS = {"output", "share_model_across_processes", "allow_download"}


class OutputConflictError(RuntimeError):
    """The output directory holds shards of a different job."""


def part_path(output: str, index: int) -> str:
    return FileSystems.join(output, f"part-{index:05d}.parquet")


def vector_type(dim: int) -> pa.DataType:
    """fixed_size_list<float32>[dim] whose elements are never null: Parquet then stores no
    definition levels for them, and reading the vectors is ~40% faster (80 -> 50 ms for a
    50,000 x 384 part)."""
    return pa.list_(pa.field("element", pa.float32(), nullable=False), dim)


def embeddings_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("embedding", vector_type(dim), nullable=False),
            pa.field("n_tokens", pa.int32(), nullable=False),
        ]
    )


def shard_table(ids: list[str], embeddings: np.ndarray, n_tokens: np.ndarray, stats: dict):
    """One shard as an Arrow table; its stats ride in the schema metadata for resumption."""
    dim = embeddings.shape[1]
    flat = pa.array(np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1))
    schema = embeddings_schema(dim).with_metadata({SHARD_METADATA_KEY: json.dumps(stats)})
    return pa.Table.from_arrays(
        [
            pa.array(ids, pa.string()),
            pa.FixedSizeListArray.from_arrays(flat, type=vector_type(dim)),
            pa.array(n_tokens, pa.int32()),
        ],
        schema=schema,
    )


# The layout is tuned for reading vectors back fast (selectors stream whole pools). On a
# 50,000 x 384 part, vectors read in 27 ms instead of 166 ms with pyarrow's defaults: small
# row groups decode on several threads and stream as blocks; floats neither dictionary-encode
# nor compress (snappy saved ~nothing and cost decode time); large v2 data pages cut
# per-page overhead (reader side: memory-mapped, see embeddings/store.py).
ROW_GROUP_ROWS = 4096
DATA_PAGE_BYTES = 8 << 20


def shard_parquet_bytes(table: pa.Table) -> bytes:
    """A part file's bytes, in the layout every embeddings directory uses."""
    buffer = io.BytesIO()
    pq.write_table(
        table,
        buffer,
        row_group_size=ROW_GROUP_ROWS,
        use_dictionary=["id"],
        compression="none",
        data_page_size=DATA_PAGE_BYTES,
        data_page_version="2.0",
    )
    return buffer.getvalue()


def write_vectors_dir(
    directory: str, ids: list[str], vectors: np.ndarray, shard_size: int = 5000
) -> str:
    """Vectors computed elsewhere as a finished embeddings dir (parts in the layout above and
    a manifest with the dimension), readable by every selector; returns the directory."""
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
    if not FileSystems.exists(directory):
        FileSystems.mkdirs(directory)
    for part, start in enumerate(range(0, len(vectors), shard_size)):
        block = np.asarray(vectors[start : start + shard_size], dtype=np.float32)
        part_ids = ids[start : start + len(block)]
        table = shard_table(part_ids, block, np.ones(len(block), np.int32), {})
        path = FileSystems.join(directory, f"part-{part:05d}.parquet")
        atomic_write(path, shard_parquet_bytes(table))
    write_json_atomic(
        FileSystems.join(directory, "manifest.json"),
        {"model": {"dim": int(vectors.shape[1])}, "counts": {"embedded": len(ids)}},
    )
    return directory


def finished_shard(path: str, lines: list[int]) -> tuple[dict | None, str | None]:
    """(stats, None) when `path` holds the finished shard of these input lines (sorted);
    (None, None) when there is no such file; (None, why) when the file is there but cannot
    be read back (cut short, not Parquet, no tamis stats) or holds other lines: its shard
    must be embedded again."""
    if not FileSystems.exists(path):
        return None, None
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            metadata = pq.read_metadata(f)
        stats = json.loads(metadata.schema.to_arrow_schema().metadata[SHARD_METADATA_KEY])
        rows = metadata.num_rows
        expected = (stats["first_line"], stats["last_line"], stats["records"])
        dead = len([Rejected(**d) for d in stats.get("rejected", [])])
    except (pa.ArrowException, OSError, KeyError, TypeError, ValueError) as err:
        return None, f"unreadable ({type(err).__name__}: {err})"
    if rows != expected[2] or (expected[0], expected[1], expected[2] + dead) != (
        lines[0],
        lines[-1],
        len(lines),
    ):
        return None, (
            f"holds lines {expected[0]}..{expected[1]} ({rows} rows), not its shard's "
            f"{lines[0]}..{lines[-1]} ({len(lines)} records)"
        )
    return stats, None


# ---------------------------------------------------------------------------------------------
# DoFns: thin layers that move records to records.py and the Encoder.


class ReadPool(beam.DoFn):
    """Read one input file; records go out keyed by shard, dead letters to 'rejected'."""

    def __init__(self, pool: PoolConfig, embedding: EmbeddingConfig, shard_size: int):
        self.pool = pool
        self.embedding = embedding
        self.shard_size = shard_size
        self.records = Metrics.counter(METRICS_NAMESPACE, "records")
        self.blank = Metrics.counter(METRICS_NAMESPACE, "blank_lines")

    def setup(self):
        self.chat_template = None
        if self.pool.template == "chat":
            from tamis.embeddings.encoder import chat_template_function

            self.chat_template = chat_template_function(self.embedding)

    def process(self, indexed_input: tuple[int, InputFile]):
        file_index, source = indexed_input
        seen = 0
        for result in read_input(source, self.pool, self.chat_template):
            if isinstance(result, BlankLine):
                self.blank.inc()
                yield beam.pvalue.TaggedOutput("blank", 1)
                continue
            seen += 1
            self.records.inc()
            if isinstance(result, Rejected):
                Metrics.counter(METRICS_NAMESPACE, f"rejected_{result.reason}").inc()
                if result.reason in FILE_REASONS:  # the rest of the file is lost: say so now
                    log.warning("%s: %s", result.source, result.detail)
                yield _rejected_output(result)
            else:
                offset = result.line - FIRST_POSITION[source.format]
                shard = (file_index, offset // self.shard_size)
                yield shard, (result.line, result.id, result.text)
        yield beam.pvalue.TaggedOutput("seen", (source.path, seen))


def _load_encoder(cfg: EmbeddingConfig):
    from tamis.embeddings.encoder import Encoder

    return Encoder(cfg)


class _EncoderHandle:
    """Loads the model once per worker process, or once per machine when shared."""

    def __init__(self, cfg: EmbeddingConfig):
        from apache_beam.utils.shared import Shared

        self.cfg = cfg
        self.tag = hashlib.sha1(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()
        # Shared() is keyed when built here, so every DoFn instance of a process finds the
        # same model after unpickling.
        self.shared = Shared()

    def acquire(self):
        if self.cfg.share_model_across_processes:
            from apache_beam.utils.multi_process_shared import MultiProcessShared

            cfg = self.cfg
            # One server process holds the model; workers call it through a proxy.
            return MultiProcessShared(
                lambda: _load_encoder(cfg), tag=f"tamis-encoder-{self.tag}", always_proxy=True
            ).acquire()
        return self.shared.acquire(lambda: _SharedEncoder(_load_encoder(self.cfg)), self.tag)


class _SharedEncoder:
    """Shared() needs a weak-referenceable object; this wraps the encoder."""

    def __init__(self, encoder):
        self.encoder = encoder

    def __getattr__(self, name):
        return getattr(self.encoder, name)


def _rejected_output(rejected: Rejected) -> beam.pvalue.TaggedOutput:
    return beam.pvalue.TaggedOutput("rejected", (rejected.source, rejected.line, rejected))


class EncodeShard(beam.DoFn):
    """Encode one shard's records and write part-NNNNN.parquet, unless it is already there.

    A vector with NaN or inf in it is not written: its record goes to the 'rejected' output
    (reason non_finite_embedding), and the part's stats keep it, so that a re-run that skips
    the part still reports it.
    """

    def __init__(
        self,
        cfg: EmbeddingConfig,
        output: str,
        show_progress: bool,
        progress_total: int | None,
        sources: list[str] | None = None,
    ):
        self.cfg = cfg
        self.output = output
        self.show_progress = show_progress
        self.progress_total = progress_total
        self.sources = sources or []
        self.handle = _EncoderHandle(cfg)
        self.embedded = Metrics.counter(METRICS_NAMESPACE, "embedded")
        self.tokens = Metrics.counter(METRICS_NAMESPACE, "tokens")
        self.truncated = Metrics.counter(METRICS_NAMESPACE, "truncated")
        self.written = Metrics.counter(METRICS_NAMESPACE, "shards_written")
        self.skipped = Metrics.counter(METRICS_NAMESPACE, "shards_skipped")
        self.replaced = Metrics.counter(METRICS_NAMESPACE, "shards_replaced")
        self.non_finite = Metrics.counter(METRICS_NAMESPACE, f"rejected_{NON_FINITE_EMBEDDING}")

    def setup(self):
        self.encoder = self.handle.acquire()
        self.bar = None
        self._shard_index: dict | None = None
        self._shard_keys_id = None

    def teardown(self):
        if getattr(self, "bar", None) is not None:
            self.bar.close()

    def _progress(self, n: int) -> None:
        if not self.show_progress:
            return
        if self.bar is None:
            from tamis.progress import progress_bar

            self.bar = progress_bar(self.progress_total, "embed", "text", smoothing=0.1)
        self.bar.update(n)

    def _source(self, key) -> str:
        file_index = key[0]
        return self.sources[file_index] if file_index < len(self.sources) else str(file_index)

    def process(self, element, shard_keys: list):
        key, items = element
        if self._shard_keys_id != id(shard_keys):
            self._shard_index = {k: i for i, k in enumerate(sorted(shard_keys))}
            self._shard_keys_id = id(shard_keys)
        index = self._shard_index[key]
        path = part_path(self.output, index)
        items = sorted(items)  # by input line: shards are in file order
        done, problem = finished_shard(path, [line for line, _, _ in items])
        if done is not None:
            self.skipped.inc()
            self._progress(len(items))
            for dead in done.get("rejected", []):
                yield _rejected_output(Rejected(**dead))
            yield {**done, "skipped": True}
            return
        if problem is not None:
            log.warning("%s: %s; embedding its shard again", path, problem)
            self.replaced.inc()
        started = time.perf_counter()
        texts = [text for _, _, text in items]
        if self.cfg.share_model_across_processes:
            # The model lives in another process: a callback cannot cross the proxy.
            encoded = self.encoder.encode(texts)
            self._progress(len(texts))
        else:
            encoded = self.encoder.encode(texts, progress=self._progress)
        seconds = time.perf_counter() - started
        finite = np.isfinite(encoded.embeddings).all(axis=1)
        source = self._source(key)
        dead = []
        for i in np.flatnonzero(~finite):
            bad = int((~np.isfinite(encoded.embeddings[i])).sum())
            line, rid, _ = items[i]
            dead.append(
                Rejected(
                    source,
                    line,
                    NON_FINITE_EMBEDDING,
                    f"the encoder gave a vector with {bad} NaN/inf values of "
                    f"{encoded.embeddings.shape[1]}",
                    rid,
                )
            )
        kept = [item for item, ok in zip(items, finite, strict=True) if ok]
        n_tokens = encoded.n_tokens[finite]
        model = self.encoder.describe()
        stats = {
            "part": index,
            "source_file_index": key[0],
            "first_line": items[0][0],
            "last_line": items[-1][0],
            "records": len(kept),
            "tokens": int(n_tokens.sum()),
            "truncated": int(encoded.truncated[finite].sum()),
            "encode_seconds": round(seconds, 4),
            "model_load_seconds": model.pop("load_seconds"),
            "model": model,
            "rejected": [asdict(r) for r in dead],
            "replaced": problem,
        }
        table = shard_table(
            [rid for _, rid, _ in kept], encoded.embeddings[finite], n_tokens, stats
        )
        atomic_write(path, shard_parquet_bytes(table))
        self.embedded.inc(len(kept))
        self.tokens.inc(stats["tokens"])
        self.truncated.inc(stats["truncated"])
        self.written.inc()
        self.non_finite.inc(len(dead))
        for rejected in dead:
            yield _rejected_output(rejected)
        yield {**stats, "skipped": False}


# ---------------------------------------------------------------------------------------------
# Planning, building and running


@dataclass
class EmbedPlan:
    config: Config
    inputs: list[InputFile]
    output: str
    # What determines the shards' content: inputs, pool reading and embedding settings.
    job: dict
    fingerprint: str

    def job_record(self) -> dict:
        """What _tamis_job.json holds: the fingerprint and what it was computed from."""
        return {"fingerprint": self.fingerprint, **self.job}


def plan_embed(config: Config) -> EmbedPlan:
    pool = require(config.pool, "pool")
    output = require(config.embedding.output, "embedding.output")
    # Each input is hashed once (the content, not size and mtime: an edit of the same size
    # with its mtime put back must not reuse the old shards).
    inputs = [replace(i, digest=content_digest(i)) for i in resolve_inputs(pool.path, pool.format)]
    job = {
        "inputs": [{"path": i.path, "format": i.format, "digest": i.digest} for i in inputs],
        "pool": {k: v for k, v in asdict(pool).items() if k != "strict"},
        "embedding": {
            k: v for k, v in asdict(config.embedding).items() if k not in _NON_FINGERPRINT_KEYS
        },
    }
    fingerprint = hashlib.sha256(json.dumps(job, sort_keys=True).encode()).hexdigest()[:20]
    return EmbedPlan(config, inputs, output, job, fingerprint)


def build_embed(
    pipeline: beam.Pipeline,
    plan: EmbedPlan,
    show_progress: bool = False,
    progress_total: int | None = None,
) -> None:
    """Add the embed transforms to `pipeline` (its outputs are files)."""
    cfg = plan.config
    emb = cfg.embedding
    read = (
        pipeline
        | "ListInputs" >> beam.Create(list(enumerate(plan.inputs)))
        # One file per element: spread files over workers before reading them.
        | "SpreadInputs" >> beam.Reshuffle()
        | "ReadAndValidate"
        >> beam.ParDo(ReadPool(cfg.pool, emb, emb.shard_size)).with_outputs(
            "rejected", "blank", "seen", main="records"
        )
    )
    records = read.records
    shard_keys = (
        records
        | "ShardKeys" >> beam.Keys()
        | "DistinctShards" >> beam.Distinct()
        | "AllShardKeys" >> beam.combiners.ToList()
    )
    duplicates = (
        records
        | "Ids" >> beam.Map(lambda kv: (kv[1][1], 1))
        | "CountIds" >> beam.CombinePerKey(sum)
        | "Repeated" >> beam.Filter(lambda kv: kv[1] > 1)
    )
    encoded = (
        records
        | "GroupShards" >> beam.GroupByKey()
        | "EncodeAndWrite"
        >> beam.ParDo(
            EncodeShard(
                emb, plan.output, show_progress, progress_total, [i.path for i in plan.inputs]
            ),
            shard_keys=beam.pvalue.AsSingleton(shard_keys),
        ).with_outputs("rejected", main="stats")
    )
    rejected = (read.rejected, encoded.rejected) | "AllRejected" >> beam.Flatten()
    _ = (
        encoded.stats
        | "AllShardStats" >> beam.combiners.ToList()
        | "WriteManifest"
        >> beam.Map(
            finalize,
            plan=plan,
            rejected=beam.pvalue.AsList(rejected),
            seen=beam.pvalue.AsList(read.seen),
            blank_lines=beam.pvalue.AsSingleton(
                read.blank | "CountBlank" >> beam.combiners.Count.Globally()
            ),
            duplicates=beam.pvalue.AsList(duplicates),
        )
    )


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {
        "tamis": tamis.__version__,
        "python": platform.python_version(),
        "apache_beam": beam.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pyarrow": pa.__version__,
    }


def finalize(
    stats: list[dict],
    plan: EmbedPlan,
    rejected: list,
    seen: list,
    blank_lines: int,
    duplicates: list,
) -> dict:
    """Write rejected.jsonl and manifest.json once every shard is written; check the counts."""
    rejected_sorted = [r for _, _, r in sorted(rejected, key=lambda t: (t[0], t[1]))]
    write_jsonl_atomic(
        FileSystems.join(plan.output, REJECTED), [r.to_json() for r in rejected_sorted]
    )
    stats = sorted(stats, key=lambda s: s["part"])
    records = sum(n for _, n in seen)
    embedded = sum(s["records"] for s in stats)
    counts = {
        "records": records,
        "embedded": embedded,
        "rejected": len(rejected_sorted),
        "rejected_by_reason": dict(sorted(Counter(r.reason for r in rejected_sorted).items())),
        "blank_lines": blank_lines,
        "tokens": sum(s["tokens"] for s in stats),
        "truncated": sum(s["truncated"] for s in stats),
        "shards": len(stats),
        "shards_skipped": sum(1 for s in stats if s["skipped"]),
        # Parts found damaged (or holding other lines) on a re-run and embedded again.
        "shards_replaced": sum(1 for s in stats if not s["skipped"] and s.get("replaced")),
        "duplicate_ids": len(duplicates),
    }
    if records != embedded + len(rejected_sorted):
        raise RuntimeError(
            f"record counts do not add up: {records} read, {embedded} embedded, "
            f"{len(rejected_sorted)} rejected"
        )
    written = [s for s in stats if not s["skipped"]]
    model = stats[0]["model"] if stats else {"model": plan.config.embedding.model}
    manifest = {
        "stage": "embed",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fingerprint": plan.fingerprint,
        "config": plan.config.to_dict(),
        "inputs": [asdict(i) for i in plan.inputs],
        "model": model,
        "counts": counts,
        "duplicate_id_examples": sorted(rid for rid, _ in duplicates)[:20],
        "parts": [f"part-{s['part']:05d}.parquet" for s in stats],
        "seconds": {
            "encode": round(sum(s["encode_seconds"] for s in written), 3),
            "model_load": max((s["model_load_seconds"] for s in written), default=0.0),
        },
        "versions": versions(),
    }
    write_json_atomic(FileSystems.join(plan.output, MANIFEST), manifest)
    return manifest


def prepare_output(plan: EmbedPlan, overwrite: bool) -> None:
    """Check the output belongs to this job (or clear it with overwrite) and record the job."""
    output = plan.output
    make_output_dir(output, "embedding.output")  # a file in the way: ConfigError
    if not FileSystems.exists(output):
        FileSystems.mkdirs(output)
    job_path = FileSystems.join(output, JOB_FILE)
    existing = FileSystems.match([FileSystems.join(output, "*")])[0].metadata_list
    leftovers = [m.path for m in existing if ".tmp-" in m.path]
    if leftovers:  # temp files of an interrupted run: never complete, never read
        FileSystems.delete(leftovers)
    ours = [m.path for m in existing if m.path not in leftovers]
    if FileSystems.exists(job_path):
        try:
            previous = read_json(job_path)
            if not isinstance(previous, dict):
                raise ValueError(f"a JSON {type(previous).__name__}, not an object")
        except (ValueError, OSError) as err:
            if not overwrite:
                raise OutputConflictError(
                    f"{job_path}: unreadable ({err}), so the parts in {output} cannot be told "
                    "apart from another job's; pass --overwrite to embed afresh"
                ) from None
            previous = {}
        if previous.get("fingerprint") != plan.fingerprint and not overwrite:
            raise OutputConflictError(
                f"{output} holds embeddings of a different job (config or inputs changed: "
                f"fingerprint {previous.get('fingerprint')} != {plan.fingerprint}); choose "
                "another embedding.output or pass --overwrite"
            )
    elif any("part-" in p for p in ours) and not overwrite:
        raise OutputConflictError(
            f"{output} holds part files that tamis did not record; choose another "
            "embedding.output or pass --overwrite"
        )
    if overwrite:
        stale = [p for p in ours if "part-" in p or p.endswith((MANIFEST, REJECTED, JOB_FILE))]
        if stale:
            FileSystems.delete(stale)
    write_json_atomic(job_path, plan.job_record())


def run_embed(
    config: Config,
    beam_args: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    require_records: bool = False,
) -> dict | PipelineResult | None:
    """Run the embed pipeline and return its manifest.

    A dry run (``--dry_run=True``) returns Beam's PipelineResult, whose ``job`` holds the
    built job; a remote job whose manifest cannot be read here returns None. A pool of which
    no record was embedded (empty, blank, or every record rejected) is an InputError naming
    it with require_records (`tamis embed`), else a warning (query sets: their caller says
    what an empty one means).
    """
    plan = plan_embed(config)
    if config.runner.name != "dataflow":
        # Model problems (not found, embedding.layer out of range) before any work; on
        # Dataflow the model is the workers' business.
        from tamis.embeddings.encoder import check_model

        check_model(config.embedding)
    if config.pool.template == "chat":
        _check_chat_template(config.embedding)
    runner, options = make_runner(config.runner, beam_args)
    if options.view_as(TestOptions).dry_run:
        pipeline = beam.Pipeline(runner=runner, options=options)
        build_embed(pipeline, plan)
        return pipeline.run()
    if config.runner.name == "dataflow":
        _check_remote_paths(plan)
    prepare_output(plan, overwrite)
    local = runner is not None
    total = None
    if local and progress:
        total = sum(count_records(i) for i in plan.inputs)
        if config.runner.num_workers > 1:
            total = -(-total // config.runner.num_workers)  # each worker shows its share
    started = time.perf_counter()
    pipeline = beam.Pipeline(runner=runner, options=options)
    build_embed(pipeline, plan, progress, total)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as err:
        ours = pipeline_error(err)
        if ours is None:
            raise
        raise ours from None
    manifest_path = FileSystems.join(plan.output, MANIFEST)
    if not FileSystems.exists(manifest_path):
        return None
    manifest = read_json(manifest_path)
    if manifest["counts"]["embedded"] == 0:
        problem = _nothing_embedded(plan, manifest["counts"])
        if require_records:
            raise InputError(problem)
        log.warning("%s", problem)
    manifest["seconds"]["wall"] = round(time.perf_counter() - started, 3)
    write_json_atomic(manifest_path, manifest)
    return manifest


def _nothing_embedded(plan: EmbedPlan, counts: dict) -> str:
    paths = [i.path for i in plan.inputs]
    where = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    what = f"{counts['records']} records, {counts['blank_lines']} blank lines"
    if counts["rejected"]:
        reasons = ", ".join(f"{k} {v}" for k, v in counts["rejected_by_reason"].items())
        rejected = FileSystems.join(plan.output, REJECTED)
        what += f"; all rejected: {reasons}, see {rejected}"
    return f"{where}: no record of the pool could be embedded ({what})"


_WHILE_RUNNING = re.compile(r"(?:\s*\[while running '[^']*'\])+\s*$")


def pipeline_error(err: BaseException) -> Exception | None:
    """The tamis error a failed pipeline stands for (InputError, ConfigError, ...), with
    Beam's step annotations taken off; None for any other failure. Beam re-raises a worker's
    exception as the same type with " [while running '...']" appended, or as a RuntimeError
    whose message holds "module.TypeName: message" (worker processes). A strict-mode
    BadRecordError says so in its message, whichever way it came."""
    from tamis.embeddings.encoder import ModelLoadError

    kinds: dict[str, type[Exception]] = {
        "BadRecordError": BadRecordError,
        "InputError": InputError,
        "ConfigError": ConfigError,
        "ModelLoadError": ModelLoadError,
        "OutputConflictError": OutputConflictError,
    }
    found = None
    for kind in kinds.values():
        if isinstance(err, kind):
            found = kind, str(err)
            break
    else:
        for name, kind in kinds.items():
            messages = re.findall(rf"\b{name}: (.+)", str(err))
            if messages:
                found = kind, messages[-1]
                break
    if found is None:
        return None
    kind, message = found
    message = _WHILE_RUNNING.sub("", message).strip()
    if kind is BadRecordError:
        message = f"bad record (strict mode): {message}"
    return kind(message)


def _check_remote_paths(plan: EmbedPlan) -> None:
    """Dataflow workers cannot see the launcher's disk: inputs and output must be remote."""
    for key, path in [("embedding.output", plan.output)] + [
        ("pool.path", i.path) for i in plan.inputs
    ]:
        if "://" not in path:
            raise ConfigError(
                f"{key}: Dataflow workers cannot read the local path {path}; use a gs:// path"
            )


def _check_chat_template(cfg: EmbeddingConfig) -> None:
    from tamis.embeddings.encoder import load_tokenizer

    if not getattr(load_tokenizer(cfg), "chat_template", None):
        raise ConfigError(
            f"pool.template: 'chat' needs a chat template, and the tokenizer of "
            f"{cfg.model!r} has none; use 'plain' or 'tulu'"
        )
