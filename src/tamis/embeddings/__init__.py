"""Embedding: pooling of hidden states (pure torch) and model loading / batching."""
