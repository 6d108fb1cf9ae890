"""T5 family: both stacks against transformers' T5ForConditionalGeneration and against each other.

Properties over every option of the family (parity_tests/t5_strategies.py), with padded sources
and decoder inputs that start with (and are padded by) the pad id: logits against transformers in
both stacks, every module output torch vs jax, every gradient torch vs jax, and greedy decodes
token-identical across the stacks and with transformers' greedy generate. Every numeric comparison
runs both sides in float32 and float64 (parity_tests/t5_reference.check).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import jax_impl
from jax_impl.generate import generate as jax_generate
from parity_tests import t5_strategies as t5st
import optax
import torch.nn.functional as F
from parity_tests.t5_reference import check, hf_logits, hf_model, jax_logits, random_tensors, torch_pair
from torch_impl.generate import generate as torch_generate
from shared.decoding.generation import GenerationConfig
from torch_impl.intermediates import capture_intermediates
from torch_impl.numpy_bridge import to_numpy
from jax_impl.intermediates import forward_with_intermediates

# Each example compiles jax programs in float32 and float64: few in CI, 200 with HYPOTHESIS_PROFILE=nightly.
FEW = settings(max_examples=max(2, settings.default.max_examples // 4))


@FEW
@given(config=t5st.t5_configs(), seed=st.integers(0, 2**16), data=st.data())
def test_logits_match_transformers_in_both_stacks(config, seed, data):
    batch = data.draw(t5st.t5_batches(config))
    tensors = random_tensors(config, seed)
    reference = hf_model(config, tensors)
    ref32 = hf_logits(reference, batch.src, batch.tgt_in, config.pad_id)
    ref64 = hf_logits(reference.double(), batch.src, batch.tgt_in, config.pad_id)
    low, high = torch_pair(config, tensors)
    src, tgt = torch.as_tensor(batch.src), torch.as_tensor(batch.tgt_in)
    with torch.no_grad():
        check("torch_impl vs transformers", low(src, tgt).numpy(), ref32, high(src, tgt).numpy(), ref64)
    check("jax_impl vs transformers", jax_logits(config, tensors, batch.src, batch.tgt_in), ref32,
          jax_logits(config, tensors, batch.src, batch.tgt_in, np.float64), ref64)


def _torch_records(model, src, tgt):
    with torch.no_grad(), capture_intermediates(model) as records:
        model(torch.as_tensor(src), torch.as_tensor(tgt))
    return {name: [to_numpy(o) for o in outs] for name, outs in records.items()}


def _jax_records(config, tensors, src, tgt, dtype):
    def run():
        params = jax_impl.params_from_state_dict(config, {k: v.astype(dtype) for k, v in tensors.items()})
        _, records = forward_with_intermediates(jax_impl.build_model(config), params, jnp.asarray(src), jnp.asarray(tgt))
        return {name: [np.asarray(o) for o in outs] for name, outs in records.items()}

    if dtype == np.float64:
        with jax.enable_x64(True):
            return run()
    return run()


@FEW
@given(config=t5st.t5_configs(), seed=st.integers(0, 2**16), data=st.data())
def test_every_module_output_matches_across_stacks(config, seed, data):
    batch = data.draw(t5st.t5_batches(config))
    tensors = random_tensors(config, seed)
    low, high = torch_pair(config, tensors)
    t32, t64 = _torch_records(low, batch.src, batch.tgt_in), _torch_records(high, batch.src, batch.tgt_in)
    j32 = _jax_records(config, tensors, batch.src, batch.tgt_in, np.float32)
    j64 = _jax_records(config, tensors, batch.src, batch.tgt_in, np.float64)
    compared = 0
    for name in sorted(set(t32) & set(j32)):
        # a module called a different number of times in the two stacks is a structural difference
        assert len(t32[name]) == len(j32[name]), f"{name}: called {len(t32[name])}x in torch, {len(j32[name])}x in jax"
        for call, (a, b, a64, b64) in enumerate(zip(t32[name], j32[name], t64[name], j64[name])):
            check(f"{name}[{call}]", a, b, a64, b64)
            compared += 1
    expected = {"shared_embed", "encoder.layers.0.self_attn", "encoder.final_norm", "decoder.layers.0.cross_attn",
                "decoder.layers.0.ffn", "logits"}
    assert expected <= set(t32) & set(j32), sorted(set(t32) & set(j32))
    assert compared >= 10


def _torch_loss(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Mean cross-entropy over non-pad targets, in the logits' dtype (float64 stays float64)."""
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")  # (B*T,)
    keep = (targets.flatten() != pad_id).to(nll.dtype)
    return (nll * keep).sum() / keep.sum().clamp(min=1.0)


