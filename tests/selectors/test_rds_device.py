"""RDS+ scoring on a torch device: torch on the CPU gives numpy's picks (float32), bfloat16
and float16 stay close, and device / precision errors name their key."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import write_embeddings_dir
from tamis.config import ConfigError, RunnerConfig
from tamis.device import DeviceError
from tamis.pipelines.embed import pipeline_error
from tamis.selectors import make_selector
from tamis.selectors.base import BeamJob, SelectionInputs
from tamis.selectors.rds_beam import rds_on_beam
from tamis.selectors.rds_core import max_similarity_per_task, round_robin, top_per_query

HAS_CUDA = torch.cuda.is_available()
DIM = 16
BLOCK = 64


def normalised(rng, n, d=DIM):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_tasks(rng, n_tasks):
    """Tasks of 2..4 queries, each near its own direction (so their lists overlap little)."""
    centres = normalised(rng, n_tasks)
    return [normalised(rng, 2 + t % 3) * 0.5 + centres[t] for t in range(n_tasks)]


@pytest.fixture(scope="module")
def pool():
    return normalised(np.random.default_rng(21), 600)


def blocks_of(pool, block=BLOCK):
    return lambda: (pool[i : i + block] for i in range(0, len(pool), block))


def inputs_for(pool, tasks, excluded=None, origin=None, block=BLOCK):
    return SelectionInputs(
        ids=[f"p{i}" for i in range(len(pool))],
        blocks=blocks_of(pool, block),
        dim=pool.shape[1],
        queries={f"t{i}": q for i, q in enumerate(tasks)},
        excluded=excluded,
        origin=origin or {},
    )


def assert_same_selection(got, want, atol=1e-6):
    assert got.ids == want.ids
    assert got.columns.keys() == want.columns.keys()
    for name, column in want.columns.items():
        np.testing.assert_array_equal(np.asarray(got.columns[name]), np.asarray(column))
    np.testing.assert_allclose(got.score, want.score, rtol=0, atol=atol)


@pytest.mark.parametrize("aggregation", ["max", "mean"])
@pytest.mark.parametrize("n_tasks", [1, 3])
def test_torch_scores_equal_numpy(pool, aggregation, n_tasks):
    tasks = make_tasks(np.random.default_rng(n_tasks), n_tasks)
    blocks = [*blocks_of(pool)(), pool[:0]]  # and an empty block (a part with no rows)
    numpy_scores = max_similarity_per_task(blocks, tasks, aggregation)
    torch_scores = max_similarity_per_task(
        blocks, tasks, aggregation, device="torch", precision="float32"
    )
    assert torch_scores.dtype == np.float32 and torch_scores.shape == (n_tasks, len(pool))
    np.testing.assert_allclose(torch_scores, numpy_scores, rtol=0, atol=1e-6)


@pytest.mark.parametrize("multi_task", ["round_robin", "round_robin_balanced", "top"])
@pytest.mark.parametrize("aggregation", ["max", "mean"])
@pytest.mark.parametrize("n_tasks", [1, 3])
@pytest.mark.parametrize("with_exclusions", [False, True])
def test_torch_selector_equals_numpy(pool, multi_task, aggregation, n_tasks, with_exclusions):
    tasks = make_tasks(np.random.default_rng(10 + n_tasks), n_tasks)
    excluded = np.array([0, 3, 63, 64, 200, 599]) if with_exclusions else None
    params = {"multi_task": multi_task, "aggregation": aggregation}
    inputs = inputs_for(pool, tasks, excluded)
    numpy_sel = make_selector("rds", {**params, "device": "cpu"}).select(inputs, 120, seed=0)
    torch_sel = make_selector("rds", {**params, "device": "torch"}).select(inputs, 120, seed=0)
    assert_same_selection(torch_sel, numpy_sel)
    assert len(torch_sel) == 120
    if excluded is not None:
        assert not set(torch_sel.index.tolist()) & set(excluded.tolist())
    assert numpy_sel.info["device"] == "cpu" and torch_sel.info["device"] == "torch"
    assert torch_sel.info["precision"] == "float32"


@pytest.mark.parametrize("excluded", [None, np.array([1, 2, 64, 300])])
def test_torch_query_round_robin_equals_numpy(pool, excluded):
    tasks = make_tasks(np.random.default_rng(5), 2)
    inputs = inputs_for(pool, tasks, excluded)
    params = {"query_round_robin": True}
    numpy_sel = make_selector("rds", {**params, "device": "cpu"}).select(inputs, 90, seed=0)
    torch_sel = make_selector("rds", {**params, "device": "torch"}).select(inputs, 90, seed=0)
    assert_same_selection(torch_sel, numpy_sel)
    assert torch_sel.info["device"] == "torch"
    index, score = top_per_query(blocks_of(pool)(), tasks[0], 30, excluded, device="torch")
    want_index, want_score = top_per_query(blocks_of(pool)(), tasks[0], 30, excluded)
    np.testing.assert_array_equal(index, want_index)
    np.testing.assert_allclose(score, want_score, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def pool_dir(pool, tmp_path_factory):
    return write_embeddings_dir(tmp_path_factory.mktemp("pool") / "emb", pool, 128)


@pytest.mark.parametrize(("multi_task", "with_exclusions"), [("round_robin", True), ("top", False)])
def test_beam_workers_score_on_torch(pool, pool_dir, tmp_path, multi_task, with_exclusions):
    """The distributed path with device: torch gives the local numpy picks, and says where
    the workers scored."""
    tasks = make_tasks(np.random.default_rng(7), 2)
    excluded = np.array([0, 5, 127, 128, 300]) if with_exclusions else None
    inputs = inputs_for(pool, tasks, excluded, {"embeddings": {"path": pool_dir}})
    params = {"multi_task": multi_task}
    local = make_selector("rds", {**params, "device": "cpu"}).select(inputs, 100, seed=0)
    selector = make_selector("rds", {**params, "device": "torch"})
    job = BeamJob(RunnerConfig(), None, str(tmp_path))
    distributed = selector.select_distributed(inputs, 100, 0, job)
    assert_same_selection(distributed, local)
    assert distributed.info["device"] == "torch"
    assert distributed.info["precision"] == "float32"


def test_beam_worker_without_cuda_names_the_key(pool_dir, tmp_path):
    if HAS_CUDA:
        pytest.skip("this machine has a CUDA GPU")
    tasks = make_tasks(np.random.default_rng(7), 1)
    with pytest.raises(Exception) as failed:  # noqa: PT011 (Beam wraps the worker's error)
        rds_on_beam(
            pool_dir, tasks, "max", "round_robin", 10, str(tmp_path), RunnerConfig(), device="cuda"
        )
    err = pipeline_error(failed.value)
    assert isinstance(err, ConfigError)
    assert str(err) == "selection.params.device: rds scoring: device 'cuda': torch sees no CUDA GPU"


def overlap(a, b):
    return len(set(a.tolist()) & set(b.tolist())) / len(a)


@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_bfloat16_stays_close_to_float32(aggregation):
    """bfloat16 rounds the inputs and the GEMM's output (8 significant bits): each score
    moves by at most about 2^-8 for unit vectors, and near-ties can swap, so most picks
    stay (0.99 to 1.0 of 300 round-robin picks at seeds 0-5; asserted loosely)."""
    rng = np.random.default_rng(3)
    pool = normalised(rng, 3000)
    tasks = make_tasks(rng, 3)
    blocks = lambda: (pool[i : i + 500] for i in range(0, len(pool), 500))  # noqa: E731
    exact = max_similarity_per_task(blocks(), tasks, aggregation)
    low = max_similarity_per_task(
        blocks(), tasks, aggregation, device="torch", precision="bfloat16"
    )
    assert low.dtype == np.float32
    np.testing.assert_allclose(low, exact, rtol=0, atol=2.0**-7)
    assert np.abs(low - exact).max() > 0  # it really ran in bfloat16
    assert overlap(round_robin(low, 300).index, round_robin(exact, 300).index) >= 0.9


def test_float16_on_cpu_runs_or_says_why():
    """torch 2.13 multiplies float16 on the CPU (not faster than float32 there); a torch
    that cannot gets a one-line DeviceError naming the precision."""
    rng = np.random.default_rng(4)
    pool = normalised(rng, 800)
    tasks = make_tasks(rng, 2)
    try:
        low = max_similarity_per_task([pool], tasks, device="torch", precision="float16")
    except DeviceError as err:
        assert "precision 'float16'" in str(err) and "\n" not in str(err)
        return
    np.testing.assert_allclose(low, max_similarity_per_task([pool], tasks), rtol=0, atol=2.0**-9)


def test_auto_with_low_precision_uses_torch_without_a_gpu(pool):
    tasks = make_tasks(np.random.default_rng(8), 2)
    selector = make_selector("rds", {"precision": "bfloat16"})
    selector.validate()
    selection = selector.select(inputs_for(pool, tasks), 50, seed=0)
    assert selection.info == {
        "picks_per_task": selection.info["picks_per_task"],
        "device": "cuda" if HAS_CUDA else "torch",
        "precision": "bfloat16",
    }
    default = make_selector("rds", {}).select(inputs_for(pool, tasks), 50, seed=0)
    assert default.info["device"] == ("cuda" if HAS_CUDA else "cpu")


def test_config_errors_name_the_key(pool):
    with pytest.raises(ConfigError, match=r"^selection\.params\.precision: expected one of"):
        make_selector("rds", {"precision": "float64"})
    with pytest.raises(
        ConfigError,
        match=r"^selection\.params\.device: device 'gpu': expected auto, cpu, torch or cuda\[:N\]$",
    ):
        make_selector("rds", {"device": "gpu"}).validate()
    with pytest.raises(ConfigError, match=r"^selection\.params\.precision: .*needs a torch device"):
        make_selector("rds", {"device": "cpu", "precision": "bfloat16"}).validate()
    with pytest.raises(ValueError, match="precision 'float64': expected one of"):
        max_similarity_per_task([pool], [pool[:2]], precision="float64")


def test_cuda_without_a_gpu_is_one_line(pool):
    if HAS_CUDA:
        pytest.skip("this machine has a CUDA GPU")
    selector = make_selector("rds", {"device": "cuda:0"})
    selector.validate()  # the name is fine: a Beam worker may have the GPU
    with pytest.raises(ConfigError) as err:
        selector.select(inputs_for(pool, [pool[:2]]), 10, seed=0)
    assert str(err.value) == (
        "selection.params.device: rds scoring: device 'cuda:0': torch sees no CUDA GPU"
    )
    with pytest.raises(DeviceError, match="torch sees no CUDA GPU"):
        max_similarity_per_task([pool], [pool[:2]], device="cuda")


def test_importing_the_core_does_not_import_torch():
    code = (
        "import sys, tamis.selectors.rds, tamis.selectors.rds_core, tamis.device; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def gpu_case():
    """A pool big enough for the GPU's GEMMs to split work their own way."""
    rng = np.random.default_rng(9)
    return normalised(rng, 20_000, 64), [normalised(rng, 8, 64) for _ in range(3)]


@pytest.mark.gpu
@pytest.mark.parametrize("multi_task", ["round_robin", "top"])
def test_cuda_float32_equals_numpy(multi_task):
    pool, tasks = gpu_case()
    inputs = inputs_for(pool, tasks, block=4096)
    params = {"multi_task": multi_task}
    cpu = make_selector("rds", {**params, "device": "cpu"}).select(inputs, 500, seed=0)
    gpu = make_selector("rds", {**params, "device": "cuda"}).select(inputs, 500, seed=0)
    assert_same_selection(gpu, cpu)
    assert gpu.info["device"] == "cuda"


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_cuda_low_precision_stays_close(precision):
    pool, tasks = gpu_case()
    exact = max_similarity_per_task([pool], tasks)
    low = max_similarity_per_task([pool], tasks, device="cuda", precision=precision)
    np.testing.assert_allclose(low, exact, rtol=0, atol=2.0**-7)
    assert overlap(round_robin(low, 1000).index, round_robin(exact, 1000).index) >= 0.9
