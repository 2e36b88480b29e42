"""A judged pool for the BBC News articles, as TREC-style pooling would build one (the CET
worked example and its real-data check).

Every article is a query; the relevant documents are the other articles of its topic. Two
weak "pool-building" retrievers rank the corpus for each query: TF-IDF cosine and the
cosine of the first `truncated_dims` embedding dimensions. Only their top `judged_depth`
were judged, so the qrels hold the judged pairs of the query's topic, and every other
relevant article is unlabelled: the false negatives that CET should find. The provenance
table gives each retriever's ranked list (`query_id, doc_id, retriever, rank`) to a deeper
`list_depth`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tamis.config import ConfigError, make_output_dir
from tamis.records import InputError, write_parquet_atomic

QRELS = "qrels.parquet"
PROVENANCE = "provenance.parquet"


def top_ranked(similarity: np.ndarray, depth: int) -> np.ndarray:
    """(n, depth) positions, best first, per row of a square similarity; the row's own
    position is left out (a query is not its own result)."""
    similarity = similarity.astype(np.float64, copy=True)
    np.fill_diagonal(similarity, -np.inf)
    part = np.argpartition(-similarity, depth, axis=1)[:, :depth]
    order = np.argsort(-np.take_along_axis(similarity, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def weak_rankings(
    texts: list[str],
    embeddings: np.ndarray,
    depth: int = 100,
    tfidf_features: int = 5000,
    truncated_dims: int = 32,
) -> dict[str, np.ndarray]:
    """Each weak retriever's top `depth` corpus positions per query (every text a query)."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
    except ImportError as err:
        raise ConfigError(
            "the judged BBC pool needs scikit-learn for TF-IDF (pip install 'tamis[examples]')"
        ) from err
    tfidf = TfidfVectorizer(max_features=tfidf_features, sublinear_tf=True, stop_words="english")
    x = tfidf.fit_transform(texts)  # rows L2-normalised
    truncated = embeddings[:, :truncated_dims].astype(np.float64)
    truncated /= np.maximum(np.linalg.norm(truncated, axis=1, keepdims=True), 1e-12)
    return {
        "tfidf": top_ranked((x @ x.T).toarray(), depth),
        "truncated_embedding": top_ranked(truncated @ truncated.T, depth),
    }


def judged_pool(
    ids: list[str], topics: list[str], rankings: dict[str, np.ndarray], judged_depth: int = 10
) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """(provenance, qrels, statistics): the retrievers' ranked lists, and the judged pairs
    that share the query's topic."""
    n, id_array = len(ids), np.asarray(ids, dtype=object)
    labels = np.unique(np.asarray(topics), return_inverse=True)[1]
    columns: dict[str, list] = {"query_id": [], "doc_id": [], "retriever": [], "rank": []}
    judged = np.zeros((n, n), dtype=bool)
    for name, top in rankings.items():
        depth = top.shape[1]
        columns["query_id"].append(np.repeat(id_array, depth))
        columns["doc_id"].append(id_array[top.reshape(-1)])
        columns["retriever"].append(np.full(n * depth, name, dtype=object))
        columns["rank"].append(np.tile(np.arange(1, depth + 1, dtype=np.int32), n))
        judged[np.repeat(np.arange(n), judged_depth), top[:, :judged_depth].reshape(-1)] = True
    provenance = pa.table({k: np.concatenate(v) for k, v in columns.items()})
    same_topic = labels[:, None] == labels[None, :]
    q, d = np.nonzero(judged & same_topic)
    qrels = pa.table({"query_id": id_array[q], "doc_id": id_array[d]})
    stats = {
        "queries": n,
        "judged_per_query": round(float(judged.sum(1).mean()), 2),
        "qrels": len(q),
        "judged_precision": round(len(q) / max(int(judged.sum()), 1), 4),
        "relevant_per_query": round(float((same_topic.sum(1) - 1).mean()), 1),
    }
    return provenance, qrels, stats


def write_judged_pool(output: str | Path, embeddings_dir: str, judged_depth: int = 10) -> dict:
    """Write qrels.parquet and provenance.parquet for the BBC articles of an embeddings dir
    (`tamis embed` of `tamis data bbcnews`); returns the pool statistics."""
    from tamis.data.bbcnews import bbcnews_records
    from tamis.embeddings.store import read_embeddings

    make_output_dir(str(output), "output")  # a file in the way: ConfigError, before any work
    ids, vectors = read_embeddings(embeddings_dir)
    by_id = {r["id"]: r for r in bbcnews_records()}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise InputError(
            f"{embeddings_dir}: {len(missing)} ids are not BBC News articles (first: "
            f"{missing[0]!r}); embed the pool written by `tamis data bbcnews`"
        )
    records = [by_id[i] for i in ids]
    rankings = weak_rankings([r["text"] for r in records], vectors)
    provenance, qrels, stats = judged_pool(
        ids, [r["topic"] for r in records], rankings, judged_depth
    )
    out = Path(output)
    for name, table in ((QRELS, qrels), (PROVENANCE, provenance)):
        write_parquet_atomic(str(out / name), table)
    return stats
