"""`tamis select` with the cet selector: mining, labels, outputs that add up, Beam, errors."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import write_embeddings_dir, write_jsonl
from tamis.cli import main
from tamis.config import ConfigError, config_from_dict
from tamis.pipelines.select import run_select
from tamis.records import InputError

N_DOCS, N_QUERIES, DIM, K = 300, 40, 8, 20


@pytest.fixture(scope="module")
def retrieval(tmp_path_factory):
    """Corpus and query vectors, qrels (3 of each query's top 30), one weak retriever's
    top-10 lists as provenance."""
    root = tmp_path_factory.mktemp("cet")
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(N_DOCS, DIM)).astype(np.float32)
    queries = rng.normal(size=(N_QUERIES, DIM)).astype(np.float32)
    doc_ids = [f"doc-{i}" for i in range(N_DOCS)]
    query_ids = [f"q-{i}" for i in range(N_QUERIES)]
    corpus_dir = write_embeddings_dir(root / "corpus", corpus, 128, doc_ids)
    query_dir = write_embeddings_dir(root / "queries", queries, 16, query_ids)
    scores = queries.astype(np.float64) @ corpus.T
    top = np.argsort(-scores, axis=1)
    qrels = [
        {"query_id": f"q-{q}", "doc_id": f"doc-{d}"}
        for q in range(N_QUERIES)
        for d in top[q, [0, 3, 7, 25]]
    ]
    provenance = []
    for q in range(N_QUERIES):
        weak = scores[q] + rng.normal(size=N_DOCS)
        for r, d in enumerate(np.argsort(-weak)[:10]):
            provenance.append(
                {"query_id": f"q-{q}", "doc_id": f"doc-{d}", "retriever": "weak", "rank": r + 1}
            )
    return {
        "root": root,
        "corpus": corpus_dir,
        "queries": query_dir,
        "scores": scores,
        "qrels": str(write_jsonl(root / "qrels.jsonl", qrels)),
        "provenance": str(write_jsonl(root / "provenance.jsonl", provenance)),
        "qrel_pairs": {(r["query_id"], r["doc_id"]) for r in qrels},
    }


def cet_config(data, output, distributed=False, queries=None, **params):
    return config_from_dict(
        {
            "embedding": {"output": data["corpus"]},
            "queries": {"train": {"embeddings": queries or data["queries"]}},
            "selection": {
                "selector": "cet",
                "output": str(output),
                "distributed": distributed,
                "params": {
                    "qrels": data["qrels"],
                    "provenance": data["provenance"],
                    "k": K,
                    **params,
                },
            },
        }
    )


def test_candidates_are_the_exact_top_k_with_labels_and_outputs_that_add_up(retrieval, tmp_path):
    manifest = run_select(cet_config(retrieval, tmp_path / "out", negatives_per_query=5))
    table = pq.read_table(tmp_path / "out" / "candidates.parquet").to_pandas()
    assert len(table) == N_QUERIES * K
    for q in range(N_QUERIES):
        rows = table[table.query_id == f"q-{q}"]
        expected = [f"doc-{d}" for d in np.argsort(-retrieval["scores"][q])[:K]]
        assert rows.doc_id.tolist() == expected
        assert rows["rank"].tolist() == list(range(1, K + 1))
        np.testing.assert_allclose(rows.score, np.sort(retrieval["scores"][q])[::-1][:K], rtol=1e-5)
    pairs = set(zip(table.query_id, table.doc_id, strict=True))
    labelled = set(zip(table.query_id[table.labelled], table.doc_id[table.labelled], strict=True))
    assert labelled == retrieval["qrel_pairs"] & pairs  # doc at top rank 26 is not mined
    assert len(labelled) == 3 * N_QUERIES
    assert (table.p_false_negative[table.labelled] == 0).all()
    np.testing.assert_allclose(
        table.negative_weight, np.where(table.labelled, 0, 1 - table.p_false_negative)
    )

    c = manifest["counts"]
    assert c["candidates"] == c["labelled_candidates"] + c["unlabelled_candidates"] == 800
    assert c["qrels"] == 4 * N_QUERIES and c["qrels_unknown_ids"] == 0
    assert manifest["info"]["selection_features"] == ["reciprocal_rank_0"]
    assert set(manifest["info"]["seconds"]) == {"mine", "estimate"}

    subset = pq.read_table(tmp_path / "out" / "subset.parquet").to_pandas()
    available = table[~table.labelled & ~table.exclude].groupby("query_id").size()
    assert c["kept_negatives"] == len(subset) == np.minimum(available, 5).sum()
    merged = subset.merge(table, left_on=["query_id", "id"], right_on=["query_id", "doc_id"])
    assert len(merged) == len(subset)
    assert not merged.labelled.any() and not merged.exclude.any()
    np.testing.assert_allclose(merged.weight, merged.negative_weight)
    assert (merged.retrieval_rank == merged["rank_y"]).all()

    review = pq.read_table(tmp_path / "out" / "review_queue.parquet").to_pandas()
    assert len(review) == c["review_queue"] == c["unlabelled_candidates"]  # < 1000
    assert (np.diff(review.p_false_negative) <= 0).all() and not review.labelled.any()
    lines = (tmp_path / "out" / "review_queue.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["doc_id"] == review.doc_id[0]


@pytest.mark.parametrize("workers", [1, 2])  # 2: FnApiRunner's multi-process mode
def test_beam_mining_equals_local(retrieval, tmp_path, workers):
    run_select(cet_config(retrieval, tmp_path / "local"))
    config = cet_config(retrieval, tmp_path / "beam", distributed=True)
    config.runner.num_workers = workers
    run_select(config)
    local = pq.read_table(tmp_path / "local" / "candidates.parquet")
    beam = pq.read_table(tmp_path / "beam" / "candidates.parquet")
    assert local.equals(beam)
    assert not (tmp_path / "beam" / "_mined").exists()  # intermediates are removed


def test_an_ivf_index_from_the_index_section_mines_the_same_candidates(retrieval, tmp_path):
    run_select(cet_config(retrieval, tmp_path / "flat"))
    config = cet_config(retrieval, tmp_path / "ivf")
    # Four lists, all visited: an approximate index that must find the exact top k.
    config.index.factory, config.index.nprobe, config.index.train_size = "IVF4,Flat", 4, 300
    manifest = run_select(config)
    assert manifest["info"]["index"] == {"factory": "IVF4,Flat", "device": "cpu", "nprobe": 4}
    flat = pq.read_table(tmp_path / "flat" / "candidates.parquet")
    ivf = pq.read_table(tmp_path / "ivf" / "candidates.parquet")
    assert flat.column("doc_id").equals(ivf.column("doc_id"))
    config.index.factory = "IVF9999,Flat"  # more lists than documents
    with pytest.raises(ConfigError, match="index: index factory 'IVF9999,Flat' could not be"):
        run_select(config, overwrite=True)


def test_queries_that_are_corpus_documents_do_not_mine_themselves(retrieval, tmp_path):
    # Every corpus document as a query (self-retrieval, as in the BBC check).
    qrels = [{"query_id": "doc-0", "doc_id": "doc-5"}, {"query_id": "doc-1", "doc_id": "doc-9"}]
    config = cet_config(
        retrieval,
        tmp_path / "out",
        queries=retrieval["corpus"],
        qrels=str(write_jsonl(tmp_path / "q.jsonl", qrels)),
        provenance=None,
    )
    manifest = run_select(config)
    table = pq.read_table(tmp_path / "out" / "candidates.parquet").to_pandas()
    assert len(table) == N_DOCS * K
    assert not (table.query_id == table.doc_id).any()
    assert manifest["info"]["constant_propensity"]


def test_graded_qrels_mark_judged_non_relevant_candidates(retrieval, tmp_path):
    top = np.argsort(-retrieval["scores"][0])
    graded = [
        {"query_id": "q-0", "doc_id": f"doc-{top[0]}", "relevance": 2},
        {"query_id": "q-0", "doc_id": f"doc-{top[1]}", "relevance": 0},
        {
            "query_id": "q-1",
            "doc_id": f"doc-{np.argsort(-retrieval['scores'][1])[0]}",
            "relevance": 1,
        },
    ]
    path = str(write_jsonl(tmp_path / "graded.jsonl", graded))
    run_select(cet_config(retrieval, tmp_path / "out", qrels=path))
    out = pq.read_table(tmp_path / "out" / "candidates.parquet").to_pandas()
    judged_negative = out[(out.query_id == "q-0") & (out.doc_id == f"doc-{top[1]}")]
    assert judged_negative.known_negative.all() and (judged_negative.p_false_negative == 0).all()
    assert out.labelled.sum() == 2


def test_bad_inputs_name_the_file_row_or_key(retrieval, tmp_path):
    def error(**params):
        with pytest.raises((InputError, ConfigError)) as caught:
            run_select(cet_config(retrieval, tmp_path / "out", **params))
        return str(caught.value)

    no_doc = str(write_jsonl(tmp_path / "a.jsonl", [{"query_id": "q-0", "document": "doc-1"}]))
    assert "has no 'doc_id' column" in error(qrels=no_doc) and no_doc in error(qrels=no_doc)
    null = str(
        write_jsonl(
            tmp_path / "b.jsonl",
            [{"query_id": "q-0", "doc_id": "doc-1"}, {"query_id": None, "doc_id": "doc-2"}],
        )
    )
    assert f"{null} row 2: query_id is null" in error(qrels=null)
    unknown = str(write_jsonl(tmp_path / "c.jsonl", [{"query_id": "x", "doc_id": "y"}]))
    assert "none of the 1 pairs" in error(qrels=unknown)
    bad_rank = str(
        write_jsonl(
            tmp_path / "d.jsonl",
            [
                {"query_id": "q-0", "doc_id": "doc-1", "retriever": "w", "rank": 1},
                {"query_id": "q-0", "doc_id": "doc-2", "retriever": "w", "rank": 0},
            ],
        )
    )
    assert f"{bad_rank} row 2: rank must be a whole number >= 1" in error(provenance=bad_rank)
    config = cet_config(retrieval, tmp_path / "out")
    config.selection.budget = 10
    with pytest.raises(ConfigError, match="selection.budget: cet keeps"):
        run_select(config)


def test_a_nan_or_infinite_corpus_vector_is_an_input_error_naming_count_and_ids(
    retrieval, tmp_path
):
    corpus = np.random.default_rng(1).normal(size=(N_DOCS, DIM)).astype(np.float32)
    corpus[[7, 150, 299]] = np.nan
    corpus[40, 3] = np.inf
    bad = write_embeddings_dir(tmp_path / "bad", corpus, 128, [f"doc-{i}" for i in range(N_DOCS)])
    for factory in ("Flat", "IVF4,Flat"):  # a NaN met when adding, or in the training sample
        config = cet_config(retrieval, tmp_path / factory)
        config.embedding.output = bad
        config.index.factory, config.index.train_size = factory, 300
        with pytest.raises(InputError) as caught:
            run_select(config)
        message = str(caught.value)
        assert f"embedding.output {bad}: 4 vectors hold NaN or infinite values" in message
        assert "ids 'doc-7', 'doc-40', 'doc-150', 'doc-299'" in message


def test_parquet_judgements_reach_arrow_as_a_path(retrieval, tmp_path, monkeypatch):
    """A Python file object handed to pq.read_table is released by an Arrow thread after the
    read; at interpreter exit (an input error right after the read) that aborted the process
    about 1 run in 5 (exit 134, "terminate called without an active exception"). Every
    Parquet read goes through records.parquet_source: a path, or Arrow-owned bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import tamis.inputs.retrieval as retrieval_module
    from tamis.records import parquet_source

    path = tmp_path / "qrels.parquet"
    pq.write_table(pa.table({"query_id": ["q-0"], "document": ["doc-1"]}), path)
    seen = []
    real = pq.read_table

    def read_table(source, *args, **kwargs):
        seen.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", read_table)
    with pytest.raises(InputError, match="has no 'doc_id' column"):
        retrieval_module.read_pair_table(str(path), "selection.params.qrels")
    assert len(seen) == 1 and isinstance(seen[0], str)  # local: Arrow opens the path
    assert parquet_source(f"file://{path}") == str(path)
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="damaged.parquet"):
        retrieval_module.read_pair_table(str(damaged), "selection.params.qrels")


def test_cli_prints_a_summary(retrieval, tmp_path, capsys):
    config = tmp_path / "cet.yaml"
    config.write_text(
        json.dumps(
            {
                "embedding": {"output": retrieval["corpus"]},
                "queries": {"train": {"embeddings": retrieval["queries"]}},
                "selection": {
                    "selector": "cet",
                    "output": str(tmp_path / "out"),
                    "params": {
                        "qrels": retrieval["qrels"],
                        "provenance": retrieval["provenance"],
                        "k": K,
                    },
                },
            }
        )
    )
    assert main(["select", str(config)]) == 0
    out = capsys.readouterr().out
    assert "cet (em): mined 800 candidates for 40 queries" in out
    assert "review_queue.parquet" in out
