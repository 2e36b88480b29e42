"""The select stage end to end: embeddings + query files -> subset dir that `datasets` loads."""

import json

import numpy as np
import pytest
import yaml

from conftest import write_jsonl
from tamis.cli import main as tamis_main
from tamis.config import ConfigError, config_from_dict
from tamis.pipelines.embed import run_embed
from tamis.pipelines.select import run_select


@pytest.fixture(scope="module")
def bbc_job(tmp_path_factory, bbc_records):
    """30 articles per topic as the pool (one duplicated), 3 held-out queries per task."""
    root = tmp_path_factory.mktemp("select")
    by_topic = {}
    for r in bbc_records:
        by_topic.setdefault(r["topic"], []).append(r)
    pool, queries = [], {}
    for topic, rows in sorted(by_topic.items()):
        queries[topic] = rows[:3]
        pool += [{"id": r["id"], "text": r["text"][:500], "topic": topic} for r in rows[3:33]]
    pool.append({**pool[0], "id": "copy-of-first"})  # an exact duplicate text
    write_jsonl(root / "pool.jsonl", pool)
    for topic in ("tech", "sports"):
        write_jsonl(root / f"q_{topic}.jsonl", [{"text": r["text"][:500]} for r in queries[topic]])
    data = {
        "pool": {"path": str(root / "pool.jsonl")},
        "embedding": {"output": str(root / "emb"), "max_length": 96},
        "queries": {
            "tech": {"path": str(root / "q_tech.jsonl")},
            "sports": {"path": str(root / "q_sports.jsonl")},
        },
        "selection": {
            "selector": "rds",
            "budget": 40,
            "join_records": True,
            "label_field": "topic",
            "output": str(root / "subset"),
        },
    }
    run_embed(config_from_dict(data), progress=False)
    return root, data


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def with_selection(data, **selection):
    return config_from_dict({**data, "selection": {**data["selection"], **selection}})


def test_subset_dir_loads_with_datasets_and_holds_joined_records(bbc_job):
    import datasets

    root, data = bbc_job
    manifest = run_select(config_from_dict(data))
    assert manifest["counts"]["selected"] == 40
    assert manifest["counts"]["per_task"] == {"tech": 20, "sports": 20}
    ds = datasets.load_dataset(
        "parquet", data_files=str(root / "subset" / "subset.parquet"), split="train"
    )
    assert len(ds) == 40
    for column in ["id", "rank", "score", "weight", "selector", "task", "text", "topic"]:
        assert column in ds.column_names
    assert ds["rank"] == list(range(40))
    assert ds["task"][:4] == ["tech", "sports", "tech", "sports"]  # round robin, task order
    pool = {r["id"]: r for r in read_jsonl(root / "pool.jsonl")}
    for row in ds:
        assert row["text"] == pool[row["id"]]["text"] and row["topic"] == pool[row["id"]]["topic"]
    jsonl = read_jsonl(root / "subset" / "subset.jsonl")
    assert [r["id"] for r in jsonl] == ds["id"]
    agreement = manifest["label_agreement"]
    # 30 articles per topic: random picks would be on topic 20% of the time.
    assert agreement["sports"]["on_label"] >= 18 and agreement["tech"]["on_label"] >= 10
    assert manifest["inputs"]["queries"]["tech"]["queries"] == 3


def test_subset_equals_the_pure_core_on_the_same_vectors(bbc_job):
    from tamis.embeddings.store import read_embeddings
    from tamis.selectors.rds import max_similarity_per_task, round_robin

    root, data = bbc_job
    run_select(config_from_dict(data))
    ids, pool = read_embeddings(str(root / "emb"))
    tasks = [read_embeddings(str(root / "subset" / "queries" / t))[1] for t in ("tech", "sports")]
    picks = round_robin(max_similarity_per_task([pool], tasks), 40)
    subset = [r["id"] for r in read_jsonl(root / "subset" / "subset.jsonl")]
    assert subset == [ids[i] for i in picks.index]


def test_deduplicate_removes_exact_copies_before_selecting(bbc_job):
    root, data = bbc_job
    config = with_selection(data, deduplicate=True, budget="100%", join_records=False)
    manifest = run_select(config, overwrite=True)  # the subset dir of the first test
    texts = [r["text"] for r in read_jsonl(root / "pool.jsonl")]
    # The BBC corpus itself repeats some articles, besides the copy added here.
    assert manifest["counts"]["excluded_duplicates"] == len(texts) - len(set(texts)) >= 1
    assert manifest["counts"]["selected"] == manifest["counts"]["candidates"] == len(set(texts))
    subset = [r["id"] for r in read_jsonl(root / "subset" / "subset.jsonl")]
    assert "copy-of-first" not in subset


