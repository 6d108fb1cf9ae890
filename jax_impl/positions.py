"""Position information every family composes (axis letters: shared/parity/axes.py, shared/decoding/generation.py).

sinusoid  the book's fixed table added to the embeddings (shared/parity/numerics.sinusoid_table);
learned   a (max_len, D) table added to the embeddings (book "learned", GPT-2's wpe): an nn.Embed
          owned by the family, read here at given positions;
relative  T5's bias on the attention scores, one learned value per (bucket, head), buckets from
          shared/families/t5.relative_position_buckets (one numpy table both stacks read);
rotary    q and k rotated by position (Llama; HF's rotate_half layout; shared rope_tables).

Every table is a numpy constant folded into the compiled program; a decoding step reads one row of
it at a traced position.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from shared.parity.numerics import sinusoid_table


def sinusoid(max_len: int, d_model: int, length: int, start=None, dtype=jnp.float32) -> jax.Array:
    """(L, D) rows start .. start + L - 1 of the sinusoid table (start None: from 0; may be traced).

    start (B, 1) (continuous batching: each row at its own position) -> (B, L, D).
    """
    table = sinusoid_table(max_len, d_model)
    if start is not None and jnp.ndim(start) == 2:
        return jnp.asarray(table, dtype)[start + jnp.arange(length)]  # (B, L, D)
    rows = table[:length] if start is None else jax.lax.dynamic_slice_in_dim(jnp.asarray(table), start, length)
    return jnp.asarray(rows, dtype)


def relative_buckets(config, query_length: int, key_length: int, bidirectional: bool) -> np.ndarray:
    """(Tq, Tk) T5 buckets of key j relative to query i (numpy, HF's rule)."""
    from shared.families.t5 import relative_position_buckets

    return relative_position_buckets(query_length, key_length, bidirectional, config.relative_attention_num_buckets,
                                      config.relative_attention_max_distance)


def relative_bias(embedding: jax.Array, buckets: np.ndarray, row=None) -> jax.Array:
    """embedding (buckets, H) read at the (Tq, Tk) buckets -> (1, H, Tq, Tk); row (traced): (1, H, 1, Tk)."""
    table = jnp.asarray(buckets)
    if row is not None:
        table = jax.lax.dynamic_slice_in_dim(table, row, 1, axis=0)  # (1, Tk)
    return embedding[table].transpose(2, 0, 1)[None]


def rope_at(config, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """positions (B, T) -> cos, sin (B, T, K) (shared/families/causal_lm.rope_tables)."""
    from shared.families.causal_lm import rope_tables

    cos, sin = rope_tables(config)
    return jnp.asarray(cos)[positions], jnp.asarray(sin)[positions]


def rotate_half(x: jax.Array) -> jax.Array:
    """HF's rotary layout: (x1, x2) -> (-x2, x1) over the two halves of the last axis."""
    half = x.shape[-1] // 2
    return jnp.concatenate((-x[..., half:], x[..., :half]), axis=-1)


def rotate(x: jax.Array, rope: tuple[jax.Array, jax.Array]) -> jax.Array:
    """x (B, heads, T, K) rotated by cos, sin (B, T, K): x * cos + rotate_half(x) * sin, in x's dtype."""
    cos, sin = (t[:, None].astype(x.dtype) for t in rope)  # (B, 1, T, K)
    return x * cos + rotate_half(x) * sin


__all__ = ["relative_bias", "relative_buckets", "rope_at", "rotate", "rotate_half", "sinusoid"]
