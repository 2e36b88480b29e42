"""The embeddings loader refuses NaN / infinite vectors, pool or queries, naming how many
and which (before: rds left such an item out or ranked it first; coreset picked it)."""

import numpy as np
import pytest

from conftest import write_embeddings_dir
from tamis.config import config_from_dict
from tamis.pipelines.select import run_select
from tamis.records import InputError


@pytest.fixture()
def dirs(tmp_path):
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(200, 8)).astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True)
    queries = pool[:3] + 0.01
    return tmp_path, pool, queries


def job(tmp_path, pool_dir, query_dir, selector="rds"):
    return config_from_dict({
        "embedding": {"output": str(pool_dir)},
        "queries": {"t": {"embeddings": str(query_dir)}},
        "selection": {"selector": selector, "budget": 10, "output": str(tmp_path / "out")},
    })  # fmt: skip


@pytest.mark.parametrize("selector", ["rds", "coreset", "random"])
def test_non_finite_pool_vectors_are_refused_with_count_and_ids(dirs, selector):
    tmp_path, pool, queries = dirs
    pool[[5, 150]] = np.nan  # in two different parts
    pool[151, 2] = np.inf
    pool_dir = write_embeddings_dir(tmp_path / "pool", pool, 64)
    query_dir = write_embeddings_dir(tmp_path / "q", queries, 64, ids=["q0", "q1", "q2"])
    config = job(tmp_path, pool_dir, query_dir, selector)
    if selector == "random":  # reads ids only: nothing to refuse
        assert run_select(config)["counts"]["selected"] == 10
        return
    message = r"embedding.output .*pool: 3 vectors hold NaN or infinite values \(ids 'item-5', " \
              r"'item-150', 'item-151'\)"  # fmt: skip
    with pytest.raises(InputError, match=message):
        run_select(config)


def test_non_finite_query_vectors_are_refused(dirs):
    tmp_path, pool, queries = dirs
    queries[1, 0] = np.nan
    pool_dir = write_embeddings_dir(tmp_path / "pool", pool, 64)
    query_dir = write_embeddings_dir(tmp_path / "q", queries, 64, ids=["q0", "q1", "q2"])
    with pytest.raises(InputError, match=r"queries.t \(.*q\): 1 vectors hold NaN .*\(ids 'q1'\)"):
        run_select(job(tmp_path, pool_dir, query_dir))
