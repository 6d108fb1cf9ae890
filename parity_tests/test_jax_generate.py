"""jax_impl.generate for every family: the KV cache gives the uncached reference's tokens, greedy
equals transformers' generate, sampling mirrors shared.decoding.generation.choose_next, a planted cache bug
is caught.

Families (fixed tiny configs): the book Transformer, T5 (relative bias, gated FFN, tied), GPT-2
style (learned positions, fused c_attn, tied head) and Llama style (rotary, grouped-query heads,
untied head). Weights are random and NOT near-uniform: every matrix gets a gain (GAIN) so that
attention is peaked and the next token depends on the positions and on the rotary angles; a
near-uniform model would decode the same token everywhere and hide position bugs (asserted: the
outputs hold several distinct tokens; the HF comparisons assert it of greedy alone).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jax_impl
from jax_impl import attention as jax_attention
from jax_impl.families.causal_lm import CausalLM
from jax_impl.generate import choose_next as jax_choose_next, generate
from parity_tests.causal_lm_helpers import hf_model as hf_causal, left_padded, our_tensors
from parity_tests.t5_reference import hf_model as hf_t5
from shared.config.model_config import ModelConfig
from shared.decoding.generation import GenerationConfig, choose_next, uniforms
from shared.families import family_of

GAIN = 3.0  # on every weight matrix: logits of several units, attention far from uniform
# The book's post-norm stack saturates under a large gain (one token everywhere, measured at >= 1.0):
# a smaller one keeps its tokens position-dependent.
GAINS = {"book": 0.4}

_CAUSAL = dict(family="causal_lm", src_vocab_size=61, tgt_vocab_size=61, num_encoder_layers=0, num_decoder_layers=2,
               dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0, max_len=32, norm_placement="pre",
               final_norms=True, pad_id=0, bos_id=1, eos_id=2, d_ff=24)
FAMILIES = {
    "book": ModelConfig.from_preset("tiny", src_vocab_size=23, tgt_vocab_size=23, max_len=16),
    "t5": ModelConfig(
        family="t5", src_vocab_size=19, tgt_vocab_size=19, d_model=8, num_heads=2, head_size=4, d_ff=12,
        num_encoder_layers=2, num_decoder_layers=2, dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0,
        max_len=16, pad_id=0, bos_id=0, eos_id=1, bias=False, norm_placement="pre", norm_kind="rms", norm_eps=1e-6,
        activation="gelu_tanh", gated_ffn=True, final_norms=True, scale_embeddings=False, tie_embeddings="all",
        positional="relative", relative_attention_num_buckets=8, relative_attention_max_distance=10),
    "gpt2": ModelConfig(**_CAUSAL, d_model=16, num_heads=2, positional="learned", norm_kind="layernorm",
                        activation="gelu_tanh", gated_ffn=False, bias=True, fused_qkv=True, tie_embeddings="tgt_out"),
    "llama": ModelConfig(**_CAUSAL, d_model=16, num_heads=4, head_size=4, num_kv_heads=2, positional="rotary",
                         rope_theta=10000.0, norm_kind="rms", activation="silu", gated_ffn=True, bias=False,
                         fused_qkv=False, tie_embeddings="none"),
}
STEPS = 7
SETTINGS = {  # every family runs greedy, beam and one of the two samplers (compiles cost: 2 per setting)
    "greedy": GenerationConfig(max_new_tokens=STEPS),
    "top_k": GenerationConfig(max_new_tokens=STEPS, do_sample=True, top_k=4, temperature=1.5),
    "top_p": GenerationConfig(max_new_tokens=STEPS, do_sample=True, top_p=0.7, temperature=0.8),
    "beam": GenerationConfig(max_new_tokens=STEPS, num_beams=3, length_penalty=0.6),
}


def peaked_tensors(config: ModelConfig, seed: int, gain: float = GAIN) -> dict[str, np.ndarray]:
    """Our state dict: N(0, 1) embeddings, N(0, 1/fan_in) matrices times GAIN, norms and biases away
    from 1 and 0."""
    from shared.checkpoints.weight_table import param_specs

    rng = np.random.default_rng(seed)
    tensors = {}
    for spec in param_specs(config):
        shape = spec.torch_shape
        if "embed" in spec.torch_key:  # unit entries: tokens weigh as much as the sinusoid positions
            tensors[spec.torch_key] = rng.standard_normal(shape)
        elif len(shape) >= 2:
            tensors[spec.torch_key] = gain * rng.standard_normal(shape) / np.sqrt(shape[-1])
        elif spec.torch_key.endswith("weight"):  # norm scales
            tensors[spec.torch_key] = 1.0 + 0.3 * rng.standard_normal(shape)
        else:
            tensors[spec.torch_key] = 0.3 * rng.standard_normal(shape)
    return {k: v.astype(np.float32) for k, v in tensors.items()}


def inputs(config: ModelConfig, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Encoder-decoders: sources padded at the end (row 1 short); decoder-only: a left-padded batch."""
    rng = np.random.default_rng(seed)
    if family_of(config).decoder_only:
        ids, mask = left_padded(rng, config, [6, 2, 4])
        return ids, mask
    src = rng.integers(3, config.src_vocab_size, (3, 6))
    src[1, 3:] = config.pad_id
    return src, None


