"""Helpers shared by the bench scripts: timing, peak memory, thread info, the results file.

Not a bench itself: the scripts import it as ``from benchlib import ...`` (they run as
``python bench/NAME.py`` from the repository root, which puts ``bench/`` on ``sys.path``).
Every results file is ``bench/results/<name>.json`` with the keys ``bench``, ``date``,
``machine``, then the bench's ``params``, ``results``, ``ratios``, ``targets`` and ``met``.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Environment variables that size the BLAS / OpenMP thread pools of a child process.
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def peak_rss_mib() -> float:
    """This process's peak RSS in MiB: VmHWM on Linux, else ru_maxrss.

    On Linux ru_maxrss survives exec: a child started with fork / vfork + exec starts with
    its parent's peak, which would hide a small side. VmHWM belongs to the process's own
    address space, so it starts afresh at exec.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20, 1)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds ``fn()`` took, and what it returned."""
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def med(values: list[float]) -> float:
    """Median, rounded to milliseconds."""
    return round(statistics.median(values), 3)


def timing_result(n: int, seconds: list[float], peak: float, baseline: float) -> dict[str, Any]:
    """What every side reports: median time, rate and memory above the interpreter."""
    return {
        "median_s": med(seconds),
        "items_per_s": round(n / statistics.median(seconds), 1),
        "peak_rss_mib": peak,
        "rss_baseline_mib": baseline,
        "rss_above_baseline_mib": round(peak - baseline, 1),
        "all_s": [round(s, 3) for s in seconds],
    }


def blas_info() -> list[dict[str, Any]]:
    """The thread pools loaded in this process (BLAS, OpenMP) and their sizes."""
    from threadpoolctl import threadpool_info

    keys = ("internal_api", "num_threads", "version", "prefix")
    return [{k: lib.get(k) for k in keys} for lib in threadpool_info()]


def thread_env(threads: int) -> dict[str, str]:
    """This environment with every thread-pool variable set to ``threads`` (for a child)."""
    return dict(os.environ, **{var: str(threads) for var in THREAD_VARS})


def machine() -> dict[str, Any]:
    """CPU count and the CUDA GPU's name (None without one)."""
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:  # torch is optional for the benches that do not need it
        pass
    return {"cpus": os.cpu_count(), "gpu": gpu}


def ratio(a: float | None, b: float | None, digits: int = 1) -> float | None:
    """a / b rounded to `digits` decimals, or None when either side did not run."""
    return round(a / b, digits) if a is not None and b else None


def chosen_sides(parser: Any, requested: str, order: tuple[str, ...]) -> list[str]:
    """The comma-separated `--sides` asked for, in the bench's order; an unknown name is a
    usage error naming the known ones."""
    asked = requested.split(",")
    unknown = set(asked) - set(order)
    if unknown:
        parser.error(f"unknown sides {sorted(unknown)}; known: {', '.join(order)}")
    return [side for side in order if side in asked]


def write_side_result(name: str, work: Path, result: dict[str, Any]) -> None:
    """Child process of a side: add the thread pools it ran with, write WORK/NAME.json."""
    result["threads"] = blas_info()
    (work / f"{name}.json").write_text(json.dumps(result), encoding="utf-8")


def run_side_process(
    script: str, name: str, work: Path, flags: dict[str, Any], env: dict[str, str]
) -> tuple[dict[str, Any], tuple[float, ...], tuple[float, ...]]:
    """Run ``script --side NAME --work WORK --flag value ...`` in a fresh interpreter (so its
    peak RSS is its own); return the result it wrote and the load averages around it."""
    command = [sys.executable, script, "--side", name, "--work", str(work)]
    for flag, value in flags.items():
        command += [f"--{flag.replace('_', '-')}", str(value)]
    before = os.getloadavg()
    subprocess.run(command, env=env, check=True)
    after = os.getloadavg()
    result = json.loads((work / f"{name}.json").read_text(encoding="utf-8"))
    return result, before, after


def write_results(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    """Write ``bench``, ``date`` (UTC), ``machine`` and then ``payload`` as indented JSON to
    ``out`` (default ``bench/results/<name>.json``); the path written."""
    path = out or RESULTS_DIR / f"{name}.json"
    report = {
        "bench": name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        **payload,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path