def test_bad_selection_configs_fail_with_clear_messages(bbc_job, tmp_path):
    root, data = bbc_job
    data = {**data, "selection": {**data["selection"], "output": str(tmp_path / "subset")}}
    with pytest.raises(ConfigError, match="selection.budget: 500 is larger than the pool"):
        run_select(with_selection(data, budget=500))
    (tmp_path / "empty.jsonl").write_text("")
    empty = {**data, "queries": {"tech": {"path": str(tmp_path / "empty.jsonl")}}}
    with pytest.raises(ConfigError, match="queries.tech: no valid records"):
        run_select(config_from_dict(empty))
    # Query embeddings of another dimension (a fake 8-d embeddings dir).
    import pyarrow.parquet as pq

    from tamis.pipelines.embed import shard_table

    other = tmp_path / "q8"
    other.mkdir()
    table = shard_table(["q"], np.ones((1, 8), np.float32), np.ones(1, np.int32), {})
    pq.write_table(table, other / "part-00000.parquet")
    (other / "manifest.json").write_text(json.dumps({"model": {"dim": 8}}))
    mismatch = {**data, "queries": {"tech": {"embeddings": str(other)}}}
    with pytest.raises(ConfigError, match="queries.tech: query dimension 8 does not match"):
        run_select(config_from_dict(mismatch))
    missing = {**data, "embedding": {"output": str(tmp_path / "nothing")}}
    with pytest.raises(ConfigError, match="not a finished embeddings directory"):
        run_select(config_from_dict(missing))


def test_cli_run_refuses_an_unknown_selector_before_embedding(bbc_job, tmp_path, capsys):
    root, data = bbc_job
    job = {**data, "embedding": {"output": str(tmp_path / "emb")}}
    job["selection"] = {**data["selection"], "selector": "rdss"}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert tamis_main(["run", str(tmp_path / "job.yaml")]) == 2
    assert "selection.selector: unknown selector 'rdss'" in capsys.readouterr().err
    assert not (tmp_path / "emb").exists()


def test_cli_run_embeds_then_selects(bbc_job, tmp_path, capsys):
    root, data = bbc_job
    job = {**data, "selection": {**data["selection"], "output": str(tmp_path / "subset")}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert tamis_main(["run", str(tmp_path / "job.yaml"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "(1 already done)" in out  # embeddings reused
    assert "tech: 20 picks" in out and "on topic" in out
    assert (tmp_path / "subset" / "subset.parquet").exists()


def test_distributed_select_writes_the_local_subset(bbc_job, tmp_path):
    root, data = bbc_job
    local = run_select(with_selection(data, output=str(tmp_path / "local")))
    beam = run_select(with_selection(data, output=str(tmp_path / "beam"), distributed=True))
    assert beam["counts"] == local["counts"]
    subset = (tmp_path / "local" / "subset.jsonl").read_text()
    assert (tmp_path / "beam" / "subset.jsonl").read_text() == subset
    with pytest.raises(ConfigError, match="query_round_robin runs locally only"):
        run_select(
            with_selection(
                data,
                distributed=True,
                params={"query_round_robin": True},
                output=str(tmp_path / "x"),
            )
        )
    with pytest.raises(ConfigError, match="coreset does not run on Beam workers"):
        run_select(
            with_selection(data, distributed=True, selector="coreset", output=str(tmp_path / "y"))
        )


def test_coreset_over_the_pool_embeddings_equals_the_core(bbc_job, tmp_path, capsys):
    from tamis.embeddings.store import read_embeddings
    from tamis.selectors.kcenter import k_center_greedy

    root, data = bbc_job
    ids, vectors = read_embeddings(str(root / "emb"))
    labeled = ids[:3]
    (tmp_path / "labeled.txt").write_text("\n".join(labeled) + "\n")
    job = {
        **data,
        "selection": {
            "selector": "coreset",
            "budget": 12,
            "params": {"labeled": str(tmp_path / "labeled.txt")},
            "join_records": True,
            "output": str(tmp_path / "subset"),
        },
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert tamis_main(["select", str(tmp_path / "job.yaml")]) == 0
    assert "coverage radius (cosine)" in capsys.readouterr().out
    subset = read_jsonl(tmp_path / "subset" / "subset.jsonl")
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = k_center_greedy(unit, 12, [0, 1, 2], "cosine")
    assert [r["id"] for r in subset] == [ids[i] for i in expected.index]
    assert [r["coverage_radius"] for r in subset] == expected.radius.tolist()
    assert all("text" in r for r in subset) and not set(labeled) & {r["id"] for r in subset}
    manifest = json.loads((tmp_path / "subset" / "manifest.json").read_text())
    assert manifest["counts"]["labeled"] == 3
    assert manifest["counts"]["candidates"] == len(ids) - 3


def test_per_class_budget_needs_probabilities(bbc_job, tmp_path):
    root, data = bbc_job
    config = with_selection(
        data, selector="random", budget="per_class", params={}, output=str(tmp_path / "s")
    )
    with pytest.raises(ConfigError, match="per_class needs a selector over probabilities"):
        run_select(config)
