"""The FAISS layer: exact search against numpy, approximate recall, save/load, errors."""

from __future__ import annotations

import json
import logging

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tamis.index import EmbeddingIndex, build_from_embeddings_dir, num_gpus, recall_at_k
from tamis.index import faiss_index as fi

DIM = 32


def normalised(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def uneven_blocks(x: np.ndarray) -> list[np.ndarray]:
    """Blocks of unequal sizes (one of a single row), as shards come out of the embedder."""
    cuts = [0, 700, 1700, 1701, len(x)]
    return [x[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]


def numpy_topk(pool: np.ndarray, queries: np.ndarray, k: int, metric: str = "ip"):
    """Brute force in float64: (scores, indices) best first."""
    pool64, q64 = pool.astype(np.float64), queries.astype(np.float64)
    if metric == "ip":
        scores = q64 @ pool64.T
        order = np.argsort(-scores, axis=1, kind="stable")
    else:
        scores = (q64**2).sum(1)[:, None] - 2 * q64 @ pool64.T + (pool64**2).sum(1)[None, :]
        order = np.argsort(scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, axis=1)[:, :k], order[:, :k]


def assert_tie_free(sorted_scores: np.ndarray, scale: float = 1.0) -> None:
    """Exact comparisons need gaps between consecutive top scores above float32 noise.

    FAISS sums DIM float32 products: its error is below DIM * 2**-24 (about 2e-6) times
    `scale` (the largest magnitude summed), so a larger gap means the order cannot flip.
    """
    gaps = np.abs(np.diff(sorted_scores, axis=1))
    assert gaps.min() > DIM * 2.0**-24 * scale, "test data has near-ties; pick another seed"


@pytest.fixture(scope="module")
def small():
    """3000 normalised pool vectors and 200 queries, tie-free at the top 11."""
    rng = np.random.default_rng(1)
    return normalised(rng.normal(size=(3000, DIM))), normalised(rng.normal(size=(200, DIM)))


@pytest.fixture(scope="module")
def clustered():
    """20k normalised vectors around 100 centres (embeddings cluster), 500 queries, exact top-10."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(100, DIM))
    pool = normalised(centres[rng.integers(0, 100, 20_000)] + rng.normal(size=(20_000, DIM)))
    queries = normalised(centres[rng.integers(0, 100, 500)] + rng.normal(size=(500, DIM)))
    _, exact = numpy_topk(pool, queries, 10)
    return pool, queries, exact


# ---------------------------------------------------------------------------- exact search


def test_flat_ip_equals_numpy(small):
    pool, queries = small
    ref_scores, ref_idx = numpy_topk(pool, queries, 11)
    assert_tie_free(ref_scores)
    index = EmbeddingIndex.build(uneven_blocks(pool), DIM, device="cpu")
    assert (index.ntotal, index.dim, index.device) == (3000, DIM, "cpu")
    assert (index.factory, index.metric, index.is_trained) == ("Flat", "ip", True)

    scores, idx = index.search(queries, 10, block_size=64)  # 4 blocks, the last one short
    assert scores.dtype == np.float32 and idx.dtype == np.int64
    assert scores.shape == idx.shape == (200, 10)
    np.testing.assert_array_equal(idx, ref_idx[:, :10])
    np.testing.assert_allclose(scores, ref_scores[:, :10], atol=1e-5)

    # The block size is a memory knob only.
    scores_one, idx_one = index.search(queries, 10)
    np.testing.assert_array_equal(idx_one, idx)
    np.testing.assert_array_equal(scores_one, scores)


def test_flat_l2_equals_numpy(small):
    pool, queries = small
    # Not normalised (l2 must not assume it); fewer points keep the larger l2 rounding
    # error well below the gaps between neighbours.
    pool, queries = pool[:500] * 1.5, queries[:50] * 1.2
    ref_scores, ref_idx = numpy_topk(pool, queries, 11, metric="l2")
    assert_tie_free(ref_scores, scale=(1.5 + 1.2) ** 2)
    index = EmbeddingIndex.build(np.array_split(pool, 3), DIM, metric="l2", device="cpu")
    assert index.metric == "l2"
    scores, idx = index.search(queries, 10, block_size=16)
    np.testing.assert_array_equal(idx, ref_idx[:, :10])
    np.testing.assert_allclose(scores, ref_scores[:, :10], rtol=1e-4, atol=1e-4)  # squared


def test_k_larger_than_pool_is_padded_with_minus_one(small):
    pool, queries = small
    index = EmbeddingIndex.build([pool[:5]], DIM, device="cpu")
    scores, idx = index.search(queries[:3], 8)
    assert (idx[:, 5:] == -1).all()
    assert set(idx[0, :5]) == set(range(5))
    assert (scores[:, 5:] < -1e30).all()


def test_add_appends_positions(small):
    pool, _ = small
    index = EmbeddingIndex.create(DIM, device="cpu")
    index.add(pool[:10])
    index.add(pool[10:20].astype(np.float64))  # converted, not rejected
    index.add(np.zeros((0, DIM), np.float32))
    assert index.ntotal == 20
    _, idx = index.search(pool[15:16], 1)
    assert idx[0, 0] == 15


# ---------------------------------------------------------------------- approximate search


def test_ivf_trains_on_a_sample_and_reports_recall(clustered):
    pool, queries, exact = clustered
    blocks = np.array_split(pool, 7)
    index = EmbeddingIndex.build(
        blocks, DIM, factory="IVF64,Flat", device="cpu", train_size=5000, nprobe=8
    )
    assert index.is_trained and index.ntotal == len(pool)
    assert faiss.extract_index_ivf(index.faiss_index).nprobe == 8
    _, approx = index.search(queries, 10)
    recall = recall_at_k(approx, exact, k=10)
    print(f"\nIVF64,Flat nprobe=8 recall@10 vs exact: {recall:.4f}")
    assert recall > 0.85

    # Same seed, same sample, same index.
    again = EmbeddingIndex.build(
        blocks, DIM, factory="IVF64,Flat", device="cpu", train_size=5000, nprobe=8
    )
    np.testing.assert_array_equal(again.search(queries, 10)[1], approx)

    # Visiting every list makes IVF-Flat exhaustive: recall 1.
    index.set_search_params(nprobe=64)
    _, all_lists = index.search(queries, 10)
    recall_all = recall_at_k(all_lists, exact, k=10)
    print(f"IVF64,Flat nprobe=64 recall@10 vs exact: {recall_all:.4f}")
    assert recall_all == 1.0


def test_hnsw_reports_recall(clustered):
    pool, queries, exact = clustered
    index = EmbeddingIndex.build(np.array_split(pool, 4), DIM, factory="HNSW32", device="cpu")
    assert index.ntotal == len(pool)
    _, approx = index.search(queries, 10)
    recall = recall_at_k(approx, exact, k=10)
    print(f"\nHNSW32 efSearch=16 recall@10 vs exact: {recall:.4f}")
    assert recall > 0.85

    index.set_search_params(ef_search=128)
    assert faiss.downcast_index(index.faiss_index).hnsw.efSearch == 128
    _, wider = index.search(queries, 10)
    recall_wide = recall_at_k(wider, exact, k=10)
    print(f"HNSW32 efSearch=128 recall@10 vs exact: {recall_wide:.4f}")
    assert recall_wide >= recall and recall_wide > 0.97


def test_recall_at_k():
    exact = np.array([[0, 1, 2], [3, 4, 5]])
    assert recall_at_k(exact, exact, k=3) == 1.0
    assert recall_at_k(np.array([[2, 9, 0], [5, 4, 3]]), exact, k=3) == pytest.approx(5 / 6)
    # Only the first k columns count; -1 (no neighbour) is never a hit.
    assert recall_at_k(np.array([[0, 9, 1], [-1, -1, 3]]), exact, k=2) == pytest.approx(1 / 4)
    assert recall_at_k(np.array([[0, -1]]), np.array([[0, -1]]), k=2) == 1.0
    with pytest.raises(ValueError, match="same q"):
        recall_at_k(exact[:1], exact)
    with pytest.raises(ValueError, match="k=4"):
        recall_at_k(exact, exact, k=4)


# ------------------------------------------------------------------------- save and load


def test_save_load_round_trip(tmp_path, small, clustered):
    pool, queries = small
    flat = EmbeddingIndex.build(uneven_blocks(pool), DIM, device="cpu")
    flat.save(str(tmp_path / "flat.faiss"))
    loaded = EmbeddingIndex.load(str(tmp_path / "flat.faiss"), device="cpu")
    assert (loaded.factory, loaded.metric, loaded.ntotal, loaded.dim) == ("Flat", "ip", 3000, DIM)
    for got, want in zip(loaded.search(queries, 10), flat.search(queries, 10), strict=True):
        np.testing.assert_array_equal(got, want)
    meta = json.loads((tmp_path / "flat.faiss.meta.json").read_text())
    assert meta["factory"] == "Flat" and meta["ntotal"] == 3000
    assert not list(tmp_path.glob("*.tmp-*"))  # temp files renamed away

    big, big_queries, _ = clustered
    ivf = EmbeddingIndex.build(
        [big], DIM, factory="IVF64,Flat", device="cpu", train_size=5000, nprobe=8
    )
    path = str(tmp_path / "sub" / "ivf.faiss")  # parent folders are made
    ivf.save(path)
    loaded = EmbeddingIndex.load(path)  # auto: CPU here
    assert loaded.factory == "IVF64,Flat"
    for got, want in zip(loaded.search(big_queries, 10), ivf.search(big_queries, 10), strict=True):
        np.testing.assert_array_equal(got, want)  # nprobe travels with the file
    wider = EmbeddingIndex.load(path, device="cpu", nprobe=64)
    assert faiss.extract_index_ivf(wider.faiss_index).nprobe == 64


def test_save_load_through_beam_filesystems(tmp_path, small, monkeypatch):
    """The non-local (gs://) branch serialises through Beam's FileSystems."""
    pool, queries = small
    index = EmbeddingIndex.build([pool], DIM, device="cpu")
    monkeypatch.setattr(fi, "_is_local", lambda path: False)
    path = str(tmp_path / "remote.faiss")
    index.save(path)
    loaded = EmbeddingIndex.load(path, device="cpu")
    assert loaded.factory == "Flat"
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], index.search(queries, 5)[1])


def test_load_errors(tmp_path, small):
    with pytest.raises(FileNotFoundError, match="no FAISS index"):
        EmbeddingIndex.load(str(tmp_path / "missing.faiss"))
    pool, _ = small
    path = str(tmp_path / "a.faiss")
    EmbeddingIndex.build([pool], DIM, device="cpu").save(path)
    meta = json.loads((tmp_path / "a.faiss.meta.json").read_text())
    (tmp_path / "a.faiss.meta.json").write_text(json.dumps({**meta, "ntotal": 7}))
    with pytest.raises(ValueError, match="different saves"):
        EmbeddingIndex.load(path)


# ------------------------------------------------------------------------ embeddings dirs


def write_embeddings_dir(directory, parts: list[np.ndarray]) -> list[str]:
    """An embeddings dir as `tamis embed` writes it (parts + manifest), without the model."""
    directory.mkdir()
    ids = []
    for n, vectors in enumerate(parts):
        part_ids = [f"doc-{n}-{i}" for i in range(len(vectors))]
        ids += part_ids
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        table = pa.table(
            {
                "id": pa.array(part_ids, type=pa.string()),
                "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]),
                "n_tokens": pa.array(np.full(len(vectors), 5, np.int32)),
            }
        )
        pq.write_table(table, directory / f"part-{n:05d}.parquet")
    (directory / "manifest.json").write_text(json.dumps({"model": {"dim": DIM}}))
    return ids


def test_build_from_embeddings_dir(tmp_path, small):
    pool, queries = small
    ids = write_embeddings_dir(tmp_path / "emb", uneven_blocks(pool))

    index, got_ids = build_from_embeddings_dir(str(tmp_path / "emb"), device="cpu")
    assert got_ids == ids and index.ntotal == len(ids)
    _, ref_idx = numpy_topk(pool, queries, 5)
    np.testing.assert_array_equal(index.search(queries, 5)[1], ref_idx)

    # A trained factory: a uniform sample over all shards, then every shard added once.
    ivf, ivf_ids = build_from_embeddings_dir(
        str(tmp_path / "emb"), factory="IVF16,Flat", device="cpu", train_size=1000, nprobe=16
    )
    assert ivf_ids == ids and ivf.ntotal == len(ids)
    np.testing.assert_array_equal(ivf.search(queries, 5)[1], ref_idx)  # all lists: exact


def test_build_from_empty_embeddings_dir(tmp_path):
    write_embeddings_dir(tmp_path / "emb", [])
    with pytest.raises(ValueError, match="no vectors"):
        build_from_embeddings_dir(str(tmp_path / "emb"), device="cpu")


def test_uniform_sample_covers_all_blocks():
    blocks = [np.full((100, 2), b, np.float32) for b in range(10)]
    sample = fi._uniform_sample(iter(blocks), 2, 200, seed=3)
    assert sample.shape == (200, 2)
    counts = np.bincount(sample[:, 0].astype(int), minlength=10)
    assert (counts > 5).all()  # about 20 from each block, not the first two blocks
    assert np.all(np.diff(sample[:, 0]) >= 0)  # pool order kept
    np.testing.assert_array_equal(sample, fi._uniform_sample(iter(blocks), 2, 200, seed=3))
    assert len(fi._uniform_sample(iter(blocks[:1]), 2, 200, seed=3)) == 100  # fewer: all


# --------------------------------------------------------------------------------- errors


def test_too_few_vectors_to_train():
    rng = np.random.default_rng(0)
    few = normalised(rng.normal(size=(50, DIM)))
    with pytest.raises(ValueError, match=r"'IVF64,Flat' could not be trained on 50 vectors"):
        EmbeddingIndex.build([few[:20], few[20:]], DIM, factory="IVF64,Flat", device="cpu")
    with pytest.raises(ValueError, match=r"'PQ8np' could not be trained on 50 vectors.*256"):
        EmbeddingIndex.build([few], DIM, factory="PQ8np", device="cpu")
    with pytest.raises(ValueError, match="on 0 vectors"):
        EmbeddingIndex.build([], DIM, factory="IVF4,Flat", device="cpu")


def test_dimension_mismatch(small):
    pool, queries = small
    index = EmbeddingIndex.build([pool], DIM, device="cpu")
    with pytest.raises(ValueError, match=r"add: expected an \(n, 32\) array.*\(4, 16\)"):
        index.add(np.zeros((4, 16), np.float32))
    with pytest.raises(ValueError, match=r"search queries: expected an \(n, 32\).*\(3, 33\)"):
        index.search(np.zeros((3, 33), np.float32), 5)
    with pytest.raises(ValueError, match=r"\(32,\)"):
        index.search(queries[0], 5)  # one query must still be a (1, dim) matrix
    with pytest.raises(ValueError, match="build block"):
        EmbeddingIndex.build([pool[:, :16]], DIM, factory="IVF4,Flat", device="cpu")
    with pytest.raises(ValueError, match="add"):
        EmbeddingIndex.build([pool, pool[:, :16]], DIM, device="cpu")
    assert index.ntotal == 3000  # nothing half-added


def test_bad_arguments(small):
    pool, queries = small
    with pytest.raises(ValueError, match="not a valid FAISS factory string"):
        EmbeddingIndex.create(DIM, factory="Bogus", device="cpu")
    with pytest.raises(ValueError, match="metric"):
        EmbeddingIndex.create(DIM, metric="cosine", device="cpu")
    with pytest.raises(ValueError, match="device"):
        EmbeddingIndex.create(DIM, device="tpu")
    with pytest.raises(ValueError, match="dim"):
        EmbeddingIndex.create(0, device="cpu")
    with pytest.raises(ValueError, match="no search parameter 'nprobe'"):
        EmbeddingIndex.create(DIM, nprobe=4, device="cpu")
    with pytest.raises(ValueError, match="needs training before add"):
        EmbeddingIndex.create(DIM, factory="IVF4,Flat", device="cpu").add(pool)
    index = EmbeddingIndex.build([pool], DIM, device="cpu")
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.full((1, DIM), np.nan, np.float32))
    with pytest.raises(ValueError, match="k must be a positive"):
        index.search(queries, 0)
    with pytest.raises(ValueError, match="block_size"):
        index.search(queries, 3, block_size=0)


