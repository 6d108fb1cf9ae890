"""torch_impl.layers.Dropout: nn.Dropout's semantics through its faster CPU path."""

from __future__ import annotations

import math

import pytest
import torch

from torch_impl.layers import Dropout


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_keeps_one_minus_p_and_rescales_the_kept(p):
    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 0.5  # no zeros: a zero in the output means dropped
    layer = Dropout(p).train()
    y = layer(x)
    kept = y != 0
    n = x.numel()
    # The kept fraction of n Bernoulli(1 - p) draws: within 5 standard deviations of 1 - p.
    assert abs(kept.float().mean().item() - (1 - p)) <= 5 * math.sqrt(p * (1 - p) / n)
    torch.testing.assert_close(y[kept], x[kept] * (1.0 / (1.0 - p)), rtol=0, atol=0)


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(1)
    x = (torch.rand(64, 64) + 0.5).requires_grad_()
    y = Dropout(0.3).train()(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() * (1.0 / 0.7), rtol=0, atol=0)


def test_identity_in_eval_or_at_zero_and_zeros_at_one():
    x = torch.randn(8, 8)
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))


def test_seeded_masks_repeat():
    x = torch.ones(256, 256)
    layer = Dropout(0.25).train()
    torch.manual_seed(7)
    first = layer(x)
    torch.manual_seed(7)
    assert torch.equal(layer(x), first)
