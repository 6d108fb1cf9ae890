"""One attention for every family (book Transformer, T5, causal LMs), with its key/value cache.

Axis letters (shared/parity/axes.py, shared/decoding/generation.py): B batch, T queries, S keys, D model width,
H query heads, G key/value heads (grouped-query: query head h reads key/value head h // (H / G)),
R = H / G query heads per key/value head, K head size, N cache slots.

What differs between families is configuration, not code:
  * projections: q_proj/k_proj/v_proj/out_proj (book, T5), q_proj/k_proj/v_proj/o_proj (Llama) or
    GPT-2's fused c_attn [q | k | v] + o_proj; biases or not (names reach checkpoints: fixed);
  * scale: 1/sqrt(K), or none (T5);
  * an additive bias on the scores (T5's relative positions, `positions.RelativeBias`);
  * rotary q and k (`positions.rotate`, applied by the caller's `rope` tables);
  * masks: (B, T|1, S) booleans from `padding_mask`, `causal_mask` (with room for a sliding window);
  * the kernel: "math" (written out: the reference, dropout on the probabilities) or "fused"
    (jax.nn.dot_product_attention; no dropout, so a training step with attention dropout on uses
    the math path).

Rounding (docs/ROUNDING.md): scores q.k accumulate in float32 and are rounded once to q's dtype
(float16 excepted: its range overflows), then scale, bias, mask and softmax are one float32 chain
(`attention_probs`) rounded once to v's dtype.

Cache: {"k", "v"} (B, G, N, K) per attention, preallocated; `Attention.cached` writes the new
keys/values of T positions at slot `slot` (prefill: T = prompt length at slot 0; a decoding
step: T = 1 at slot t) and attends over all N slots, the mask hiding the empty ones.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_impl.layers import Dense, Dropout, round_to, upcast_dtype
from jax_impl.positions import relative_bias, rotate
from shared.parity.numerics import mask_fill_value

ATTENTION_KERNELS = ("math", "fused")  # the same names in torch_impl


def check_kernel(kernel: str) -> str:
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; expected one of {', '.join(ATTENTION_KERNELS)}")
    return kernel


def fused_implementation(dtype) -> str | None:
    """jax.nn.dot_product_attention's implementation: cuDNN flash attention for 16-bit on a GPU.

    TWINFORMER_JAX_ATTENTION=xla|cudnn overrides (cuDNN supports only some shapes and dtypes).
    """
    choice = os.environ.get("TWINFORMER_JAX_ATTENTION", "auto")
    if choice != "auto":
        return choice
    sixteen_bit = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if sixteen_bit and jax.default_backend() == "gpu" else "xla"


# -- masks (True = the query may attend the key) ---------------------------------------------------
def padding_mask(keep: jax.Array) -> jax.Array:
    """(B, S) real keys -> (B, 1, S)."""
    return keep[:, None, :]


def causal_mask(query_positions: jax.Array, key_positions: jax.Array, window: int | None = None) -> jax.Array:
    """(T,), (S,) positions -> (1, T, S): key s visible from query t when s <= t (and t - s < window).

    `window` (None = unlimited) is the sliding-window attention of Mistral-style models.
    """
    q, k = query_positions.astype(jnp.int32)[:, None], key_positions.astype(jnp.int32)[None, :]  # int64 under x64
    allowed = k <= q
    if window is not None:
        allowed &= q - k < window
    return allowed[None]


# -- the kernel --------------------------------------------------------------------------------------
def attention_probs(scores: jax.Array, mask: jax.Array, scale: float | None, bias: jax.Array | None = None) -> jax.Array:
    """softmax(scores * scale + bias, masked) as one float32 chain (16-bit scores widened first).

    scores (B, H, T, S); mask (B, T|1, S); bias broadcastable to (B, H, T, S). `scores * (1 /
    sqrt(K))` on a bf16 array would round the Python float to bf16 and the product again, where
    torch multiplies by a float32 constant.
    """
    h = scores.astype(upcast_dtype(scores.dtype))
    if scale is not None:
        h = h * scale
    if bias is not None:
        h = h + bias.astype(h.dtype)
    fill = mask_fill_value(jnp.dtype(h.dtype).name)
    return jax.nn.softmax(jnp.where(mask[:, None, :, :], h, jnp.asarray(fill, h.dtype)), axis=-1)  # (B, H, T, S)


def grouped(x: jax.Array, groups: int) -> jax.Array:
    """(B, H, ...) -> (B, G, R, ...): query head h = g * R + r reads key/value head g."""
    B, H = x.shape[:2]
    return x.reshape(B, groups, H // groups, *x.shape[2:])


class Attention(nn.Module):
    """softmax(Q K^T * scale + bias, masked) V over H query heads and G key/value heads.

    `out_name` names the output projection ("out_proj" book/T5, "o_proj" causal LMs);
    `fused_qkv` makes q/k/v one `c_attn` Dense laid out [q | k | v] (GPT-2); `scaled` False drops
    1/sqrt(K) (T5). The module holds only projections and dropout: positions (bias, rope) come from
    the caller, so every family composes the same attention.
    """

    config: Any  # shared.config.model_config.ModelConfig
    dtype: Any = None  # compute dtype of the projections (shared/parity/mixed_precision.py); None: the params'
    kernel: str = "math"
    num_kv_heads: int | None = None  # G; None = H
    use_bias: bool = False
    scaled: bool = True
    fused_qkv: bool = False
    out_name: str = "out_proj"
    out_bias: bool | None = None  # the output projection's bias; None: use_bias (Qwen2: q/k/v only)
    relative_buckets: int = 0  # > 0: this attention holds T5's relative_attention_bias table (buckets, H)

    def setup(self) -> None:
        c = self.config
        check_kernel(self.kernel)
        H, G, K = c.num_heads, self.heads_kv, c.head_dim
        dense = lambda n: Dense(n, use_bias=self.use_bias, dtype=self.dtype)  # noqa: E731
        if self.fused_qkv:
            self.c_attn = dense((H + 2 * G) * K)
        else:
            self.q_proj, self.k_proj, self.v_proj = dense(H * K), dense(G * K), dense(G * K)
        out_bias = self.use_bias if self.out_bias is None else self.out_bias
        setattr(self, self.out_name, Dense(c.d_model, use_bias=out_bias, dtype=self.dtype))
        self.attn_dropout = Dropout(c.attention_dropout)
        if self.relative_buckets:
            self.relative_attention_bias = nn.Embed(self.relative_buckets, c.num_heads)

    def position_bias(self, buckets, row=None) -> jax.Array:
        """(1, H, Tq, Tk) bias of a (Tq, Tk) numpy bucket table (positions.relative_buckets), or of
        its one row `row` (a traced decoding step) -> (1, H, 1, Tk)."""
        return relative_bias(self.relative_attention_bias.embedding, buckets, row)

    @property
    def heads_kv(self) -> int:
        return self.config.num_heads if self.num_kv_heads is None else self.num_kv_heads

    def _split(self, x: jax.Array, heads: int) -> jax.Array:
        B, L, _ = x.shape
        return x.reshape(B, L, heads, self.config.head_dim).transpose(0, 2, 1, 3)  # (B, heads, L, K)

    def project(self, x: jax.Array, memory: jax.Array, rope=None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x (B, T, D), memory (B, S, D) -> q (B, H, T, K), k, v (B, G, S, K); rope: cos, sin (B, T, K)."""
        H, G, K = self.config.num_heads, self.heads_kv, self.config.head_dim
        if self.fused_qkv:  # self-attention only (GPT-2): one matmul, split [q | k | v] as HF does
            qkv = self.c_attn(x)
            q, k, v = qkv[..., : H * K], qkv[..., H * K : (H + G) * K], qkv[..., (H + G) * K :]
        else:
            q, k, v = self.q_proj(x), self.k_proj(memory), self.v_proj(memory)
        q, k, v = self._split(q, H), self._split(k, G), self._split(v, G)
        if rope is not None:
            q, k = rotate(q, rope), rotate(k, rope)
        return q, k, v

    def queries(self, x: jax.Array) -> jax.Array:
        """x (B, T, D) -> q (B, H, T, K) (cross-attention reading a cached memory)."""
        return self._split(self.q_proj(x), self.config.num_heads)

    def keys_values(self, memory: jax.Array) -> dict:
        """memory (B, S, D) -> the cross-attention cache {"k", "v"} (B, G, S, K), computed once."""
        G = self.heads_kv
        return {"k": self._split(self.k_proj(memory), G), "v": self._split(self.v_proj(memory), G)}

    def __call__(self, x, memory, mask, deterministic: bool, bias=None, rope=None) -> jax.Array:
        """x (B, T, D) attends to memory (B, S, D); mask (B, T|1, S) True where allowed -> (B, T, D)."""
        q, k, v = self.project(x, memory, rope)
        return self.attend(q, k, v, mask, deterministic, bias)

    def cached(self, x, cache: dict, slot, mask, bias=None, rope=None) -> tuple[jax.Array, dict]:
        """Self-attention of x (B, T, D) at slots slot .. slot + T - 1 of cache {"k", "v"} (B, G, N, K).

        Writes the new keys/values there, then attends over all N slots (mask (B, T|1, N) hides the
        empty and the future ones); dropout off. -> (B, T, D), the updated cache.
        """
        q, k, v = self.project(x, x, rope)
        cache = write_slots(cache, k, v, slot)
        return self.attend(q, cache["k"], cache["v"], mask, True, bias), cache

    def attend(self, q, k, v, mask, deterministic: bool, bias=None) -> jax.Array:
        """q (B, H, T, K), k, v (B, G, S, K), mask (B, T|1, S) -> out_proj(context) (B, T, D)."""
        c, G = self.config, self.heads_kv
        scale = 1.0 / math.sqrt(c.head_dim) if self.scaled else None
        dropout_on = not deterministic and c.attention_dropout > 0.0
        B, H, T, _ = q.shape
        if self.kernel == "fused" and not dropout_on:
            # (B, L, heads, K), the layout jax.nn.dot_product_attention takes (G key/value heads
            # native). A fully masked row gets one large negative score everywhere: uniform, as math.
            q_, k_, v_ = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
            implementation = fused_implementation(q.dtype)
            options = dict(mask=mask[:, None, :, :], bias=None if bias is None else bias.astype(q.dtype),
                           scale=1.0 if scale is None else scale)
            # jax's kernel mixes its own float32 constants in (strict promotion refuses that in float64)
            with jax.numpy_dtype_promotion("standard"):
                try:
                    context = jax.nn.dot_product_attention(q_, k_, v_, **options, implementation=implementation)
                except (NotImplementedError, ValueError) as error:  # cuDNN rejects this shape/dtype at trace time
                    if implementation != "cudnn":
                        raise
                    warnings.warn(f"cuDNN attention unavailable ({error}); using XLA's", stacklevel=2)
                    context = jax.nn.dot_product_attention(q_, k_, v_, **options, implementation="xla")
            return self._out(context.reshape(B, T, -1))  # context (B, T, H, K)
        # (B, G, R, T, S): accumulated in float32, rounded once to q's dtype (as torch's matmul), except
        # in float16, whose range (65504) a q.k of base-size magnitudes overflows: float32 there
        # Plain heads (G = H) keep the ungrouped einsums: XLA may order a 5-D contraction's sums
        # differently, which moves bf16 roundings (docs/ROUNDING.md; test_rounding_alignment.py).
        if G == H:
            scores = jnp.einsum("bhtk,bhsk->bhts", q, k, preferred_element_type=upcast_dtype(q.dtype))
        else:
            scores = jnp.einsum("bgrtk,bgsk->bgrts", grouped(q, G), k, preferred_element_type=upcast_dtype(q.dtype))
        if q.dtype != jnp.float16:
            scores = round_to(scores, q.dtype)
        probs = round_to(attention_probs(scores.reshape(B, H, T, -1), mask, scale, bias), v.dtype)  # (B, H, T, S)
        probs = self.attn_dropout(probs, deterministic=deterministic)
        if G == H:
            context = jnp.einsum("bhts,bhsk->bhtk", probs, v)  # (B, H, T, K)
        else:
            context = jnp.einsum("bgrts,bgsk->bgrtk", grouped(probs, G), v).reshape(B, H, T, -1)
        return self._out(context.transpose(0, 2, 1, 3).reshape(B, T, -1))

    def _out(self, context: jax.Array) -> jax.Array:
        return getattr(self, self.out_name)(context)  # (B, T, D)