# --------------------------------------------------------------------------------- devices


def test_auto_device_logs_choice(caplog):
    with caplog.at_level(logging.INFO, logger="tamis.index.faiss_index"):
        index = EmbeddingIndex.create(DIM, device="auto")
    expected = "gpu" if num_gpus() > 0 else "cpu"
    assert index.device == expected
    assert f"FAISS index on {expected}" in caplog.text


def test_gpu_without_gpu_is_a_clear_error(monkeypatch):
    if num_gpus() > 0:
        pytest.skip("a GPU is visible to FAISS")
    with pytest.raises(ValueError, match="'gpu' was requested but FAISS sees no GPU"):
        EmbeddingIndex.create(DIM, device="gpu")
    # A CPU build that lacks get_num_gpus altogether still works.
    monkeypatch.delattr(faiss, "get_num_gpus", raising=False)
    assert fi.resolve_device("auto") == "cpu"


@pytest.mark.gpu
def test_exact_search_on_gpu(tmp_path, small):
    if num_gpus() == 0:
        pytest.skip("this FAISS build sees no GPU (faiss-cpu installed)")
    pool, queries = small
    ref_scores, ref_idx = numpy_topk(pool, queries, 10)
    index = EmbeddingIndex.build(uneven_blocks(pool), DIM, device="gpu")
    assert index.device == "gpu"
    scores, idx = index.search(queries, 10, block_size=64)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    # Saved from the GPU, loadable on the CPU with the same results.
    index.save(str(tmp_path / "gpu.faiss"))
    on_cpu = EmbeddingIndex.load(str(tmp_path / "gpu.faiss"), device="cpu")
    np.testing.assert_array_equal(on_cpu.search(queries, 10)[1], ref_idx)
