"""FAISS index layer: build from embedding shards, search in blocks, save / load, GPU or CPU."""

from tamis.index.faiss_index import (
    GPU_MAX_K,
    Device,
    EmbeddingIndex,
    Metric,
    build_from_embeddings_dir,
    num_gpus,
    recall_at_k,
    resolve_device,
)

__all__ = [
    "GPU_MAX_K",
    "Device",
    "EmbeddingIndex",
    "Metric",
    "build_from_embeddings_dir",
    "num_gpus",
    "recall_at_k",
    "resolve_device",
]
