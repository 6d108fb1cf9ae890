"""Building blocks of the PyTorch Transformer (axis letters: shared/parity/axes.py).

Attribute names are the checkpoint's key names (see shared/checkpoints/weight_table.py) and match the Flax
modules in jax_impl/layers.py one for one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from shared.config.model_config import ModelConfig
from shared.parity.numerics import sinusoid_table
from torch_impl.attention import ATTENTION_KERNELS, Attention, attention_probs, check_kernel, upcast_dtype  # noqa: F401
from torch_impl.dropout import Dropout


class Norm(nn.Module):
    """The one norm module of every family (statistics in float32 whatever the input dtype):

    "layernorm": LayerNorm; "book": the chapter-3 norm weight * (x - mean) / (std_unbiased + eps)
    + bias; "rms": weight * x / sqrt(mean(x^2) + eps), no mean, no bias (T5, Llama), rounded to
    the input dtype before the weight as HF's T5LayerNorm / LlamaRMSNorm do in 16-bit.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.kind, self.eps = config.norm_kind, config.norm_eps
        self.weight = nn.Parameter(torch.ones(config.d_model))
        if self.kind != "rms":
            self.bias = nn.Parameter(torch.zeros(config.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compute = upcast_dtype(x.dtype)
        h = x.to(compute)
        if self.kind == "rms":
            variance = h.pow(2).mean(dim=-1, keepdim=True)  # (..., 1)
            return self.weight.to(x.dtype) * (h * torch.rsqrt(variance + self.eps)).to(x.dtype)
        # Rounded once at the end: the same recipe as the Flax twin, so bf16/fp16 runs differ
        # only by matmul rounding.
        weight, bias = self.weight.to(compute), self.bias.to(compute)
        if self.kind == "layernorm":
            out = F.layer_norm(h, h.shape[-1:], weight, bias, self.eps)
        else:
            mean = h.mean(dim=-1, keepdim=True)
            std = h.std(dim=-1, keepdim=True, unbiased=True)
            out = weight * (h - mean) / (std + self.eps) + bias
        return out.to(x.dtype)


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    """The activation computed in float32 for 16-bit inputs and rounded once (shared/parity/mixed_precision.py).

    torch's bf16 GELU kernel already widens internally; the explicit cast says so and is what the
    Flax twin does (jax.nn.gelu on bf16 would round after each of its ops).
    """
    h = x.to(upcast_dtype(x.dtype))
    if name == "relu":
        out = F.relu(h)
    elif name == "silu":
        out = F.silu(h)
    else:
        out = F.gelu(h, approximate="tanh" if name == "gelu_tanh" else "none")
    return out.to(x.dtype)


class MultiHeadAttention(Attention):
    """The book's attention: softmax(Q K^T / sqrt(K) masked) V with q/k/v/out projections.

    kernel "math" writes the attention out (the reference path, whose probabilities the
    intermediates capture sees: `attn_dropout`'s input); kernel "fused" computes the same function
    with one GEMM for q/k/v on the concatenated weights (the parameters and checkpoint keys stay
    separate) and F.scaled_dot_product_attention. Parity: parity_tests/test_fast_paths.py.
    """

    def __init__(self, config: ModelConfig, kernel: str = "math"):
        super().__init__(config.num_heads, config.num_heads, config.head_dim, 1.0 / math.sqrt(config.head_dim),
                         config.attention_dropout, kernel)
        D = config.d_model
        self.q_proj = nn.Linear(D, D, bias=config.bias)
        self.k_proj = nn.Linear(D, D, bias=config.bias)
        self.v_proj = nn.Linear(D, D, bias=config.bias)
        self.out_proj = nn.Linear(D, D, bias=config.bias)

    def _fused_projection(self, x: torch.Tensor, projections: tuple[nn.Linear, ...]) -> list[torch.Tensor]:
        """x (B, L, D) through several D -> D projections as one GEMM -> [(B, H, L, K)] per projection."""
        if any(type(p) is not nn.Linear for p in projections):  # wrapped (a LoRA layer): call each
            return [self.split_heads(p(x)) for p in projections]
        weight = torch.cat([p.weight for p in projections])  # (n*D, D)
        bias = torch.cat([p.bias for p in projections]) if projections[0].bias is not None else None
        out = F.linear(x, weight, bias)  # (B, L, n*D)
        return [self.split_heads(part) for part in out.chunk(len(projections), dim=-1)]

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> q (B, H, T, K)."""
        return self.split_heads(self.q_proj(x))

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory (B, S, D) -> k, v (B, H, S, K) each."""
        if self.kernel == "fused":
            k, v = self._fused_projection(memory, (self.k_proj, self.v_proj))
            return k, v
        return self.split_heads(self.k_proj(memory)), self.split_heads(self.v_proj(memory))

    def self_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> q, k, v (B, H, T, K) each, for self-attention."""
        if self.kernel == "fused":  # one GEMM on the concatenated weights
            q, k, v = self._fused_projection(x, (self.q_proj, self.k_proj, self.v_proj))
            return q, k, v
        return self.queries(x), *self.keys_values(x)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) attends to memory (B, S, D); mask (B, T|1, S) is True where allowed."""
        if x is memory:
            return self.attend(*self.self_qkv(x), mask)
        return self.attend(self.queries(x), *self.keys_values(memory), mask)

    def output(self, context: torch.Tensor) -> torch.Tensor:
        return self.out_proj(context)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """q (B, H, T, K), k, v (B, H, S, K), mask (B, T|1, S) -> out_proj(context) (B, T, D)."""
        return self.out_proj(self.context(q, k, v, mask))


class FeedForward(nn.Module):
    """The feed-forward block of every family: D -> F -> D.

    plain: out(dropout(act(up x))); gated (gate given): out(dropout(act(gate x) * up x)). The
    leaves keep each family's checkpoint names (book fc1/fc2; T5 wi or wi_0/wi_1 + wo; causal LM
    gate_proj/up_proj/down_proj), created gate, up, out in that order (the state-dict order).
    dropout=False: no inner dropout module (the causal LMs have none).
    """

    def __init__(self, config: ModelConfig, up: str = "fc1", out: str = "fc2", gate: str | None = None,
                 bias: bool | None = None, dropout: bool = True):
        super().__init__()
        self.activation, self.gated = config.activation, gate is not None
        self.leaves = (up, gate, out)
        bias = config.bias if bias is None else bias
        for leaf in (gate, up, out):
            if leaf is not None:
                n_in, n_out = (config.d_ff, config.d_model) if leaf == out else (config.d_model, config.d_ff)
                setattr(self, leaf, nn.Linear(n_in, n_out, bias=bias))
        self.dropout = Dropout(config.dropout) if dropout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, gate, out = self.leaves
        if gate is not None:
            hidden = activation(self.activation, getattr(self, gate)(x)) * getattr(self, up)(x)  # (B, L, F)
        else:
            hidden = activation(self.activation, getattr(self, up)(x))  # (B, L, F)
        return getattr(self, out)(hidden if self.dropout is None else self.dropout(hidden))


def residual(x: torch.Tensor, norm: Norm, sublayer, dropout: Dropout, pre_norm: bool) -> torch.Tensor:
    """One residual sub-layer: post-LN Norm(x + drop(f(x))) or pre-LN x + drop(f(Norm(x))).

    The sum is in the stream's dtype: under bf16-mixed a float32 stream plus a bf16 sub-layer
    output, widened exactly (the cast is a no-op otherwise).
    """
    if pre_norm:
        return x + dropout(sublayer(norm(x))).to(x.dtype)
    return norm(x + dropout(sublayer(x)).to(x.dtype))


class PositionalEncoding(nn.Module):
    """Adds the interleaved sinusoid (a non-persistent buffer) or a learned table (pos_embed)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        table = torch.from_numpy(sinusoid_table(config.max_len, config.d_model))
        self.register_buffer("table", table, persistent=False)  # (max_len, D)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """x (B, L, D) holding positions start .. start + L - 1, already widened by the caller: the
        float32 table is added unrounded."""
        return x + self.table[start : start + x.shape[1]].to(x.dtype)


class OutputBias(nn.Module):
    """The output layer's bias when its weight is tied to an embedding table."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab_size))
