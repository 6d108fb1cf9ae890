"""The decoding speed-ups of torch_impl compute what they replace: the blocked vocabulary projection
(torch_impl/vocab_projection.py) and the beam reorder that copies only the rows that move
(torch_impl/attention.py reorder_caches). Token-level equality (cached == uncached, == transformers)
is in test_torch_generate.py and test_kv_cache.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from torch_impl.attention import KVCache, moved_rows, reorder_caches
from torch_impl.vocab_projection import VOCAB_BLOCK, VocabLinear, vocab_linear


@pytest.mark.parametrize("rows", [1, 2, 4, 64, 65])
@pytest.mark.parametrize("with_bias", [False, True])
def test_blocked_vocab_projection_equals_one_linear(rows: int, with_bias: bool) -> None:
    generator = torch.Generator().manual_seed(rows)
    V, D = 3 * VOCAB_BLOCK + 37, 48  # a last block shorter than the others
    weight = torch.randn(V, D, generator=generator)
    bias = torch.randn(V, generator=generator) if with_bias else None
    y = torch.randn(rows, 1, D, generator=generator)
    with torch.inference_mode():
        out = vocab_linear(y, weight, bias)
    assert out.shape == (rows, 1, V)
    # each logit is the same length-D dot product: equal up to the BLAS kernel's own rounding
    torch.testing.assert_close(out, F.linear(y, weight, bias))


def test_a_misaligned_bias_block_is_caught() -> None:
    """The comparison above fails when blocks and biases are paired wrongly (a planted bug)."""
    weight, bias, y = torch.randn(2 * VOCAB_BLOCK, 8), torch.randn(2 * VOCAB_BLOCK), torch.randn(4, 8)
    with torch.inference_mode():
        swapped = torch.cat([F.linear(y, w, b) for w, b in zip(weight.split(VOCAB_BLOCK), bias.split(VOCAB_BLOCK)[::-1])], -1)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(swapped, F.linear(y, weight, bias))


def test_vocab_linear_keeps_gradients_on_the_one_call() -> None:
    layer = VocabLinear(8, 2 * VOCAB_BLOCK, bias=False)
    y = torch.randn(4, 8, requires_grad=True)
    layer(y).sum().backward()
    assert y.grad is not None and layer.weight.grad is not None
    assert set(layer.state_dict()) == {"weight"}  # the checkpoint keys of an nn.Linear


@pytest.mark.parametrize("rows", [[0, 1, 2, 3], [1, 0, 3, 2], [0, 0, 3, 1], [3, 3, 3, 3], [2, 2, 0, 0]])
def test_reorder_moves_the_filled_slots_as_index_select(rows: list[int]) -> None:
    caches = [KVCache(4, 2, 6, 3, torch.float32, "cpu") for _ in range(2)]
    for cache in caches:
        cache.k.normal_(), cache.v.normal_()
    before = [(cache.k.clone(), cache.v.clone()) for cache in caches]
    order, filled = torch.as_tensor(rows), 4
    reorder_caches(caches, order, filled)
    for cache, (k, v) in zip(caches, before):
        expected_k, expected_v = k.clone(), v.clone()
        expected_k[:, :, :filled] = k[:, :, :filled].index_select(0, order)
        expected_v[:, :, :filled] = v[:, :, :filled].index_select(0, order)
        assert torch.equal(cache.k, expected_k) and torch.equal(cache.v, expected_v)
    assert (moved_rows(order) is None) == (rows == [0, 1, 2, 3])
