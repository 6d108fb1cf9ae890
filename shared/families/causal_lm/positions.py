"""Positions of decoder-only LMs (one numpy definition for both stacks): ids from a padding mask,
rotary tables in HF's layout, and Gemma's embedding scale."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from shared.families.causal_lm.rope_scaling import inv_freq_and_factor

if TYPE_CHECKING:
    from shared.config.model_config import ModelConfig


def position_ids(attention_mask: np.ndarray) -> np.ndarray:
    """(B, T) 0/1 mask -> (B, T) positions cumsum(mask) - 1, clamped at 0 (pads before the text get 0).

    The reference definition; the stacks compute the same from their own mask tensors.
    """
    return np.maximum(np.cumsum(attention_mask, axis=-1) - 1, 0)


def rope_tables(config: "ModelConfig") -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (max_len, K) float32 tables of rotary embeddings in HF's layout (halves repeated).

    HF computes inv_freq in float32 (1 / theta ** (arange(0, K, 2) / K), then the rope scaling's
    float32 steps: shared/families/causal_lm/rope_scaling.py), the angles position * inv_freq in float32 and cos/sin in
    float32, times the scaling's attention factor (YaRN; 1 otherwise), also for a float64 model. Here
    the angles are the same float32 products, and factor * cos/sin are taken in float64 and rounded
    once, so both stacks use one correctly rounded table (each framework's float32 cos could differ
    in the last bit).
    """
    inv_freq, factor = inv_freq_and_factor(config.rope_theta, config.head_dim, config.rope_scaling, config.max_len)
    angles = np.arange(config.max_len, dtype=np.float32)[:, None] * inv_freq[None, :]  # (P, K/2) float32
    angles = np.concatenate([angles, angles], axis=-1).astype(np.float64)  # (P, K)
    return (factor * np.cos(angles)).astype(np.float32), (factor * np.sin(angles)).astype(np.float32)



def embedding_scale(config: "ModelConfig") -> np.float32 | None:
    """Gemma's sqrt(D) normalizer, or None (scale_embeddings false).

    HF keeps it as a float32 buffer (`torch.tensor(hidden_size ** 0.5)`) and casts it to the
    weights' dtype before multiplying: the stacks cast this float32 value to the hidden dtype
    (bf16: sqrt(2048) = 45.2548 becomes 45.25), in float64 too (the float32 value, exactly).
    """
    return np.float32(config.d_model**0.5) if config.scale_embeddings else None
