"""Building blocks of the Flax Linen Transformer (axis letters: shared/parity/axes.py).

Submodules are named explicitly in `setup()` with the same attribute names as torch_impl/layers.py,
so parameter paths map onto state-dict keys through shared/checkpoints/weight_table.py alone.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from shared.config.model_config import ModelConfig


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
    """One norm for every family, by config.norm_kind:

    "layernorm"  scale * (x - mean) / sqrt(var + eps) + bias (two-pass variance, as torch);
    "rms"        scale * x / sqrt(mean(x^2) + eps), no bias (T5, Llama): HF's formula, the
                 statistics in float32 and the normalised x rounded to x's dtype before the scale;
    otherwise    the book's chapter-3 norm: scale * (x - mean) / (std_unbiased + eps) + bias.
    Written out (not flax.linen.LayerNorm) to use torch's variance and the config's eps.
    """

    config: ModelConfig

    def setup(self) -> None:
        D = self.config.d_model
        self.scale = self.param("scale", nn.initializers.ones, (D,))
        if self.config.norm_kind != "rms":
            self.bias = self.param("bias", nn.initializers.zeros, (D,))

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.config.norm_kind == "rms":
            h = x.astype(upcast_dtype(x.dtype))
            variance = jnp.mean(jnp.square(h), axis=-1, keepdims=True)  # (..., 1)
            return self.scale.astype(x.dtype) * (h * jax.lax.rsqrt(variance + self.config.norm_eps)).astype(x.dtype)
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


class FeedForward(nn.Module):
    """One feed-forward block for every family: D -> F -> D.

    plain:  names[2](dropout(act(names[1] x)))                 book (fc1, fc2), T5 v1.0 (wi, wo), GPT-2
    gated:  names[2](dropout(act(names[0] x) * names[1] x))    T5 v1.1 (wi_0, wi_1, wo), Llama (SwiGLU)
    names = (gate, up, down) attribute names (gate None when plain): they reach checkpoints.
    """

    config: ModelConfig
    dtype: Any = None  # compute dtype of the Dense layers (shared/parity/mixed_precision.py); None: the params'
    names: tuple = (None, "fc1", "fc2")
    use_bias: bool = True
    inner_dropout: bool = True  # dropout between the two matmuls (book, T5; not the causal LMs)

    def setup(self) -> None:
        c = self.config
        gate, up, down = self.names
        if gate is not None:
            setattr(self, gate, Dense(c.d_ff, use_bias=self.use_bias, dtype=self.dtype))
        setattr(self, up, Dense(c.d_ff, use_bias=self.use_bias, dtype=self.dtype))
        setattr(self, down, Dense(c.d_model, use_bias=self.use_bias, dtype=self.dtype))
        if self.inner_dropout:
            self.dropout = Dropout(c.dropout)

    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        gate, up, down = self.names
        if gate is None:
            hidden = activation(self.config.activation, getattr(self, up)(x))  # (B, L, F)
        else:
            hidden = activation(self.config.activation, getattr(self, gate)(x)) * getattr(self, up)(x)  # (B, L, F)
        if self.inner_dropout:
            hidden = self.dropout(hidden, deterministic=deterministic)
        return getattr(self, down)(hidden)


def add(a: jax.Array, b: jax.Array) -> jax.Array:
    """a + b in a's dtype: in float32 and rounded once for a 16-bit a; under bf16-mixed a float32
    stream plus a widened bf16 sub-layer output (strict promotion would refuse the mixed sum)."""
    compute = upcast_dtype(a.dtype)
    return round_to(a.astype(compute) + b.astype(compute), a.dtype)


def residual(x, norm: Norm, sublayer, dropout: Dropout, pre_norm: bool, deterministic: bool):
    """One residual sub-layer: post-LN Norm(x + drop(f(x))) or pre-LN x + drop(f(Norm(x))).

    The sum is in the stream's dtype, in float32 and rounded once for a 16-bit stream (the rounding
    pinned by round_to); under bf16-mixed a float32 stream plus a widened bf16 sub-layer output.
    """

    if pre_norm:
        return add(x, dropout(sublayer(norm(x)), deterministic=deterministic))
    return norm(add(x, dropout(sublayer(x), deterministic=deterministic)))


class OutputBias(nn.Module):
    """The output layer's bias when its weight is tied to an embedding table."""

    vocab_size: int

    def setup(self) -> None:
        self.bias = self.param("bias", nn.initializers.zeros, (self.vocab_size,))