def family(name: str, seed: int = 0):
    config = FAMILIES[name]
    params = jax_impl.params_from_state_dict(config, peaked_tensors(config, seed, GAINS.get(name, GAIN)))
    return jax_impl.build_model(config), params, *inputs(config, seed)


@pytest.mark.parametrize("name", FAMILIES)
def test_cached_decoding_gives_the_uncached_tokens(name):
    """Greedy, top-k and top-p sampling (same uniforms) and beam search: cache == prefix re-run."""
    model, params, ids, mask = family(name)
    draws = uniforms(5, STEPS, ids.shape[0])
    distinct = set()
    sampler = "top_k" if name in ("book", "gpt2") else "top_p"
    for setting, config in SETTINGS.items():
        if setting.startswith("top") and setting != sampler:
            continue
        cached = generate(model, params, ids, mask, config, draws)
        uncached = generate(model, params, ids, mask, config.replace(use_cache=False), draws)
        np.testing.assert_array_equal(cached, uncached, err_msg=f"{name} {setting}")
        assert cached.dtype == np.int32 and cached.shape[0] == ids.shape[0]
        distinct |= set(cached.ravel().tolist())
    assert len(distinct) > 3, f"{name} decodes only {distinct}: too uniform a model to test positions"


def test_streaming_gives_the_loop_tokens():
    """on_token receives each step's (B,) ids; the Python loop over the jitted step = the while_loop."""
    model, params, ids, mask = family("gpt2")
    for config in (SETTINGS["greedy"], SETTINGS["top_p"]):
        received = []
        streamed = generate(model, params, ids, mask, config, on_token=received.append)
        np.testing.assert_array_equal(streamed, generate(model, params, ids, mask, config))
        np.testing.assert_array_equal(np.stack(received, axis=1), streamed)


def test_padding_rows_and_odd_batch_sizes():
    """A row without tokens returns pad only; a row decodes alone as within a (bucketed) batch."""
    model, params, ids, mask = family("llama")
    config = SETTINGS["greedy"]
    batch = generate(model, params, ids, mask, config)
    for row in range(ids.shape[0]):
        np.testing.assert_array_equal(generate(model, params, ids[row:row + 1], mask[row:row + 1], config), batch[row:row + 1])
    empty = mask.copy()
    empty[1] = False
    with_padding_row = generate(model, params, ids, empty, config)
    assert (with_padding_row[1] == FAMILIES["llama"].pad_id).all()
    np.testing.assert_array_equal(with_padding_row[[0, 2]], batch[[0, 2]])


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_greedy_equals_transformers_generate_on_a_left_padded_batch(name):
    config = FAMILIES[name]
    hf = hf_causal(config, seed=3)
    with torch.no_grad():
        for parameter in hf.parameters():
            if parameter.ndim >= 2:
                parameter.mul_(GAIN)
    params = jax_impl.params_from_state_dict(config, our_tensors(config, hf))
    ids, mask = left_padded(np.random.default_rng(3), config, [6, 2, 4])
    ours = generate(jax_impl.build_model(config), params, ids, mask, GenerationConfig(max_new_tokens=STEPS, eos_token_id=()))
    with torch.no_grad():
        expected = hf.generate(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), max_new_tokens=STEPS,
                               do_sample=False, eos_token_id=None, pad_token_id=config.pad_id, min_new_tokens=STEPS)
    np.testing.assert_array_equal(ours, expected[:, ids.shape[1]:].numpy())
    assert len(set(ours.ravel().tolist())) > 2, "too uniform a model to test positions"


