"""jax_impl/attention.py: the fused kernel (jax.nn.dot_product_attention) gives the math kernel's
logits for every family, within the scale-aware bound (shared/parity/tolerances.py: each kernel's own
float32 error measured against the float64 math kernel); a cached decoding step gives the full forward's
logits; grouped-query heads equal their repeated-heads expansion.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_impl
from jax_impl.attention import Attention, causal_mask, padding_mask
from jax_impl.incremental import incremental_decoder
from parity_tests.test_jax_generate import FAMILIES, GAIN, GAINS, inputs, peaked_tensors
from shared.parity.tolerances import FLOAT64_AGREEMENT, compare_stacks
from shared.families import family_of


@partial(jax.jit, static_argnums=(0, 1))
def _logits(config, kernel, params, ids, mask):
    model = jax_impl.build_model(config, attention=kernel)
    if family_of(config).decoder_only:
        return model.apply({"params": params}, ids, mask)
    tgt = jnp.concatenate([jnp.full((ids.shape[0], 1), config.bos_id, ids.dtype), ids[:, :-1]], axis=1)
    return model.apply({"params": params}, ids, tgt, mask)


def _run(name: str, kernel: str, float64: bool) -> np.ndarray:
    config = FAMILIES[name]
    tensors = peaked_tensors(config, 0, GAINS.get(name, GAIN))
    ids, mask = inputs(config, 0)
    mask = (ids != config.pad_id) if mask is None else mask
    dtype = np.float64 if float64 else np.float32
    with jax.enable_x64(float64):
        params = jax_impl.params_from_state_dict(config, {k: v.astype(dtype) for k, v in tensors.items()})
        return np.asarray(_logits(config, kernel, params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask)))


@pytest.mark.parametrize("name", FAMILIES)
def test_fused_attention_gives_the_math_logits(name):
    # The float64 twin of both is the math kernel in float64: jax's fused kernel keeps parts of its
    # chain in float32 even for float64 inputs (measured: 2e-8 off), so it is no float64 reference.
    fused32, math32, math64 = _run(name, "fused", False), _run(name, "math", False), _run(name, "math", True)
    comparison = compare_stacks(math32, fused32, math64, math64, "float32")
    assert comparison.ok, (f"{name}: fused vs math max |diff| {comparison.max_abs:.3g} > bound {comparison.limit:.3g} "
                           f"(own error {comparison.own_error:.3g})")


def _cached_and_full(name: str, float64: bool) -> tuple[np.ndarray, np.ndarray]:
    """(full forward logits, the same positions fed one step at a time through the cache) (B, N, V)."""
    config = FAMILIES[name]
    dtype = np.float64 if float64 else np.float32
    ids, mask = inputs(config, 1)
    steps = 4
    fed = np.random.default_rng(1).integers(3, config.tgt_vocab_size, (ids.shape[0], steps)).astype(np.int32)
    with jax.enable_x64(float64):
        tensors = peaked_tensors(config, 1)
        params = jax_impl.params_from_state_dict(config, {k: v.astype(dtype) for k, v in tensors.items()})
        model = jax_impl.build_model(config)
        if not family_of(config).decoder_only:
            mask = ids != config.pad_id
            fed[:, 0] = config.bos_id
            full = np.asarray(model.apply({"params": params}, ids, fed, mask))  # (B, N, V)
        else:
            fed[:, 0] = ids[:, -1]
            sequence = np.concatenate([ids, fed[:, 1:]], axis=1)
            seq_mask = np.concatenate([mask, np.ones_like(fed[:, 1:])], axis=1)
            full = np.asarray(model.apply({"params": params}, sequence, seq_mask))[:, ids.shape[1] - 1:]  # (B, N, V)
        decoder = incremental_decoder(model)
        cache, step, got = decoder.start(params, jnp.asarray(ids), jnp.asarray(mask), steps, 1), jax.jit(decoder.step), []
        for t in range(steps):
            logits, cache = step(params, cache, jnp.asarray(fed[:, t]), jnp.int32(t))
            got.append(np.asarray(logits))
    return full, np.stack(got, axis=1)


@pytest.mark.parametrize("name", ["t5", "llama"])
def test_cached_steps_give_the_full_forward_logits(name):
    """Teacher-forced through the cache (prefill + steps) == the forward over the whole sequence,
    within the scale-aware bound (both paths' own float32 error from their float64 runs)."""
    full32, steps32 = _cached_and_full(name, False)
    full64, steps64 = _cached_and_full(name, True)
    comparison = compare_stacks(full32, steps32, full64, steps64, "float32")
    assert comparison.ok, f"{name}: cached vs full max |diff| {comparison.max_abs:.3g} > bound {comparison.limit:.3g}"
    assert np.abs(full64 - steps64).max() <= FLOAT64_AGREEMENT * np.abs(full64).max(), "the cached path computes another function"


def test_grouped_query_heads_read_their_key_value_head():
    """G = 2 key/value heads for H = 4 query heads == H heads whose k/v weights repeat each group's."""
    config = FAMILIES["llama"]  # no biases
    grouped = Attention(config, num_kv_heads=2, out_name="o_proj")
    full = Attention(config, num_kv_heads=4, out_name="o_proj")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 5, config.d_model)), jnp.float32)
    mask = causal_mask(jnp.arange(5), jnp.arange(5)) & padding_mask(jnp.ones((2, 5), bool))
    params = grouped.init(jax.random.key(0), x, x, mask, True)["params"]
    K = config.head_dim

    def repeat(kernel):  # (D, G K) -> (D, H K): query head h reads key/value head h // 2
        return jnp.repeat(kernel.reshape(config.d_model, 2, K), 2, axis=1).reshape(config.d_model, 4 * K)

    expanded = {**params, "k_proj": {"kernel": repeat(params["k_proj"]["kernel"])},
                "v_proj": {"kernel": repeat(params["v_proj"]["kernel"])}}
    np.testing.assert_allclose(grouped.apply({"params": params}, x, x, mask, True),
                               full.apply({"params": expanded}, x, x, mask, True), rtol=1e-6, atol=1e-6)
