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
    """The activation computed in float32 for 16-bit inputs and rounded once (shared/mixed_precision.py).

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


ATTENTION_KERNELS = ("math", "fused")  # the same names in jax_impl.layers


class MultiHeadAttention(nn.Module):
    """softmax(Q K^T / sqrt(K) masked) V over H heads, with separate q/k/v/out projections.

    kernel "math" writes the attention out (einsum, masked_fill, softmax, dropout module): the
    reference path, whose probabilities the intermediates capture sees (`attn_dropout`'s input).
    kernel "fused" computes the same function faster: one GEMM for q/k/v on the concatenated
    weights (the parameters and checkpoint keys stay separate) and F.scaled_dot_product_attention
    (flash / memory-efficient kernels where they apply). Parity: parity_tests/test_fast_paths.py.
    """

    def __init__(self, config: ModelConfig, kernel: str = "math"):
        super().__init__()
        D = config.d_model
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.kernel = check_kernel(kernel)
        self.q_proj = nn.Linear(D, D, bias=config.bias)
        self.k_proj = nn.Linear(D, D, bias=config.bias)
        self.v_proj = nn.Linear(D, D, bias=config.bias)
        self.out_proj = nn.Linear(D, D, bias=config.bias)
        self.attn_dropout = Dropout(config.attention_dropout)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, K)

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

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """q (B, H, T, K), k, v (B, H, S, K), mask (B, T|1, S) -> out_proj(context) (B, T, D)."""
        fill = mask_fill_value(str(q.dtype).removeprefix("torch."))
        if self.kernel == "fused":
            # An additive mask of 0 / the dtype's minimum, not a boolean one: score + min == min,
            # so this is the math path's masked_fill. A row with no key to attend (a fully padded source) must come out uniform, as in the
            # math path. Filling all its scores with the dtype's minimum does that forwards, but
            # SDPA's backward recomputes the softmax from a log-sum-exp, min + log(S), which
            # rounds back to min and gives weights of 1, not 1/S. So such a row gets a zero query
            # and no mask: scores exactly 0 (uniform), and no gradient reaches q or k through them.
            no_key = ~mask.any(dim=-1)  # (B, T|1)
            allowed = mask | no_key[:, :, None]  # (B, T|1, S)
            bias = torch.zeros((), dtype=q.dtype, device=q.device).masked_fill(~allowed[:, None, :, :], fill)
            q = q.masked_fill(no_key[:, None, :, None], 0.0)  # (B, H, T, K)
            p = self.attn_dropout.p if self.training else 0.0
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)  # (B, H, T, K)
        else:
            # matmul, not einsum: einsum copies k into a (B*H, K, S) layout on every call, matmul passes
            # the transpose to the GEMM (that copy was a sixth of a cached decoding step)
            # (B, H, T, S): a matmul rounded once to q's dtype, except in float16, whose range (65504) a
            # q.k of base-size magnitudes overflows: there the scores stay float32 (as in the Flax twin)
            if q.dtype == torch.float16:
                scores = q.float() @ k.float().transpose(-2, -1)
            else:
                scores = q @ k.transpose(-2, -1)
            probs = self.attn_dropout(attention_probs(scores, mask, self.head_dim).to(v.dtype))
            context = probs @ v  # (B, H, T, K)
        B, _, T, _ = context.shape
        return self.out_proj(context.transpose(1, 2).reshape(B, T, -1))  # (B, T, D)


def attention_probs(scores: torch.Tensor, mask: torch.Tensor, head_dim: int) -> torch.Tensor:
    """softmax(scores / sqrt(K) masked) as one float32 chain (16-bit scores widened first).

    The scale is a float32 constant applied after widening, as in the Flax twin: multiplying a
    bf16 tensor would round the product to bf16 before the softmax sees it. mask (B, T|1, S).
    """
    h = scores.to(upcast_dtype(scores.dtype)) * (1.0 / math.sqrt(head_dim))
    fill = mask_fill_value(str(h.dtype).removeprefix("torch."))
    return torch.softmax(h.masked_fill(~mask[:, None, :, :], fill), dim=-1)  # (B, H, T, S)
def check_kernel(kernel: str) -> str:
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; expected one of {', '.join(ATTENTION_KERNELS)}")
    return kernel


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