def test_t5_greedy_equals_transformers_generate():
    config = FAMILIES["t5"]
    # Seed 5, gain 2: a tiny T5 (D = 8) that greedy does not drive into one repeated token at once
    # (most seeds do; the assertion at the end keeps whichever choice honest).
    tensors = peaked_tensors(config, 5, 2.0)
    src, _ = inputs(config, 5)
    ours = generate(jax_impl.build_model(config), jax_impl.params_from_state_dict(config, tensors), src,
                    config=GenerationConfig(max_new_tokens=STEPS))
    source = torch.as_tensor(src)
    with torch.no_grad():
        expected = hf_t5(config, tensors).generate(
            input_ids=source, attention_mask=(source != config.pad_id).long(), max_new_tokens=STEPS, do_sample=False,
            num_beams=1, suppress_tokens=[config.pad_id], min_length=0).numpy()[:, 1:]  # drop the start token
    expected = np.pad(expected, ((0, 0), (0, max(0, ours.shape[1] - expected.shape[1]))), constant_values=config.pad_id)
    np.testing.assert_array_equal(ours, expected[:, : ours.shape[1]])
    assert len(set(ours.ravel().tolist())) > 2, "too uniform a model to test positions"


def _slot_off_by_one(monkeypatch):
    original = jax_attention.write_slots
    monkeypatch.setattr(jax_attention, "write_slots", lambda cache, k, v, slot: original(cache, k, v, slot + 1))


def _position_off_by_one(monkeypatch):
    original = CausalLM.decode_step

    def decode_step(self, cache, tokens, t):
        logits, new = original(self, dict(cache, count=cache["count"] + 1), tokens, t)
        return logits, dict(new, count=cache["count"])

    monkeypatch.setattr(CausalLM, "decode_step", decode_step)


@pytest.mark.parametrize("plant", [_slot_off_by_one, _position_off_by_one], ids=["slot t+1", "position id t+1"])
def test_a_planted_cache_bug_breaks_cached_equals_uncached(plant, monkeypatch):
    """The check above can fail: a key/value written one slot late, or a step's position id one too
    far, changes the cached tokens (the uncached reference does not read the cache)."""
    model, params, ids, mask = family("llama" if plant is _position_off_by_one else "gpt2")
    config = SETTINGS["greedy"]
    reference = generate(model, params, ids, mask, config.replace(use_cache=False))
    jax.clear_caches()  # the jitted loop is cached per model: trace it again with the bug
    try:
        plant(monkeypatch)
        buggy = generate(model, params, ids, mask, config)
    finally:
        monkeypatch.undo()
        jax.clear_caches()
    assert not np.array_equal(buggy, reference), "the planted bug went unnoticed"
    np.testing.assert_array_equal(generate(model, params, ids, mask, config), reference)


@pytest.mark.parametrize("setting", [
    GenerationConfig(do_sample=True, temperature=0.7),
    GenerationConfig(do_sample=True, top_k=3),
    GenerationConfig(do_sample=True, top_k=1),
    GenerationConfig(do_sample=True, top_p=0.5, temperature=1.3),
    GenerationConfig(do_sample=True, top_k=7, top_p=0.9),
    GenerationConfig(),
])
def test_choose_next_mirrors_the_shared_rule(setting):
    """jax_impl.generate.choose_next == shared.decoding.generation.choose_next, ties and banned ids included."""
    rng = np.random.default_rng(0)
    logits = (3 * rng.standard_normal((128, 40))).astype(np.float32)
    logits[:8, :4] = logits[:8, :1]  # ties: top-k keeps them, the stable sort orders them by id
    u = rng.random(128)
    for banned in ((), (0, 3)):
        expected = choose_next(logits, u, setting, banned)
        np.testing.assert_array_equal(np.asarray(jax_choose_next(jnp.asarray(logits), jnp.asarray(u, jnp.float32), setting, banned)), expected)