# -- the cache's pytree operations -------------------------------------------------------------------
def write_slots(cache: dict, k: jax.Array, v: jax.Array, slot) -> dict:
    """cache {"k", "v"} (B, G, N, K) with k, v (B, G, T, K) written at slots slot .. slot + T - 1.

    slot (B,) instead of a scalar (continuous batching, twinformer/serving): T = 1 and row b's key
    and value go to its own slot slot[b].
    """
    if jnp.ndim(slot) == 1:
        rows = jnp.arange(k.shape[0])
        return {"k": cache["k"].at[rows, :, slot].set(k[:, :, 0].astype(cache["k"].dtype)),  # (B, G, K) at (b, slot[b])
                "v": cache["v"].at[rows, :, slot].set(v[:, :, 0].astype(cache["v"].dtype))}
    return {
        "k": jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), slot, axis=2),
        "v": jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), slot, axis=2),
    }


def empty_cache(rows: int, heads_kv: int, slots: int, head_dim: int, dtype) -> dict:
    """{"k", "v"} (B, G, N, K) zeros: one attention's preallocated self-attention cache."""
    empty = jnp.zeros((rows, heads_kv, slots, head_dim), dtype)
    return {"k": empty, "v": empty}


def reorder_rows(tree, rows: jax.Array):
    """Every leaf's row i replaced by row rows[i] (beam search moving hypotheses)."""
    return jax.tree_util.tree_map(lambda a: jnp.take(a, rows, axis=0), tree)


__all__ = [
    "ATTENTION_KERNELS",
    "Attention",
    "attention_probs",
    "causal_mask",
    "check_kernel",
    "empty_cache",
    "fused_implementation",
    "padding_mask",
    "reorder_rows",
    "write_slots",
]
