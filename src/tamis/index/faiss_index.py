"""A FAISS index over embedding vectors: build from shards, search in blocks, save / load.

Exact inner-product search (`"Flat"`) is the default: it is what the selectors are checked
against (design principle 4). Any FAISS factory string (`"IVF4096,PQ64"`, `"HNSW32"`, ...)
can be used instead for pools too big for exact search; indexes that need training are
trained on a sample of the vectors (see `EmbeddingIndex.build`).

Positions: FAISS numbers vectors 0, 1, 2, ... in the order they are added, so search results
are row numbers into the concatenation of the blocks given to `build` / `add`. Keep the ids
in the same order (`build_from_embeddings_dir` returns them) to map rows back to ids.

Device: chosen at run time only. `device="auto"` uses the GPU when this FAISS build sees one
(`faiss.get_num_gpus() > 0`, which is 0 or missing in faiss-cpu) and the CPU otherwise; a log
line says which. Only GPU 0 is used. The CPU path never depends on a GPU build.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import faiss
import numpy as np
from apache_beam.io.filesystems import FileSystems

from tamis.embeddings.store import EmbeddingBlock, iter_embedding_blocks
from tamis.records import atomic_write, read_bytes

logger = logging.getLogger(__name__)

Metric = Literal["ip", "l2"]
Device = Literal["auto", "cpu", "gpu"]

_METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
_DEVICES = ("auto", "cpu", "gpu")
# Largest k the FAISS GPU k-selection supports (GPU_MAX_SELECTION_K since faiss 1.7.3).
GPU_MAX_K = 2048
# Sidecar written next to a saved index: FAISS files do not record the factory string.
META_SUFFIX = ".meta.json"


def num_gpus() -> int:
    """GPUs visible to this FAISS build (0 for faiss-cpu, whose module may lack the call)."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0  # a CPU build: nothing to move an index onto, whatever CUDA says
    return int(getattr(faiss, "get_num_gpus", lambda: 0)())


def resolve_device(device: str) -> str:
    """`"cpu"` or `"gpu"` for a requested `auto|cpu|gpu`, logging the choice.

    Raises ValueError for an unknown name or for `"gpu"` when FAISS sees no GPU.
    """
    if device not in _DEVICES:
        raise ValueError(f"index device must be one of {', '.join(_DEVICES)}; got {device!r}")
    gpus = num_gpus()
    if device == "gpu" and gpus == 0:
        raise ValueError(
            "index device 'gpu' was requested but FAISS sees no GPU "
            "(faiss.get_num_gpus() is 0 or this is faiss-cpu); install tamis[gpu] "
            "(faiss-gpu-cu12) on a CUDA machine, or use device 'auto' or 'cpu'"
        )
    chosen = "gpu" if device == "gpu" or (device == "auto" and gpus > 0) else "cpu"
    logger.info("FAISS index on %s (requested %r; FAISS sees %d GPU(s))", chosen, device, gpus)
    return chosen


def _faiss_message(error: Exception) -> str:
    """The useful tail of a FAISS C++ error (drops the 'Error in <signature> at file:line')."""
    text = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
    for marker in ("failed: ", "Error: "):
        if marker in text:
            return text.split(marker, 1)[1]
    return text


def _factory_index(dim: int, factory: str, metric: str) -> faiss.Index:
    """A new CPU index from a factory string, with tamis messages for bad arguments."""
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim <= 0:
        raise ValueError(f"index dim must be a positive integer; got {dim!r}")
    if metric not in _METRICS:
        raise ValueError(f"index metric must be one of {', '.join(_METRICS)}; got {metric!r}")
    try:
        return faiss.index_factory(int(dim), factory, _METRICS[metric])
    except RuntimeError as e:
        raise ValueError(
            f"index factory {factory!r} is not a valid FAISS factory string for dim {dim} "
            f"({_faiss_message(e)}); examples: 'Flat', 'IVF4096,PQ64', 'HNSW32'"
        ) from e


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


