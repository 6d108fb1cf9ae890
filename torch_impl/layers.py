"""Building blocks of the PyTorch Transformer (axis letters: shared/axes.py).

Attribute names are the checkpoint's key names (see shared/weight_table.py) and match the Flax
modules in jax_impl/layers.py one for one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from shared.config import ModelConfig
from shared.numerics import mask_fill_value, sinusoid_table


def upcast_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where norms and softmax compute: float32 for 16-bit inputs, the input's own dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class Norm(nn.Module):
    """LayerNorm, or the book's chapter-3 norm: weight * (x - mean) / (std_unbiased + eps) + bias."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.kind, self.eps = config.norm_kind, config.norm_eps
        self.weight = nn.Parameter(torch.ones(config.d_model))
        self.bias = nn.Parameter(torch.zeros(config.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in float32 whatever the input dtype, rounded once at the end: the same
        # recipe as the Flax twin, so bf16/fp16 runs differ only by matmul rounding.
        compute = upcast_dtype(x.dtype)
        h, weight, bias = x.to(compute), self.weight.to(compute), self.bias.to(compute)
        if self.kind == "layernorm":
            out = F.layer_norm(h, h.shape[-1:], weight, bias, self.eps)
        else:
            mean = h.mean(dim=-1, keepdim=True)
            std = h.std(dim=-1, keepdim=True, unbiased=True)
            out = weight * (h - mean) / (std + self.eps) + bias
        return out.to(x.dtype)


class Dropout(nn.Dropout):
    """nn.Dropout with a faster CPU path: keep = uniform >= p, then x * keep / (1 - p).

    The same distribution as nn.Dropout. On the CPU, torch's bernoulli_ draws its mask one element
    at a time; rand_like is vectorised and about 3x faster, which makes training steps ~12% faster
    at book-ch4 size (benchmarks/README.md). Other devices keep torch's fused dropout kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        if self.p == 1.0:
            return torch.zeros_like(x)
        keep = torch.rand_like(x) >= self.p  # P(keep) = 1 - p
        return x * keep * (1.0 / (1.0 - self.p))


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "relu":
        return F.relu(x)
    if name == "silu":
        return F.silu(x)
    return F.gelu(x, approximate="tanh" if name == "gelu_tanh" else "none")


class MultiHeadAttention(nn.Module):
    """softmax(Q K^T / sqrt(K) masked) V over H heads, with separate q/k/v/out projections."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        D = config.d_model
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.q_proj = nn.Linear(D, D, bias=config.bias)
        self.k_proj = nn.Linear(D, D, bias=config.bias)
        self.v_proj = nn.Linear(D, D, bias=config.bias)
        self.out_proj = nn.Linear(D, D, bias=config.bias)
        self.attn_dropout = Dropout(config.attention_dropout)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, K)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) attends to memory (B, S, D); mask (B, T|1, S) is True where allowed."""
        q = self.split_heads(self.q_proj(x))  # (B, H, T, K)
        k = self.split_heads(self.k_proj(memory))  # (B, H, S, K)
        v = self.split_heads(self.v_proj(memory))  # (B, H, S, K)
        scores = torch.einsum("bhtk,bhsk->bhts", q, k) * (1.0 / math.sqrt(self.head_dim))
        fill = mask_fill_value(str(scores.dtype).removeprefix("torch."))
        scores = scores.masked_fill(~mask[:, None, :, :], fill)  # (B, H, T, S)
        probs = torch.softmax(scores.to(upcast_dtype(scores.dtype)), dim=-1).to(v.dtype)  # as in Flax
        probs = self.attn_dropout(probs)
        context = torch.einsum("bhts,bhsk->bhtk", probs, v)  # (B, H, T, K)
        B, _, T, _ = context.shape
        return self.out_proj(context.transpose(1, 2).reshape(B, T, -1))  # (B, T, D)


class FeedForward(nn.Module):
    """fc2(dropout(act(fc1(x)))): D -> F -> D."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.activation = config.activation
        self.fc1 = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.fc2 = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(activation(self.activation, self.fc1(x))))


def residual(x: torch.Tensor, norm: Norm, sublayer, dropout: Dropout, pre_norm: bool) -> torch.Tensor:
    """One residual sub-layer: post-LN Norm(x + drop(f(x))) or pre-LN x + drop(f(Norm(x)))."""
    if pre_norm:
        return x + dropout(sublayer(norm(x)))
    return norm(x + dropout(sublayer(x)))


class PositionalEncoding(nn.Module):
    """Adds the interleaved sinusoid (a non-persistent buffer) or a learned table (pos_embed)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        table = torch.from_numpy(sinusoid_table(config.max_len, config.d_model))
        self.register_buffer("table", table, persistent=False)  # (max_len, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table[: x.shape[1]].to(x.dtype)


class OutputBias(nn.Module):
    """The output layer's bias when its weight is tied to an embedding table."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab_size))
