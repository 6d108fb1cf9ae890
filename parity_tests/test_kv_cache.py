"""KV-cache decoding: token-identical to the uncached path in each stack, logits equal to a full forward.

The uncached path (GenerationConfig(use_cache=False): the decoder re-run over the whole prefix each
step) is the reference; test_decoding.py checks the default (cached) path against an independent
reference and across the stacks. Both paths compute the same float32 function with different
matmul shapes (one position vs the prefix), so their logits differ by a few ulps: a token could
only differ at a near-tie of ~1e-7, which random models of order-one logits do not produce.
Axis letters: B batch, S source, N steps, V vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

import jax_impl
import torch_impl
from jax_impl.incremental import incremental_decoder
from parity_tests.helpers import assert_all_close
from parity_tests.test_decoding import few, jax_generate, on_device, sources, tiny_models, top_k_sampling, torch_generate
from shared.data.special_tokens import BOS_ID
from shared.decoding.generation import GenerationConfig
from torch_impl.incremental import TransformerIncremental as TorchKVCache
from torch_impl.families.transformer import reorder_cache
from torch_impl.numpy_bridge import to_numpy


def decode_configs(data, config, min_steps: int = 1) -> list[GenerationConfig]:
    steps = data.draw(st.integers(min_steps, min(10, config.max_len - 1)))
    return [
        GenerationConfig(max_new_tokens=steps),
        top_k_sampling(steps, data.draw(st.integers(2, 5)), 1.5),
        GenerationConfig(max_new_tokens=steps, num_beams=data.draw(st.integers(2, 3)),
                         length_penalty=data.draw(st.sampled_from([0.0, 0.6, 1.0]))),
    ]


def uncached(config: GenerationConfig) -> GenerationConfig:
    return config.replace(use_cache=False)


@few(4)
@given(data=st.data())
def test_torch_cached_decoding_is_token_identical_to_uncached(data, parity_env):
    # D >= 4: with D = 2 a norm leaves beams with bitwise-equal scores (see test_decoding.py).
    model, _ = on_device(parity_env, *data.draw(tiny_models(min_d_model=4)))
    src = data.draw(sources(model.config))
    for decode in decode_configs(data, model.config):
        outputs = []
        for config in (decode, uncached(decode)):
            outputs.append(torch_generate(model, src, config, seed=7))
        np.testing.assert_array_equal(outputs[0], outputs[1], err_msg=f"{decode}")
    assert model.training, "generate must restore the caller's train mode"


@few(1)  # 6 compiles per example; test_decoding.py runs the cached path against a reference too
@given(data=st.data())
def test_jax_cached_decoding_is_token_identical_to_uncached(data, parity_env):
    torch_model, params = on_device(parity_env, *data.draw(tiny_models(min_d_model=4)))
    model = jax_impl.Transformer(torch_model.config)
    src = data.draw(sources(torch_model.config))
    for decode in decode_configs(data, torch_model.config):
        cached = jax_generate(model, params, src, decode, seed=3)
        np.testing.assert_array_equal(cached, jax_generate(model, params, src, uncached(decode), seed=3),
                                      err_msg=f"{decode}")


@few(2)
@given(data=st.data())
def test_cached_step_logits_equal_a_full_forward_in_both_stacks(data, parity_env):
    """Feeding fixed targets one token at a time to C = 2 copies of each source, the two copies
    swapping places mid-way (reorder, as beam search moves hypotheses), gives the logits of decode()
    on each whole target, position by position, in each stack."""
    torch_model, params = on_device(parity_env, *data.draw(tiny_models()))
    config = torch_model.config
    src = data.draw(sources(config))
    B, N = src.shape[0], data.draw(st.integers(1, config.max_len))
    tgt = data.draw(st.lists(st.integers(0, config.tgt_vocab_size - 1), min_size=2 * B * N, max_size=2 * B * N))
    tgt = np.asarray(tgt, np.int32).reshape(2 * B, N)  # row b*2 + c: copy c of source b
    tgt[:, 0] = BOS_ID
    swap = np.arange(2 * B) ^ 1  # row i continues row i XOR 1: the other copy of the same source
    low = step_and_full_logits(torch_model, params, src, tgt, swap, N)
    # The same in float64 (exact copies of the weights): each path's own rounding error, for the bound.
    torch64 = torch_impl.from_numpy(config, {k: v.astype(np.float64) for k, v in torch_impl.state_dict_numpy(torch_model).items()})
    with jax.enable_x64():
        params64 = jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x, np.float64)), params)
        high = step_and_full_logits(torch64.to(next(torch_model.parameters()).device), params64, src, tgt, swap, N)
    context = f"B={B} N={N}"
    # reference = the full forward, other = the cached steps (each quad: low, low, float64, float64)
    assert_all_close("kv cache step logits (torch)", {"logits": (low[0], low[1], high[0], high[1])}, parity_env.precision, context)
    assert_all_close("kv cache step logits (jax)", {"logits": (low[0], low[2], high[0], high[2])}, parity_env.precision, context)


def step_and_full_logits(torch_model, params, src, tgt, swap, N):
    """(full forward (2B, N, V), torch cached steps, jax cached steps) in the weights' dtype.

    From step N // 2 on, row i of the steps holds what row swap[i] of the full forward computes.
    """
    torch_model.eval()
    device = next(torch_model.parameters()).device
    config = torch_model.config
    src_t = torch.as_tensor(src, dtype=torch.long, device=device)
    tgt_t = torch.as_tensor(tgt, dtype=torch.long, device=device)
    with torch.no_grad():
        full = to_numpy(torch_model(src_t.repeat_interleave(2, dim=0), tgt_t))  # (2B, N, V)
        stepper = TorchKVCache(torch_model)
        cache, torch_steps = stepper.start(src_t, src_t != config.pad_id, N, copies=2), []
        for t in range(N):
            if t == N // 2:
                cache = reorder_cache(cache, torch.as_tensor(swap, device=device))
                tgt_t = tgt_t[swap]
            logits, cache = stepper.step(cache, tgt_t[:, t], t)
            torch_steps.append(to_numpy(logits))
    jax_stepper = incremental_decoder(jax_impl.Transformer(config), use_cache=True)
    jax_tgt = jnp.asarray(tgt)
    src_mask = jnp.asarray(src != config.pad_id)
    cache, jax_steps, step = jax_stepper.start(params, jnp.asarray(src), src_mask, N, 2), [], jax.jit(jax_stepper.step)
    for t in range(N):
        if t == N // 2:
            cache = jax_stepper.reorder(cache, jnp.asarray(swap))
            jax_tgt = jax_tgt[swap]
        logits, cache = step(params, cache, jax_tgt[:, t], jnp.int32(t))  # one compile for all t
        jax_steps.append(np.asarray(logits))
    # Expected: from step N // 2 on, row i holds what row swap[i] of the full forward computes.
    expected = np.stack([(full[swap] if t >= N // 2 else full)[:, t] for t in range(N)], axis=1)  # (2B, N, V)
    return expected, np.stack(torch_steps, 1), np.stack(jax_steps, 1)


def test_fast_beam_top_k_keeps_the_stable_tie_order():
    """Both stacks' fast top-k of the K * V beam candidates equal a stable descending sort, ties included."""
    from jax_impl.generate import beam_top_k
    from torch_impl.generate import top_k_stable, top_k_stable_over_rows

    rng = np.random.default_rng(0)
    for trial in range(40):
        B, K, V = 3, int(rng.integers(1, 4)), int(rng.integers(2, 9 if trial < 20 else 40))
        k = int(rng.integers(1, K * V + 1)) if trial < 20 else int(rng.integers(1, min(2 * K, K * V) + 1))
        # Few distinct values: many ties, at the cut too; -inf as for beams not yet alive. The later
        # trials (beam-like: k <= 2K, V wider) mix in distinct values, so the fast paths run too.
        values = rng.integers(0, 3, (B, K, V)).astype(np.float32)
        if trial >= 20 and trial % 2:
            values = rng.normal(size=(B, K, V)).astype(np.float32)
        values[0, -1] = -np.inf
        flat = values.reshape(B, K * V)
        order = np.argsort(-flat, axis=1, kind="stable")[:, :k]
        expected = (np.take_along_axis(flat, order, axis=1), order)
        got_torch = [a.numpy() for a in top_k_stable(torch.from_numpy(flat), k)]
        got_rows = [a.numpy() for a in top_k_stable_over_rows(torch.from_numpy(values), k)]
        got_jax = [np.asarray(a) for a in beam_top_k(jnp.asarray(values), k)]
        for got in (got_torch, got_rows, got_jax):
            np.testing.assert_array_equal(got[0], expected[0], err_msg=f"trial {trial}")
            np.testing.assert_array_equal(got[1], expected[1], err_msg=f"trial {trial}")