def _jax_loss(logits: jax.Array, targets: jax.Array, pad_id: int) -> jax.Array:
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # (B, T)
    keep = (targets != pad_id).astype(nll.dtype)
    return jnp.sum(nll * keep) / jnp.maximum(jnp.sum(keep), 1.0)


def _torch_grads(model, batch):
    model.zero_grad(set_to_none=True)
    logits = model(torch.as_tensor(batch.src), torch.as_tensor(batch.tgt_in))
    _torch_loss(logits, torch.as_tensor(batch.tgt_out), model.config.pad_id).backward()
    return {name: to_numpy(torch.zeros_like(p) if p.grad is None else p.grad) for name, p in model.named_parameters()}


def _jax_grads(config, tensors, batch, dtype):
    def run():
        params = jax_impl.params_from_state_dict(config, {k: v.astype(dtype) for k, v in tensors.items()})
        model = jax_impl.build_model(config)

        def loss(p):
            logits = model.apply({"params": p}, jnp.asarray(batch.src), jnp.asarray(batch.tgt_in))
            return _jax_loss(logits, jnp.asarray(batch.tgt_out), config.pad_id)

        return jax_impl.state_dict_from_params(config, jax.jit(jax.grad(loss))(params))

    if dtype == np.float64:
        with jax.enable_x64(True):
            return run()
    return run()


@FEW
@given(config=t5st.t5_configs(), seed=st.integers(0, 2**16), data=st.data())
def test_gradients_match_across_stacks(config, seed, data):
    batch = data.draw(t5st.t5_batches(config, padded_rows=False))
    tensors = random_tensors(config, seed)
    low, high = torch_pair(config, tensors)
    t32, t64 = _torch_grads(low, batch), _torch_grads(high, batch)
    j32, j64 = _jax_grads(config, tensors, batch, np.float32), _jax_grads(config, tensors, batch, np.float64)
    assert set(t32) == set(j32)
    for key in sorted(t32):
        check(f"d loss / d {key}", t32[key], j32[key], t64[key], j64[key])


@FEW
@given(config=t5st.t5_configs(), seed=st.integers(0, 2**16), data=st.data())
def test_greedy_decodes_are_token_identical_across_stacks_and_with_transformers(config, seed, data):
    batch = data.draw(t5st.t5_batches(config, padded_rows=False))
    tensors = random_tensors(config, seed)
    steps = 6
    decode = GenerationConfig(max_new_tokens=steps)
    ours_torch = torch_generate(torch_pair(config, tensors)[0], batch.src, None, decode)
    params = jax_impl.params_from_state_dict(config, tensors)
    ours_jax = jax_generate(jax_impl.build_model(config), params, batch.src, config=decode)
    np.testing.assert_array_equal(ours_torch, ours_jax)
    # transformers: greedy from the pad id, the pad id suppressed as in our decoding contract
    src = torch.as_tensor(batch.src)
    with torch.no_grad():
        generated = hf_model(config, tensors).generate(
            input_ids=src, attention_mask=(src != config.pad_id).long(), max_new_tokens=steps, do_sample=False,
            num_beams=1, suppress_tokens=[config.pad_id], min_length=0,
            use_cache=False,  # each step re-runs the prefix, as ours; HF's cache also needs equal stack depths
        ).numpy()[:, 1:]  # drop the start token
    width = max(ours_torch.shape[1], 1)
    reference = np.full((generated.shape[0], steps), config.pad_id)
    reference[:, : generated.shape[1]] = generated
    np.testing.assert_array_equal(reference[:, : ours_torch.shape[1]], ours_torch)
    assert (reference[:, width:] == config.pad_id).all() or ours_torch.shape[1] == steps
