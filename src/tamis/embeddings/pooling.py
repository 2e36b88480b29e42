"""Pooling of hidden states into one vector per sequence (pure torch, no model code).

`hidden` is (batch, length, dim); `mask` is (batch, length) with 1 on real tokens. Both right
and left padding are handled: positions are counted over real tokens only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

POOLINGS = ("weighted_mean", "mean", "last_token", "cls")


def weighted_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Position-weighted mean (SGPT / RDS+): w_i = m_i c_i / sum_j m_j c_j.

    c_i is the number of real tokens up to and including i, so with left padding counting
    starts at the first real token and a batched sequence gets the weights i / sum(1..L) of
    its batch-size-1 computation.
    """
    m = mask.to(hidden.dtype)
    positions = torch.cumsum(m, dim=1) * m
    weights = positions / positions.sum(dim=1, keepdim=True).clamp_min(1.0)
    return torch.einsum("bl,bld->bd", weights, hidden)


def mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Plain mean over real tokens (sentence-transformers' mean pooling)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1e-9)


def last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of the last real token (right or left padding)."""
    length = mask.shape[1]
    # Index of the last 1 in each row: the highest position whose mask is set.
    idx = torch.arange(length, device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), idx, torch.full_like(idx, -1)).max(dim=1).values
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last.clamp_min(0)]


def cls(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of the first real token ([CLS] for BERT-style encoders)."""
    length = mask.shape[1]
    idx = torch.arange(length, device=mask.device).expand_as(mask)
    first = torch.where(mask.bool(), idx, torch.full_like(idx, length)).min(dim=1).values
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), first.clamp_max(length - 1)]


_POOLERS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "weighted_mean": weighted_mean,
    "mean": mean,
    "last_token": last_token,
    "cls": cls,
}


def pool(
    hidden: torch.Tensor, mask: torch.Tensor, method: str = "weighted_mean", normalize: bool = True
) -> torch.Tensor:
    """Pool (batch, length, dim) hidden states with `method`; L2-normalise unless told not to.

    Pooling runs in float32 whatever the model's dtype, so bf16/fp16 models lose no
    precision in the weighted sum.
    """
    if method not in _POOLERS:
        raise ValueError(f"unknown pooling {method!r}; choose one of {', '.join(POOLINGS)}")
    if hidden.shape[:2] != mask.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and mask {tuple(mask.shape)} disagree")
    pooled = _POOLERS[method](hidden.float(), mask)
    if normalize:
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
    return pooled
