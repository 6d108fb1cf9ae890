"""Position layers the families compose (sinusoid and learned tables: torch_impl/layers.py;
T5's relative bias: torch_impl/families/t5.py's relative_attention_bias; rotary here)."""

from __future__ import annotations

import torch


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool -> (B, T) cumsum(mask) - 1 clamped at 0 (shared/families/causal_lm.position_ids)."""
    return (mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """HF's rotary layout: (x1, x2) -> (-x2, x1) over the two halves of the last axis."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, T, K) rotated by the angles of its positions: cos, sin (B, T, K)."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (B, 1, T, K)
    return x * cos + rotate_half(x) * sin
