"""The distributed RDS+ (Beam workers score shards) gives the local selector's subset."""

import numpy as np
import pytest

from conftest import write_embeddings_dir
from tamis.config import RunnerConfig
from tamis.embeddings.store import read_ids
from tamis.selectors import make_selector
from tamis.selectors.base import SelectionInputs
from tamis.selectors.rds_beam import rds_on_beam


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    rng = np.random.default_rng(11)
    # Coarse values: many exact score ties, some across shard borders.
    vectors = np.round(rng.normal(size=(700, 6)), 1).astype(np.float32)
    tasks = [vectors[[1, 2]] + 0.05, np.round(rng.normal(size=(3, 6)), 1).astype(np.float32)]
    directory = write_embeddings_dir(tmp_path_factory.mktemp("pool") / "emb", vectors, 128)
    return directory, vectors, tasks


@pytest.mark.parametrize("multi_task", ["round_robin", "round_robin_balanced", "top"])
@pytest.mark.parametrize("with_exclusions", [False, True])
def test_beam_rds_equals_local(pool, tmp_path, multi_task, with_exclusions):
    directory, vectors, tasks = pool
    excluded = np.array([0, 5, 127, 128, 300]) if with_exclusions else None
    names = ["a", "b"]
    selector = make_selector("rds", {"multi_task": multi_task})
    inputs = SelectionInputs(
        ids=read_ids(directory),
        blocks=lambda: (vectors[i : i + 128] for i in range(0, len(vectors), 128)),
        dim=6,
        queries=dict(zip(names, tasks, strict=True)),
        excluded=excluded,
    )
    local = selector.select(inputs, 150, seed=0)
    picks = rds_on_beam(
        directory,
        tasks,
        "max",
        multi_task,
        150,
        str(tmp_path),
        RunnerConfig(),
        excluded=excluded,
    )
    distributed = selector.selection_from_picks(picks, inputs.ids, names)
    assert distributed.ids == local.ids
    assert distributed.columns == local.columns
    np.testing.assert_array_equal(distributed.score, local.score)


@pytest.mark.slow
def test_beam_rds_on_two_worker_processes(pool, tmp_path):
    directory, vectors, tasks = pool
    one = rds_on_beam(
        directory, tasks, "mean", "round_robin", 90, str(tmp_path / "1"), RunnerConfig()
    )
    two = rds_on_beam(
        directory,
        tasks,
        "mean",
        "round_robin",
        90,
        str(tmp_path / "2"),
        RunnerConfig(num_workers=2),
    )
    assert one.index.tolist() == two.index.tolist()
    assert one.task.tolist() == two.task.tolist()
