"""Candidate mining equals a brute-force top-k; a query's own document is dropped."""

import numpy as np

from tamis.index.faiss_index import EmbeddingIndex
from tamis.index.mining import drop_self_hits, flatten_hits, mine_top_k


def brute_top_k(corpus, queries, k):
    scores = queries.astype(np.float64) @ corpus.T.astype(np.float64)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def test_mined_candidates_are_the_brute_force_top_k_in_batches():
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(500, 16)).astype(np.float32)
    queries = rng.normal(size=(37, 16)).astype(np.float32)
    index = EmbeddingIndex.build([corpus[:200], corpus[200:]], 16, device="cpu")
    mined = mine_top_k(index, queries, 10, batch_size=8, first_query=100)
    scores, order = brute_top_k(corpus, queries, 10)
    assert len(mined) == 370
    np.testing.assert_array_equal(mined.query, np.repeat(np.arange(100, 137), 10))
    np.testing.assert_array_equal(mined.rank, np.tile(np.arange(1, 11), 37))
    np.testing.assert_array_equal(mined.doc, order.ravel())
    np.testing.assert_allclose(mined.score, scores.ravel(), rtol=1e-5, atol=1e-5)


def test_a_query_that_is_a_corpus_document_loses_its_own_hit():
    rng = np.random.default_rng(1)
    corpus = rng.normal(size=(300, 8)).astype(np.float32)
    index = EmbeddingIndex.build([corpus], 8, device="cpu")
    own = np.array([5, 17, -1, 299])  # the third query is not in the corpus
    queries = np.vstack([corpus[5], corpus[17], rng.normal(size=8), corpus[299]])
    mined = mine_top_k(index, queries.astype(np.float32), 6, self_positions=own)
    _, order = brute_top_k(corpus, queries, 7)
    for q in range(4):
        docs = mined.doc[mined.query == q]
        expected = [d for d in order[q] if d != own[q]][:6]
        assert docs.tolist() == expected


def test_drop_self_hits_and_empty_places():
    scores = np.array([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]], np.float32)
    positions = np.array([[3, 7, 1], [2, 4, 9]])
    kept_scores, kept = drop_self_hits(scores, positions, np.array([7, 5]), 2)
    assert kept.tolist() == [[3, 1], [2, 4]]
    np.testing.assert_allclose(kept_scores, [[0.9, 0.7], [0.6, 0.5]])
    # FAISS marks missing neighbours with -1: they are not candidates.
    flat = flatten_hits(np.zeros((2, 2), np.float32), np.array([[4, -1], [1, 2]]))
    assert flat.query.tolist() == [0, 1, 1] and flat.rank.tolist() == [1, 1, 2]
