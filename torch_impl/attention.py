"""The one attention core every torch_impl family uses (axis letters: shared/decoding/generation.py).

`Attention` holds what all families share: the kernel ("math" or "fused"), the optional scale
(None = none, as T5), an additive bias (T5's relative positions), the boolean mask (padding,
causal, or a sliding window from `window_mask`), grouped-query heads (H query heads over G
key/value heads) and dropout on the probabilities. The families' subclasses only add their
projections, whose names reach checkpoints (book/T5: q_proj/k_proj/v_proj/out_proj; causal LM:
q_proj/k_proj/v_proj/o_proj or GPT-2's fused c_attn + o_proj).

`KVCache` is one layer's preallocated self-attention keys/values: prefill, a step write, and the
beam-search reorder. Rounding points: docs/ROUNDING.md (scores and softmax one float32 chain).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from shared.parity.numerics import mask_fill_value
from torch_impl.dropout import Dropout
from torch_impl.positions import rotate

ATTENTION_KERNELS = ("math", "fused")  # the same names in jax_impl


def check_kernel(kernel: str) -> str:
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; expected one of {', '.join(ATTENTION_KERNELS)}")
    return kernel


def upcast_dtype(dtype: torch.dtype) -> torch.dtype:
    """Where norms and softmax compute: float32 for 16-bit inputs, the input's own dtype otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@functools.cache
def fill_value(dtype: torch.dtype) -> float:
    """shared.parity.numerics.mask_fill_value for a torch dtype (looked up once: a decoding step
    asks for it in every layer)."""
    return mask_fill_value(str(dtype).removeprefix("torch."))


