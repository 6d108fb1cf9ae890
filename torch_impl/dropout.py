"""Dropout with a faster CPU path (used by every family and the attention core)."""

from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Dropout):
    """nn.Dropout with a faster CPU path: keep = uniform >= p, then x * keep / (1 - p).

    The same distribution as nn.Dropout. On the CPU, torch's bernoulli_ draws its mask one element
    at a time; rand_like is vectorised and about 3x faster, which makes training steps ~12% faster
    at book-ch4 size (benchmarks/README.md). Other devices keep torch's fused dropout kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:  # the identity, as torch's dropout, without its two calls
            return x
        if x.device.type != "cpu":
            return super().forward(x)
        if self.p == 1.0:
            return torch.zeros_like(x)
        keep = torch.rand_like(x) >= self.p  # P(keep) = 1 - p
        return x * keep * (1.0 / (1.0 - self.p))
