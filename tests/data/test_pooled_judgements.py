"""The judged BBC pool of the CET example: pooling by two weak retrievers, qrels inside it."""

import numpy as np
import pytest

from tamis.data.pooled_judgements import judged_pool, top_ranked


def test_top_ranked_leaves_the_query_out_and_sorts():
    similarity = np.array([[9.0, 1.0, 3.0, 2.0], [1.0, 9.0, 0.0, 5.0], [3, 0, 9, 4], [2, 5, 4, 9]])
    assert top_ranked(similarity, 2).tolist() == [[2, 3], [3, 0], [3, 0], [1, 2]]


def test_qrels_are_the_judged_pairs_of_the_same_topic():
    ids = ["a", "b", "c", "d", "e"]
    topics = ["x", "x", "y", "x", "y"]
    rankings = {
        "one": np.array([[1, 2, 3], [0, 4, 2], [4, 0, 1], [2, 0, 1], [2, 3, 0]]),
        "two": np.array([[3, 4, 1], [2, 3, 0], [0, 1, 3], [1, 4, 2], [0, 1, 2]]),
    }
    provenance, qrels, stats = judged_pool(ids, topics, rankings, judged_depth=1)
    assert provenance.num_rows == 2 * 5 * 3
    assert provenance.column("rank").to_pylist()[:3] == [1, 2, 3]
    # Judged: each retriever's top 1. a: b (x, relevant), d (x); b: a, c (y); c: e, a; ...
    query_ids, doc_ids = qrels.column("query_id").to_pylist(), qrels.column("doc_id").to_pylist()
    pairs = set(zip(query_ids, doc_ids, strict=True))
    assert pairs == {("a", "b"), ("a", "d"), ("b", "a"), ("c", "e"), ("d", "b"), ("e", "c")}
    assert stats["qrels"] == 6 and stats["queries"] == 5


@pytest.mark.slow
def test_worked_example_on_a_bbc_sample_finds_false_negatives(tmp_path, bbc_records):
    """Real data: 60 articles per topic, embedded with the default encoder; CET against the
    naive choice (the top unlabelled candidates are negatives)."""
    import json

    import pyarrow.parquet as pq

    from tamis.config import config_from_dict
    from tamis.data.pooled_judgements import write_judged_pool
    from tamis.pipelines.embed import run_embed
    from tamis.pipelines.select import run_select

    by_topic: dict[str, list] = {}
    for record in bbc_records:
        by_topic.setdefault(record["topic"], []).append(record)
    sample = [r for rows in by_topic.values() for r in rows[:60]]
    pool = tmp_path / "bbc.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in sample))
    embeddings = str(tmp_path / "emb")
    config = {
        "pool": {"path": str(pool)},
        "embedding": {"output": embeddings, "max_length": 128},
        # The same articles as queries, embedded like the corpus (their own hits dropped).
        "queries": {"articles": {"path": str(pool)}},
        "selection": {
            "selector": "cet",
            "output": str(tmp_path / "out"),
            "params": {
                "qrels": str(tmp_path / "judged" / "qrels.parquet"),
                "provenance": str(tmp_path / "judged" / "provenance.parquet"),
                "judged_depth": 3,
                "k": 30,
            },
        },
    }
    run_embed(config_from_dict(config), progress=False)
    write_judged_pool(tmp_path / "judged", embeddings, judged_depth=3)
    manifest = run_select(config_from_dict(config))
    topic = {r["id"]: r["topic"] for r in sample}
    table = pq.read_table(tmp_path / "out" / "candidates.parquet").to_pandas()
    table["false_negative"] = ~table.labelled & (
        table.query_id.map(topic) == table.doc_id.map(topic)
    )
    unlabelled = table[~table.labelled]
    truth = unlabelled.false_negative
    # Calibrated in aggregate: the expected count is near the true one (naive: 0).
    expected = manifest["info"]["expected_false_negatives"]
    assert abs(expected - truth.sum()) < 0.15 * truth.sum()
    # The kept negatives hold far fewer same-topic articles than the naive top 8.
    kept = pq.read_table(tmp_path / "out" / "subset.parquet").to_pandas()
    kept_wrong = (kept.query_id.map(topic) == kept.id.map(topic)).mean()
    naive = unlabelled.sort_values(["query_id", "rank"]).groupby("query_id").head(8)
    assert kept_wrong < naive.false_negative.mean() / 3
    print(
        f"BBC sample: E[FN] {expected:.0f} vs {truth.sum()}; kept negatives same-topic "
        f"{kept_wrong:.3f} vs naive {naive.false_negative.mean():.3f}"
    )
