"""The D -> V output projection of every family, with a faster CPU path for the few rows of a decoding step.

With 2 to 64 rows (a beam step: B * num_beams rows), MKL's float32 GEMM blocks the very wide
V = 32k-50k output poorly: computing the logits in blocks of 512 vocabulary rows is 1.4-2x
faster on a one-thread CPU. Every logit is still the same length-D dot product, so the blocks
agree with one call up to the BLAS kernel's own rounding (bit-identical on the AMD EPYC box it was
measured on; the tests assert closeness, not bits, since another CPU's kernel may sum differently). One row (greedy) and many rows (prefill, training) gain nothing and keep the one call;
so does anything with gradients (the input's gradient would be summed over the blocks in another
order) and any weight that is not a plain tensor (a sharded DTensor). Measured with
`python -m benchmarks.generate_speed --only t5` (the cached beam step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLOCKED_ROWS = range(2, 65)  # rows (product of the leading axes) that take the blocked path
VOCAB_BLOCK = 512  # vocabulary rows per block


def vocab_linear(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(y, weight, bias): y (..., D), weight (V, D), bias (V,) or None -> (..., V)."""
    blocked = (y.numel() // y.shape[-1] in BLOCKED_ROWS and y.device.type == "cpu" and weight.dtype == torch.float32
               and type(weight) in (torch.Tensor, nn.Parameter))  # fmt: skip
    if not blocked or torch.is_grad_enabled():
        return F.linear(y, weight, bias)
    biases = [None] * -(-weight.shape[0] // VOCAB_BLOCK) if bias is None else bias.split(VOCAB_BLOCK)
    return torch.cat([F.linear(y, w, b) for w, b in zip(weight.split(VOCAB_BLOCK), biases)], dim=-1)


class VocabLinear(nn.Linear):
    """nn.Linear (same parameters, same checkpoint keys, a LoRA target as any Linear) computing
    through vocab_linear: an untied output projection."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return vocab_linear(y, self.weight, self.bias)


__all__ = ["VocabLinear", "vocab_linear"]
