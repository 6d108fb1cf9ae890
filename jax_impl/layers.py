"""Building blocks of the Flax Linen Transformer (axis letters: shared/axes.py).

Submodules are named explicitly in `setup()` with the same attribute names as torch_impl/layers.py,
so parameter paths map onto state-dict keys through shared/weight_table.py alone.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from shared.config import ModelConfig
from shared.numerics import mask_fill_value


def upcast_dtype(dtype) -> jnp.dtype:
    """Where norms, softmax and Dense accumulate: float32 for 16-bit inputs, else the input's dtype."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if jnp.finfo(dtype).bits < 32 else dtype


class Norm(nn.Module):
    """LayerNorm, or the book's chapter-3 norm: scale * (x - mean) / (std_unbiased + eps) + bias.

    Written out (not flax.linen.LayerNorm) to use torch's two-pass variance and the config's eps.
    """

    config: ModelConfig

    def setup(self) -> None:
        D = self.config.d_model
        self.scale = self.param("scale", nn.initializers.ones, (D,))
        self.bias = self.param("bias", nn.initializers.zeros, (D,))

    def __call__(self, x: jax.Array) -> jax.Array:
        # Statistics in float32 whatever the input dtype, rounded once at the end (as torch_impl).
        compute = upcast_dtype(x.dtype)
        h, scale, bias = x.astype(compute), self.scale.astype(compute), self.bias.astype(compute)
        centered = h - h.mean(axis=-1, keepdims=True)
        if self.config.norm_kind == "layernorm":
            variance = jnp.mean(jnp.square(centered), axis=-1, keepdims=True)  # two-pass, as torch
            out = centered * jax.lax.rsqrt(variance + self.config.norm_eps) * scale + bias
        else:
            std = jnp.sqrt(jnp.sum(jnp.square(centered), axis=-1, keepdims=True) / (x.shape[-1] - 1))
            out = scale * centered / (std + self.config.norm_eps) + bias
        return out.astype(x.dtype)


def activation(name: str, x: jax.Array) -> jax.Array:
    if name == "relu":
        return jax.nn.relu(x)
    if name == "silu":
        return jax.nn.silu(x)
    # jax.nn.gelu defaults to the tanh approximation: say which one, always.
    return jax.nn.gelu(x, approximate=name == "gelu_tanh")


class Dense(nn.Dense):
    """flax.linen.Dense whose bias is added before rounding to a low-precision dtype.

    torch's Linear on bf16/fp16 is one fused addmm (float32 accumulate, + bias, round once);
    nn.Dense rounds the product, then rounds again after the bias. Same params, same float32
    result; in bf16 this removes a systematic extra rounding from every layer.
    """

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features), self.param_dtype)
        accumulate = upcast_dtype(jnp.result_type(inputs, kernel))
        out = jnp.matmul(inputs, kernel, precision=self.precision, preferred_element_type=accumulate)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            out = out + bias.astype(accumulate)
        return out.astype(jnp.result_type(inputs, kernel))


class MultiHeadAttention(nn.Module):
    """softmax(Q K^T / sqrt(K) masked) V over H heads, with separate q/k/v/out projections."""

    config: ModelConfig

    def setup(self) -> None:
        D, bias = self.config.d_model, self.config.bias
        self.q_proj = Dense(D, use_bias=bias)
        self.k_proj = Dense(D, use_bias=bias)
        self.v_proj = Dense(D, use_bias=bias)
        self.out_proj = Dense(D, use_bias=bias)
        self.attn_dropout = nn.Dropout(self.config.attention_dropout)

    def split_heads(self, x: jax.Array) -> jax.Array:
        B, L, _ = x.shape
        return x.reshape(B, L, self.config.num_heads, self.config.head_dim).transpose(0, 2, 1, 3)  # (B, H, L, K)

    def __call__(self, x: jax.Array, memory: jax.Array, mask: jax.Array, deterministic: bool) -> jax.Array:
        """x (B, T, D) attends to memory (B, S, D); mask (B, T|1, S) is True where allowed."""
        q = self.split_heads(self.q_proj(x))  # (B, H, T, K)
        k = self.split_heads(self.k_proj(memory))  # (B, H, S, K)
        v = self.split_heads(self.v_proj(memory))  # (B, H, S, K)
        scores = jnp.einsum("bhtk,bhsk->bhts", q, k) * (1.0 / math.sqrt(self.config.head_dim))
        fill = mask_fill_value(jnp.dtype(scores.dtype).name)
        scores = jnp.where(mask[:, None, :, :], scores, jnp.asarray(fill, scores.dtype))  # (B, H, T, S)
        probs = jax.nn.softmax(scores.astype(upcast_dtype(scores.dtype)), axis=-1).astype(v.dtype)  # as torch_impl
        probs = self.attn_dropout(probs, deterministic=deterministic)
        context = jnp.einsum("bhts,bhsk->bhtk", probs, v)  # (B, H, T, K)
        B, _, T, _ = context.shape
        return self.out_proj(context.transpose(0, 2, 1, 3).reshape(B, T, -1))  # (B, T, D)


class FeedForward(nn.Module):
    """fc2(dropout(act(fc1(x)))): D -> F -> D."""

    config: ModelConfig

    def setup(self) -> None:
        self.fc1 = Dense(self.config.d_ff, use_bias=self.config.bias)
        self.fc2 = Dense(self.config.d_model, use_bias=self.config.bias)
        self.dropout = nn.Dropout(self.config.dropout)

    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        hidden = activation(self.config.activation, self.fc1(x))  # (B, L, F)
        return self.fc2(self.dropout(hidden, deterministic=deterministic))


def residual(x, norm: Norm, sublayer, dropout: nn.Dropout, pre_norm: bool, deterministic: bool):
    """One residual sub-layer: post-LN Norm(x + drop(f(x))) or pre-LN x + drop(f(Norm(x)))."""
    if pre_norm:
        return x + dropout(sublayer(norm(x)), deterministic=deterministic)
    return norm(x + dropout(sublayer(x), deterministic=deterministic))


class OutputBias(nn.Module):
    """The output layer's bias when its weight is tied to an embedding table."""

    vocab_size: int

    def setup(self) -> None:
        self.bias = self.param("bias", nn.initializers.zeros, (self.vocab_size,))
