"""Building blocks of the Flax Linen Transformer (axis letters: shared/axes.py).

Submodules are named explicitly in `setup()` with the same attribute names as torch_impl/layers.py,
so parameter paths map onto state-dict keys through shared/weight_table.py alone.
"""

from __future__ import annotations

import math
import math
import os
import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from shared.config import ModelConfig
from shared.numerics import mask_fill_value


def upcast_dtype(dtype) -> jnp.dtype:
    """Where norms, softmax and Dense accumulate: float32 for 16-bit inputs, else the input's dtype."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if jnp.finfo(dtype).bits < 32 else dtype


def round_to(x: jax.Array, dtype) -> jax.Array:
    """x (a float32 chain's result) rounded once to `dtype`, at a point XLA cannot move.

    XLA may drop an f32 -> bf16 -> f32 convert pair when allowed excess precision (the GPU
    pipeline's SimplifyFPConversions), which would leave the next op reading the unrounded value
    while PyTorch reads the rounded one. reduce_precision is not a convert: it stays, and it rounds
    to nearest-even exactly as the cast does (bfloat16 keeps float32's exponent range, so nothing
    else changes). float16 is cast only: reduce_precision would flush its subnormals to zero.
    """
    dtype = jnp.dtype(dtype)
    if x.dtype == dtype:
        return x
    if dtype == jnp.bfloat16 and x.dtype == jnp.float32:
        x = jax.lax.reduce_precision(x, exponent_bits=8, mantissa_bits=7)
    return x.astype(dtype)


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
        return round_to(out, x.dtype)


def activation(name: str, x: jax.Array) -> jax.Array:
    """The activation computed in float32 for 16-bit inputs and rounded once (as torch's kernels).

    jax.nn.gelu on a bf16 array would round after each of its ops (measured: 24% of outputs 1 ulp
    off torch's); widened, it is one float32 chain.
    """
    h = x.astype(upcast_dtype(x.dtype))
    if name == "relu":
        out = jax.nn.relu(h)
    elif name == "silu":
        out = jax.nn.silu(h)
    else:
        # jax.nn.gelu defaults to the tanh approximation: say which one, always.
        out = jax.nn.gelu(h, approximate=name == "gelu_tanh")
    return round_to(out, x.dtype)


class Dropout(nn.Module):
    """x * keep * (1 / (1 - rate)) with keep ~ Bernoulli(1 - rate): torch's formula, one rounding.

    flax.linen.Dropout computes x / keep_prob, and with a bf16 input the Python float keep_prob is
    rounded to bf16 first (0.9 -> 0.8984375): a different scale from torch's float32 1/(1-p). The
    mask is drawn exactly as flax.linen.Dropout draws it (same RNG stream, same keep decisions).
    """

    rate: float
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if self.rate == 0.0 or deterministic:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep_prob = 1.0 - self.rate
        keep = jax.random.bernoulli(self.make_rng(self.rng_collection), p=keep_prob, shape=x.shape)
        compute = upcast_dtype(x.dtype)
        scaled = x.astype(compute) * np.asarray(1.0 / keep_prob, compute)
        return jnp.where(keep, round_to(scaled, x.dtype), jnp.zeros((), x.dtype))


def linear(
    inputs: jax.Array, kernel: jax.Array, bias: jax.Array | None, dtype: Any = None, precision: Any = None
) -> jax.Array:
    """inputs (..., I) @ kernel (I, O) + bias (O,) as torch's Linear computes it.

    torch's Linear on bf16/fp16 is one fused addmm (float32 accumulate, + bias, round once), and
    under torch.autocast its input, weight and bias are first cast to the compute dtype. `dtype`
    is that compute dtype (None: the operands' own, which must agree).
    """
    if dtype is not None:
        inputs, kernel = inputs.astype(dtype), kernel.astype(dtype)
        bias = None if bias is None else bias.astype(dtype)
    out_dtype = jnp.result_type(inputs, kernel)
    accumulate = upcast_dtype(out_dtype)
    out = jnp.matmul(inputs, kernel, precision=precision, preferred_element_type=accumulate)
    if bias is not None:
        out = out + bias.astype(accumulate)
    return round_to(out, out_dtype)


class Dense(nn.Dense):
    """flax.linen.Dense computed by `linear`: the bias added before rounding, as torch's Linear.

    nn.Dense rounds the product, then rounds again after the bias. Same params, same float32
    result; in bf16 this removes a systematic extra rounding from every layer. `dtype` (nn.Dense's
    field) is the compute dtype: None keeps the operands' own, "bfloat16" is bf16-mixed.
    """

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        return linear(inputs, kernel, bias, self.dtype, self.precision)


def attention_probs(scores: jax.Array, mask: jax.Array, head_dim: int) -> jax.Array:
    """softmax(scores / sqrt(K) masked) as one float32 chain (16-bit scores widened first).

    `scores * (1 / sqrt(K))` on a bf16 array would round the Python float to bf16 and the product
    again, where torch multiplies by a float32 constant. mask (B, T|1, S).
    """
    h = scores.astype(upcast_dtype(scores.dtype)) * (1.0 / math.sqrt(head_dim))
    fill = mask_fill_value(jnp.dtype(h.dtype).name)
    return jax.nn.softmax(jnp.where(mask[:, None, :, :], h, jnp.asarray(fill, h.dtype)), axis=-1)  # (B, H, T, S)


ATTENTION_KERNELS = ("math", "fused")  # the same names in torch_impl.layers


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


class MultiHeadAttention(nn.Module):
    """softmax(Q K^T / sqrt(K) masked) V over H heads, with separate q/k/v/out projections.

    kernel "math" writes the attention out (the reference; its probabilities are what the
    intermediates capture records as `attn_dropout`). kernel "fused" calls
    jax.nn.dot_product_attention (cuDNN on a GPU for 16-bit inputs); it has no attention dropout,
    so a training step with attention dropout on uses the math path. Parity:
    parity_tests/test_fast_paths.py.
    """

    config: ModelConfig
    dtype: Any = None  # compute dtype of the projections (shared/mixed_precision.py); None: the params'
    kernel: str = "math"

    def setup(self) -> None:
        D, bias = self.config.d_model, self.config.bias
        check_kernel(self.kernel)
        self.q_proj = Dense(D, use_bias=bias, dtype=self.dtype)
        self.k_proj = Dense(D, use_bias=bias, dtype=self.dtype)
        self.v_proj = Dense(D, use_bias=bias, dtype=self.dtype)
        self.out_proj = Dense(D, use_bias=bias, dtype=self.dtype)
        self.attn_dropout = Dropout(self.config.attention_dropout)

    def split_heads(self, x: jax.Array) -> jax.Array:
        B, L, _ = x.shape
        return x.reshape(B, L, self.config.num_heads, self.config.head_dim).transpose(0, 2, 1, 3)  # (B, H, L, K)

    def queries(self, x: jax.Array) -> jax.Array:
        """x (B, T, D) -> q (B, H, T, K)."""
        return self.split_heads(self.q_proj(x))

    def keys_values(self, memory: jax.Array) -> tuple[jax.Array, jax.Array]:
        """memory (B, S, D) -> k, v (B, H, S, K) each."""
        return self.split_heads(self.k_proj(memory)), self.split_heads(self.v_proj(memory))

    def __call__(self, x: jax.Array, memory: jax.Array, mask: jax.Array, deterministic: bool) -> jax.Array:
        """x (B, T, D) attends to memory (B, S, D); mask (B, T|1, S) is True where allowed."""
        return self.attend(self.queries(x), *self.keys_values(memory), mask, deterministic)

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, deterministic: bool) -> jax.Array:
        """q (B, H, T, K), k, v (B, H, S, K), mask (B, T|1, S) -> out_proj(context) (B, T, D)."""
        dropout_on = not deterministic and self.config.attention_dropout > 0.0
        if self.kernel == "fused" and not dropout_on:
            # (B, H, L, K) -> (B, L, H, K), the layout jax.nn.dot_product_attention takes. A fully
            # masked row gets one large negative score everywhere: uniform, as in the math path.
            q_, k_, v_ = (a.transpose(0, 2, 1, 3) for a in (q, k, v))
            implementation = fused_implementation(q.dtype)
            # jax's kernel mixes its own float32 constants in (strict promotion refuses that in float64)
            with jax.numpy_dtype_promotion("standard"):
                try:
                    context = jax.nn.dot_product_attention(q_, k_, v_, mask=mask[:, None, :, :], implementation=implementation)
                except (NotImplementedError, ValueError) as error:  # cuDNN rejects this shape/dtype at trace time
                    if implementation != "cudnn":
                        raise
                    warnings.warn(f"cuDNN attention unavailable ({error}); using XLA's", stacklevel=2)
                    context = jax.nn.dot_product_attention(q_, k_, v_, mask=mask[:, None, :, :], implementation="xla")
            # context: (B, T, H, K)
            B, T = context.shape[:2]
            return self.out_proj(context.reshape(B, T, -1))  # (B, T, D)
        # (B, H, T, S): a matmul accumulated in float32, rounded once to q's dtype (as torch's matmul),
        # except in float16, whose range (65504) a q.k of base-size magnitudes overflows: float32 there
        scores = jnp.einsum("bhtk,bhsk->bhts", q, k, preferred_element_type=upcast_dtype(q.dtype))
        if q.dtype != jnp.float16:
            scores = round_to(scores, q.dtype)
        probs = round_to(attention_probs(scores, mask, self.config.head_dim), v.dtype)
        probs = self.attn_dropout(probs, deterministic=deterministic)
        context = jnp.einsum("bhts,bhsk->bhtk", probs, v)  # (B, H, T, K), read by out_proj as is
        B, _, T, _ = context.shape
        return self.out_proj(context.transpose(0, 2, 1, 3).reshape(B, T, -1))  # (B, T, D)


class FeedForward(nn.Module):
    """fc2(dropout(act(fc1(x)))): D -> F -> D."""

    config: ModelConfig
    dtype: Any = None  # compute dtype of fc1/fc2 (shared/mixed_precision.py); None: the params'

    def setup(self) -> None:
        self.fc1 = Dense(self.config.d_ff, use_bias=self.config.bias, dtype=self.dtype)
        self.fc2 = Dense(self.config.d_model, use_bias=self.config.bias, dtype=self.dtype)
        self.dropout = Dropout(self.config.dropout)

    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        hidden = activation(self.config.activation, self.fc1(x))  # (B, L, F)
        return self.fc2(self.dropout(hidden, deterministic=deterministic))


def residual(x, norm: Norm, sublayer, dropout: Dropout, pre_norm: bool, deterministic: bool):
    """One residual sub-layer: post-LN Norm(x + drop(f(x))) or pre-LN x + drop(f(Norm(x))).

    The sum is in the stream's dtype, in float32 and rounded once for a 16-bit stream (the rounding
    pinned by round_to); under bf16-mixed a float32 stream plus a widened bf16 sub-layer output.
    """

    def add(a, b):
        compute = upcast_dtype(a.dtype)
        return round_to(a.astype(compute) + b.astype(compute), a.dtype)

    if pre_norm:
        return add(x, dropout(sublayer(norm(x)), deterministic=deterministic))
    return norm(add(x, dropout(sublayer(x), deterministic=deterministic)))


class OutputBias(nn.Module):
    """The output layer's bias when its weight is tied to an embedding table."""

    vocab_size: int

    def setup(self) -> None:
        self.bias = self.param("bias", nn.initializers.zeros, (self.vocab_size,))