def attention_probs(scores: torch.Tensor, mask: torch.Tensor | None, scale: float | None = None,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(scores * scale + bias, masked) as one float32 chain (16-bit scores widened first).

    scores (B, H, T, S); mask (B, T|1, S) True where allowed, or None: every key allowed (a
    masked_fill that would change nothing skipped); bias (1|B, H, T, S) or None. The scale is a
    constant applied after widening, as in the Flax twin: multiplying a bf16 tensor would round
    the product to bf16 before the softmax sees it; the bias is added unrounded.
    """
    h = scores.to(upcast_dtype(scores.dtype))
    if scale is not None:
        h = h * scale
    if bias is not None:
        h = h + bias.to(h.dtype)
    if mask is not None:
        h = h.masked_fill(~mask[:, None, :, :], fill_value(h.dtype))
    return torch.softmax(h, dim=-1)  # (B, H, T, S)


def causal_window_mask(queries: int, keys: int, offset: int = 0, window: int | None = None,
                       device=None) -> torch.Tensor:
    """(T, S): query t (at position offset + t) sees key s <= offset + t, and with a sliding
    window only the `window` latest of them (s > offset + t - window)."""
    q = torch.arange(queries, device=device)[:, None] + offset
    s = torch.arange(keys, device=device)[None, :]
    allowed = s <= q
    if window is not None:
        allowed &= s > q - window
    return allowed


def moved_rows(rows: torch.Tensor) -> torch.Tensor | None:
    """rows (R,) of a reorder (row i continues row rows[i]) -> the indices i with rows[i] != i, or
    None when there are none (one host sync: the caller skips the copies)."""
    moved = (rows != torch.arange(rows.shape[0], device=rows.device)).nonzero()[:, 0]  # (M,)
    return moved if moved.numel() else None


class KVCache:
    """One layer's self-attention keys/values in N preallocated slots: k, v (R, G, N, K).

    `write(k, v, slot)` stores T new positions at slots slot .. slot + T - 1 (prefill: slot 0,
    T = prompt length; a step: T = 1) and returns the keys/values of slots 0 .. slot + T - 1.
    """

    def __init__(self, rows: int, heads: int, slots: int, head_dim: int, dtype: torch.dtype, device):
        self.k = torch.zeros(rows, heads, slots, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    def write(self, k: torch.Tensor, v: torch.Tensor, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = slot + k.shape[2]
        self.k[:, :, slot:end] = k
        self.v[:, :, slot:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]  # (R, G, end, K)

    def reorder(self, rows: torch.Tensor, filled: int) -> None:
        """Row i continues row rows[i] (reorder_caches on this one cache)."""
        reorder_caches([self], rows, filled)

    def copy_rows(self, targets: torch.Tensor, sources: torch.Tensor, filled: int) -> None:
        """Rows targets (M,) of slots 0 .. filled - 1 become rows sources (M,)."""
        self.k[targets, :, :filled] = self.k[sources, :, :filled]  # the right side is gathered first
        self.v[targets, :, :filled] = self.v[sources, :, :filled]


def reorder_caches(caches: list[KVCache], rows: torch.Tensor, filled: int) -> None:
    """Row i of every cache continues row rows[i] (R,) (beam search). Only the filled slots move
    (later ones are written before they are read), and only the rows that change: a beam that
    continues itself stays where it is, so a step that keeps the order copies nothing."""
    moved = moved_rows(rows)
    if moved is not None:
        sources = rows[moved]
        for cache in caches:
            cache.copy_rows(moved, sources, filled)


def write_row_slots(k_cache: torch.Tensor, v_cache: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    slots: torch.Tensor) -> None:
    """Continuous batching (twinformer/serving): row b's one new key/value k, v (B, G, 1, K) go to its
    own slot slots[b] (B,) of k_cache, v_cache (B, G, N, K); the caller's mask hides unfilled slots."""
    rows = torch.arange(k.shape[0], device=k.device)
    k_cache[rows, :, slots] = k[:, :, 0]  # (B, G, K)
    v_cache[rows, :, slots] = v[:, :, 0]


class Attention(nn.Module):
    """The attention computation shared by every family; subclasses add the projections."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scale: float | None,
                 dropout: float, kernel: str = "math"):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale  # None: no scaling (T5)
        self.kernel = check_kernel(kernel)
        self.attn_dropout = Dropout(dropout)

    def split_heads(self, x: torch.Tensor, heads: int | None = None) -> torch.Tensor:
        B, L, _ = x.shape
        return x.view(B, L, heads or self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, L, K)

    def merge_heads(self, context: torch.Tensor) -> torch.Tensor:
        B, _, T, _ = context.shape
        return context.transpose(1, 2).reshape(B, T, -1)  # (B, T, H*K)

    def context(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """q (B, H, T, K), k, v (B, G, S, K), mask (B, T|1, S) or None (all allowed), bias (1|B, H, T, S)
        -> (B, T, H*K)."""
        repeats = self.num_heads // self.num_kv_heads  # query head h reads key/value head h // repeats
        if repeats > 1:
            k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)  # (B, H, S, K)
        if self.kernel == "fused":
            context = self._fused(q, k, v, mask, bias)
        else:
            # matmul, not einsum: einsum copies k into a (B*H, K, S) layout on every call, matmul
            # passes the transpose to the GEMM. float16 scores stay float32: a base-size q.k
            # overflows 65504 (as in the Flax twin).
            if q.dtype == torch.float16:
                scores = q.float() @ k.float().transpose(-2, -1)
            else:
                scores = q @ k.transpose(-2, -1)  # (B, H, T, S)
            probs = self.attn_dropout(attention_probs(scores, mask, self.scale, bias).to(v.dtype))
            context = probs @ v  # (B, H, T, K)
        return self.merge_heads(context)

    # -- what the families' subclasses provide: their projections (checkpoint names) ------------------
    def self_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> q (B, H, T, K), k, v (B, G, T, K)."""
        raise NotImplementedError

    def output(self, context: torch.Tensor) -> torch.Tensor:
        """(B, T, H*K) -> (B, T, D)."""
        raise NotImplementedError

    def self_attention(self, x: torch.Tensor, mask: torch.Tensor | None, bias: torch.Tensor | None = None,
                       rope=None, cache: KVCache | None = None, slot: int = 0) -> torch.Tensor:
        """x (B, T, D) at positions slot .. slot + T - 1 -> (B, T, D).

        rope: (cos, sin) (B, T, K) rotating q and k (torch_impl/positions.py) or None. With a cache
        the T new keys/values go to its slots slot .. slot + T - 1 and the queries attend over
        slots 0 .. slot + T - 1 (mask (B, T|1, slot + T), or None: all of them); without one, over x alone.
        """
        q, k, v = self.self_qkv(x)
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        if cache is not None:
            k, v = cache.write(k, v, slot)
        return self.output(self.context(q, k, v, mask, bias))

    def _fused(self, q, k, v, mask, bias) -> torch.Tensor:
        # An additive mask of 0 / the dtype's minimum, not a boolean one: score + min == min, so
        # this is the math path's masked_fill. A row with no key to attend (a fully padded source)
        # must come out uniform, as in the math path. Filling all its scores with the minimum does
        # that forwards, but SDPA's backward recomputes the softmax from a log-sum-exp, min +
        # log(S), which rounds back to min and gives weights of 1, not 1/S. So such a row gets a
        # zero query, no mask and no bias: scores exactly 0 (uniform), and no gradient through them.
        if mask is None:  # every key allowed: the same kernel call as an all-True mask
            mask = torch.ones(1, 1, k.shape[2], dtype=torch.bool, device=q.device)
        fill = fill_value(q.dtype)
        no_key = ~mask.any(dim=-1)  # (B, T|1)
        allowed = mask | no_key[:, :, None]  # (B, T|1, S)
        additive = torch.zeros((), dtype=q.dtype, device=q.device).masked_fill(~allowed[:, None, :, :], fill)
        if bias is not None:
            additive = additive + bias.to(q.dtype).masked_fill(no_key[:, None, :, None], 0.0)
        q = q.masked_fill(no_key[:, None, :, None], 0.0)  # (B, H, T, K)
        p = self.attn_dropout.p if self.training else 0.0
        scale = 1.0 if self.scale is None else self.scale
        return F.scaled_dot_product_attention(q, k, v, attn_mask=additive, dropout_p=p, scale=scale)


__all__ = ["ATTENTION_KERNELS", "Attention", "KVCache", "attention_probs", "causal_window_mask", "check_kernel",
           "moved_rows", "reorder_caches", "upcast_dtype", "write_row_slots"]