class EmbeddingIndex:
    """A FAISS index with its metric, factory string and device.

    Build with `EmbeddingIndex.build` (streaming over blocks) or `EmbeddingIndex.create` +
    `train` / `add`; search with `search`; persist with `save` / `EmbeddingIndex.load`.
    """

    def __init__(
        self,
        index: faiss.Index,
        *,
        factory: str,
        device: str = "cpu",
        gpu_resources: Any = None,
    ) -> None:
        """Wrap an existing FAISS index (most callers want `create`, `build` or `load`)."""
        self._index = index
        self._factory = factory
        self._device = device
        # The GPU index borrows these resources; keep them alive as long as the index.
        self._gpu_resources = gpu_resources

    # ----------------------------------------------------------------- construction

    @classmethod
    def create(
        cls,
        dim: int,
        factory: str = "Flat",
        metric: Metric = "ip",
        device: Device = "auto",
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> EmbeddingIndex:
        """An empty index from a FAISS factory string (it may still need `train`)."""
        out = cls._placed(_factory_index(dim, factory, metric), factory, device)
        out.set_search_params(nprobe=nprobe, ef_search=ef_search)
        return out

    @classmethod
    def _placed(cls, cpu_index: faiss.Index, factory: str, device: str) -> EmbeddingIndex:
        """Wrap `cpu_index`, moved to the GPU when the resolved device is the GPU."""
        if resolve_device(device) == "cpu":
            return cls(cpu_index, factory=factory, device="cpu")
        try:
            resources = faiss.StandardGpuResources()
            gpu_index = faiss.index_cpu_to_gpu(resources, 0, cpu_index)
        except (RuntimeError, AttributeError) as e:
            # Not every index type has a GPU version (HNSW has none): with 'auto' that is
            # no reason to fail, with an explicit 'gpu' it is.
            if device == "gpu":
                raise ValueError(
                    f"index factory {factory!r} cannot run on the GPU ({_faiss_message(e)}); "
                    "use device 'cpu' or 'auto', or a GPU-capable factory (Flat, IVF*)"
                ) from e
            logger.warning(
                "FAISS index %r has no GPU version (%s); using the CPU",
                factory,
                _faiss_message(e),
            )
            return cls(cpu_index, factory=factory, device="cpu")
        return cls(gpu_index, factory=factory, device="gpu", gpu_resources=resources)

    @classmethod
    def build(
        cls,
        blocks: Iterable[np.ndarray],
        dim: int,
        factory: str = "Flat",
        metric: Metric = "ip",
        device: Device = "auto",
        train_size: int = 100_000,
        nprobe: int | None = None,
        ef_search: int | None = None,
        seed: int = 0,
    ) -> EmbeddingIndex:
        """Build an index from an iterable of (n, dim) float32 blocks, one block in memory.

        An index that needs no training (Flat, HNSW*) is filled block by block. One that
        does (IVF*, PQ*) is trained on a sample: blocks are buffered until at least
        `train_size` vectors have been seen, the index is trained on `train_size` of them
        drawn without replacement with `seed` (all of them if fewer), then the buffer and
        the remaining blocks are added. This keeps to one pass over the blocks and memory
        at about `train_size` vectors plus one block, at the price that the sample comes
        from the first vectors, not the whole pool: if the pool's order is not random
        (sorted by source, say), shuffle the blocks or use `build_from_embeddings_dir`,
        which can read its shards twice and samples uniformly.

        Raises ValueError when there are too few vectors to train the factory (for
        example IVF with more lists than vectors), naming the factory and the counts.
        FAISS only warns (on stderr) when there are fewer than ~39 vectors per centroid.

        Determinism: Flat and IVF builds depend only on the blocks and `seed` (FAISS's
        k-means has its own fixed seed). HNSW inserts vectors on several threads, so its
        graph, and rarely its results, can differ between runs unless
        `faiss.omp_set_num_threads(1)`.

        Note for PQ factories: FAISS's `PQm` turns on polysemous training, which can take
        far longer than the k-means itself; `PQmnp` (e.g. `IVF4096,PQ64np`) turns it off
        and is the better choice unless you search by Hamming distance.
        """
        index = cls.create(dim, factory, metric, device, nprobe=nprobe, ef_search=ef_search)
        blocks = iter(blocks)
        if not index.is_trained:
            if train_size <= 0:
                raise ValueError(f"train_size must be positive; got {train_size}")
            buffered: list[np.ndarray] = []
            seen = 0
            for block in blocks:
                block = index._matrix(block, "build block")
                buffered.append(block)
                seen += len(block)
                if seen >= train_size:
                    break
            sample = np.concatenate(buffered) if buffered else np.zeros((0, dim), np.float32)
            if len(sample) > train_size:
                rng = np.random.default_rng(seed)
                # Sorted rows keep the sample in pool order: same seed, same sample.
                sample = sample[np.sort(rng.choice(len(sample), train_size, replace=False))]
            index.train(sample)
            del sample
            for block in buffered:
                index.add(block)
            del buffered
        for block in blocks:
            index.add(block)
        logger.info("built FAISS index %r: %d vectors of dim %d", factory, index.ntotal, dim)
        return index

    # ------------------------------------------------------------------ properties

    @property
    def ntotal(self) -> int:
        """Number of vectors in the index."""
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return int(self._index.d)

    @property
    def device(self) -> str:
        """Where the index lives: `"cpu"` or `"gpu"`."""
        return self._device

    @property
    def factory(self) -> str:
        """The FAISS factory string the index was made from."""
        return self._factory

    @property
    def metric(self) -> str:
        """`"ip"` (scores are inner products) or `"l2"` (scores are squared distances)."""
        return "ip" if self._index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"

    @property
    def is_trained(self) -> bool:
        """False until an index that needs training (IVF*, PQ*) has been trained."""
        return bool(self._index.is_trained)

    @property
    def faiss_index(self) -> faiss.Index:
        """The wrapped FAISS index (a GPU index when `device == "gpu"`)."""
        return self._index

    def __repr__(self) -> str:
        return (
            f"EmbeddingIndex(factory={self.factory!r}, metric={self.metric!r}, dim={self.dim}, "
            f"ntotal={self.ntotal}, device={self.device!r})"
        )

    # ------------------------------------------------------------------- operations

    def _matrix(self, vectors: np.ndarray, what: str) -> np.ndarray:
        """`vectors` as a C-contiguous float32 (n, dim) array, or a ValueError saying why."""
        array = np.asarray(vectors)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ValueError(
                f"{what}: expected an (n, {self.dim}) array for this dim-{self.dim} index "
                f"({self.factory!r}); got shape {array.shape}"
            )
        array = np.ascontiguousarray(array, dtype=np.float32)
        # FAISS takes NaN/inf silently and returns garbage neighbours; refuse them here.
        if not np.isfinite(array).all():
            raise ValueError(f"{what}: vectors contain NaN or infinite values")
        return array

    def train(self, vectors: np.ndarray) -> None:
        """Train the index on `vectors` (a no-op for indexes that need no training)."""
        vectors = self._matrix(vectors, "train")
        if self.is_trained:
            return
        try:
            self._index.train(vectors)
        except RuntimeError as e:
            raise ValueError(
                f"index factory {self.factory!r} could not be trained on {len(vectors)} "
                f"vectors ({_faiss_message(e)}); give it more vectors (train_size / a "
                "larger pool) or use a factory with fewer lists or centroids"
            ) from e

    def add(self, vectors: np.ndarray) -> None:
        """Append (n, dim) vectors; they get positions ntotal .. ntotal + n - 1."""
        vectors = self._matrix(vectors, "add")
        if not self.is_trained:
            raise ValueError(
                f"index factory {self.factory!r} needs training before add; call train() "
                "or build the index with EmbeddingIndex.build"
            )
        if len(vectors):
            self._index.add(vectors)

    def search(
        self, queries: np.ndarray, k: int, block_size: int = 4096
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k neighbours of each query, searching `block_size` queries at a time.

        Returns `(scores, indices)`, both (q, k): float32 scores and int64 positions, best
        first. With metric "ip" the scores are inner products (cosine similarity for
        L2-normalised vectors), highest first; with "l2" they are squared L2 distances,
        lowest first. When the index holds fewer than k vectors (or an approximate index
        finds fewer), the missing places hold position -1 and the sentinel score FAISS
        uses (-3.4e38 for ip, +3.4e38 for l2).

        Ties: FAISS does not define the order of equal scores (its heap / BLAS paths may
        keep either position), so exact results match a brute force only up to the order
        among tied scores.
        """
        queries = self._matrix(queries, "search queries")
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
            raise ValueError(f"search k must be a positive integer; got {k!r}")
        if block_size <= 0:
            raise ValueError(f"search block_size must be positive; got {block_size}")
        if self.device == "gpu" and k > GPU_MAX_K:
            raise ValueError(f"GPU FAISS search supports k <= {GPU_MAX_K}; got k={k}")
        n = len(queries)
        scores = np.empty((n, k), dtype=np.float32)
        indices = np.empty((n, k), dtype=np.int64)
        # Blocks bound the (block, k) result buffers and FAISS's per-call scratch memory.
        for start in range(0, n, block_size):
            stop = min(start + block_size, n)
            scores[start:stop], indices[start:stop] = self._index.search(queries[start:stop], k)
        return scores, indices

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Set search-time knobs: `nprobe` (IVF lists visited), `ef_search` (HNSW beam).

        None leaves a knob as it is. Raises ValueError when the index has no such knob.
        """
        if nprobe is None and ef_search is None:
            return
        space = faiss.GpuParameterSpace() if self.device == "gpu" else faiss.ParameterSpace()
        for name, value in (("nprobe", nprobe), ("efSearch", ef_search)):
            if value is None:
                continue
            if value <= 0:
                raise ValueError(f"index {name} must be positive; got {value}")
            try:
                space.set_index_parameter(self._index, name, float(value))
            except RuntimeError as e:
                raise ValueError(
                    f"index factory {self.factory!r} has no search parameter {name!r} "
                    f"({_faiss_message(e)}); nprobe is for IVF*, ef_search for HNSW*"
                ) from e

    # ---------------------------------------------------------------- persistence

    def save(self, path: str) -> None:
        """Write the index to `path` (plus `path + ".meta.json"` with the factory string).

        A GPU index is copied to the CPU first, so the file loads anywhere. Local files
        are written to a temporary name and renamed (a crash leaves no half index); other
        URIs (gs://...) go through Beam's FileSystems as one serialised blob.
        """
        cpu_index = faiss.index_gpu_to_cpu(self._index) if self.device == "gpu" else self._index
        meta = {
            "factory": self.factory,
            "metric": self.metric,
            "dim": self.dim,
            "ntotal": self.ntotal,
            "faiss_version": faiss.__version__,
        }
        meta_bytes = json.dumps(meta, indent=2).encode()
        if _is_local(path):
            path = _local(path)
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            # Straight to disk: serialising first would hold a second copy of a big index.
            tmp = f"{path}.tmp-{os.getpid()}"
            faiss.write_index(cpu_index, tmp)
            os.replace(tmp, path)
        else:
            atomic_write(path, faiss.serialize_index(cpu_index).tobytes())
        atomic_write(path + META_SUFFIX, meta_bytes)
        logger.info("saved FAISS index %r (%d vectors) to %s", self.factory, self.ntotal, path)

    @classmethod
    def load(
        cls,
        path: str,
        device: Device = "auto",
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> EmbeddingIndex:
        """Read an index written by `save` onto `device` (search knobs as saved unless set)."""
        if not FileSystems.exists(path):
            raise FileNotFoundError(f"{path}: no FAISS index file")
        if _is_local(path):
            cpu_index = faiss.read_index(_local(path))
        else:
            cpu_index = faiss.deserialize_index(np.frombuffer(read_bytes(path), dtype=np.uint8))
        factory = type(cpu_index).__name__  # the best we can say without the sidecar
        meta_path = path + META_SUFFIX
        if FileSystems.exists(meta_path):
            meta = json.loads(read_bytes(meta_path))
            if int(meta.get("ntotal", cpu_index.ntotal)) != cpu_index.ntotal:
                raise ValueError(
                    f"{path}: index holds {cpu_index.ntotal} vectors but its {META_SUFFIX} "
                    f"says {meta['ntotal']}; the two files come from different saves"
                )
            factory = meta.get("factory", factory)
        out = cls._placed(cpu_index, factory, device)
        out.set_search_params(nprobe=nprobe, ef_search=ef_search)
        return out


def build_from_embeddings_dir(
    directory: str,
    factory: str = "Flat",
    metric: Metric = "ip",
    device: Device = "auto",
    train_size: int = 100_000,
    nprobe: int | None = None,
    ef_search: int | None = None,
    seed: int = 0,
) -> tuple[EmbeddingIndex, list[str]]:
    """Build an index over an embeddings dir (`tamis embed` output), one shard in memory.

    Returns the index and the ids in index order (`ids[position]` is the id of a search
    result). When the factory needs training, the shards are read twice: once to draw a
    uniform seeded sample of `train_size` vectors from the whole pool (a directory, unlike
    a one-shot iterable, can be re-read), once to add. Other factories read them once.
    """
    blocks = iter_embedding_blocks(directory)
    first = next(blocks, None)
    if first is None:
        raise ValueError(f"{directory}: embeddings dir has no vectors to index")
    dim = int(first.vectors.shape[1])
    ids: list[str] = []
    if _factory_index(dim, factory, metric).is_trained:

        def vectors() -> Iterator[np.ndarray]:
            for block in _chain(first, blocks):
                ids.extend(block.ids)
                yield block.vectors

        index = EmbeddingIndex.build(
            vectors(), dim, factory, metric, device, nprobe=nprobe, ef_search=ef_search
        )
        return index, ids
    sample = _uniform_sample((b.vectors for b in _chain(first, blocks)), dim, train_size, seed)
    index = EmbeddingIndex.create(dim, factory, metric, device, nprobe=nprobe, ef_search=ef_search)
    index.train(sample)
    del sample
    for block in iter_embedding_blocks(directory):
        ids.extend(block.ids)
        index.add(block.vectors)
    logger.info("built FAISS index %r over %s: %d vectors", factory, directory, index.ntotal)
    return index, ids


def _chain(first: EmbeddingBlock, rest: Iterable[EmbeddingBlock]) -> Iterator[EmbeddingBlock]:
    yield first
    yield from rest


def _uniform_sample(blocks: Iterable[np.ndarray], dim: int, size: int, seed: int) -> np.ndarray:
    """A uniform sample of `size` rows over all blocks, holding about `size` rows at once.

    Each row gets a seeded random key and the `size` rows with the smallest keys are kept
    (a bottom-k reservoir), so the sample depends only on the rows' order and the seed.
    """
    if size <= 0:
        raise ValueError(f"train_size must be positive; got {size}")
    rng = np.random.default_rng(seed)
    kept = np.zeros((0, dim), dtype=np.float32)
    kept_keys = np.zeros(0)
    for block in blocks:
        keys = rng.random(len(block))
        if len(kept) == size:
            # Once the reservoir is full only rows beating its worst key can enter; this
            # keeps the copying per block small instead of `size` rows every time.
            beats = keys < kept_keys.max()
            block, keys = np.asarray(block)[beats], keys[beats]
        kept = np.concatenate([kept, np.asarray(block, dtype=np.float32)])
        kept_keys = np.concatenate([kept_keys, keys])
        if len(kept) > size:
            # Keep pool order among the chosen rows so training sees them deterministically.
            keep = np.sort(np.argpartition(kept_keys, size - 1)[:size])
            kept, kept_keys = kept[keep], kept_keys[keep]
    return kept


def recall_at_k(approx_indices: np.ndarray, exact_indices: np.ndarray, k: int = 10) -> float:
    """Fraction of the exact top-k neighbours that the approximate top-k found.

    Both arrays are (q, >= k) positions as `search` returns them; only the first k columns
    count. Positions of -1 (no neighbour) are ignored on both sides; the result is the
    total number of hits over the total number of exact neighbours (micro-average, which
    equals the mean per-query recall when every query has k exact neighbours).
    """
    approx = np.asarray(approx_indices)
    exact = np.asarray(exact_indices)
    if approx.ndim != 2 or exact.ndim != 2 or len(approx) != len(exact):
        raise ValueError(
            f"recall_at_k: expected two (q, k) arrays with the same q; got {approx.shape} "
            f"and {exact.shape}"
        )
    if k <= 0 or approx.shape[1] < k or exact.shape[1] < k:
        raise ValueError(
            f"recall_at_k: k={k} needs at least k columns; got {approx.shape} and {exact.shape}"
        )
    approx, exact = approx[:, :k], exact[:, :k]
    hits = 0
    # Row chunks bound the (rows, k, k) comparison to about 16M booleans.
    rows = max(1, (1 << 24) // (k * k))
    for start in range(0, len(exact), rows):
        a, e = approx[start : start + rows], exact[start : start + rows]
        found = (a[:, :, None] == e[:, None, :]) & (a[:, :, None] >= 0)
        hits += int(found.any(axis=1).sum())
    total = int((exact >= 0).sum())
    if total == 0:
        raise ValueError("recall_at_k: the exact results hold no neighbours (all -1)")
    return hits / total
