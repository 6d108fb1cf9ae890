"""torch_impl/generate.py on every family: the KV cache gives exactly the uncached reference's
tokens (greedy, sampling with top-k / top-p, beam), greedy equals transformers' `generate` (GPT-2,
Llama, T5, left-padded prompts), and a planted cache bug is caught.

The weights are random but NOT near-uniform: every matrix is scaled up (PEAK) so attention is
peaked and the next token depends on the positions / rotary angles and the cache contents; a
near-uniform model emits one token forever, which any cache bug would reproduce.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import torch_impl
from parity_tests.causal_lm_helpers import examples, hf_model, left_padded, our_tensors
from parity_tests.t5_reference import hf_model as t5_hf_model
from parity_tests.t5_reference import random_tensors as t5_random_tensors
from shared.config.model_config import ModelConfig
from shared.decoding.generation import GenerationConfig, uniforms
from shared.checkpoints.init import initial_tensors
from torch_impl import attention, incremental
from torch_impl.generate import generate
from shared.families import family_of

PEAK = 4.0  # every >= 2-D weight times this: logits and attention far from uniform

VOCAB = 61
BOOK = ModelConfig(src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, d_model=16, num_heads=2, d_ff=24, num_encoder_layers=2,
                   num_decoder_layers=2, dropout=0.1, attention_dropout=0.1, embedding_dropout=0.1, max_len=20,
                   positional="learned", tie_embeddings="none", pad_id=0, bos_id=1, eos_id=2)
T5 = ModelConfig(family="t5", src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, d_model=16, num_heads=2, head_size=8, d_ff=24,
                 num_encoder_layers=2, num_decoder_layers=2, dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0,
                 max_len=20, pad_id=0, bos_id=0, eos_id=1, bias=False, norm_placement="pre", norm_kind="rms",
                 activation="gelu_tanh", gated_ffn=True, final_norms=True, scale_embeddings=False,
                 tie_embeddings="src_tgt", positional="relative", relative_attention_num_buckets=8,
                 relative_attention_max_distance=12)
GPT2 = ModelConfig.from_preset("gpt2", d_model=16, num_heads=2, d_ff=24, num_decoder_layers=2, src_vocab_size=VOCAB,
                               tgt_vocab_size=VOCAB, max_len=24, pad_id=0, bos_id=1, eos_id=2)  # learned, fused c_attn, tied
LLAMA = ModelConfig(family="causal_lm", src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, num_heads=4, num_kv_heads=2,
                    head_size=4, d_model=16, d_ff=24, num_encoder_layers=0, num_decoder_layers=2, dropout=0.0,
                    attention_dropout=0.0, embedding_dropout=0.0, max_len=24, norm_placement="pre", final_norms=True,
                    tie_embeddings="none", pad_id=0, bos_id=1, eos_id=2, norm_eps=1e-6, positional="rotary",
                    rope_theta=100.0, norm_kind="rms", activation="silu", gated_ffn=True, bias=False,
                    fused_qkv=False)  # rotary, GQA (4 heads over 2), untied
FAMILIES = {"book": BOOK, "t5": T5, "gpt2": GPT2, "llama": LLAMA}


def peaked(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: (value * PEAK if value.ndim >= 2 else value).astype(np.float32) for key, value in tensors.items()}


def our_model(config: ModelConfig, seed: int, attention_kernel: str = "math") -> torch.nn.Module:
    model = torch_impl.from_numpy(config, peaked(initial_tensors(config, seed)))
    return torch_impl.set_attention_kernel(model, attention_kernel) if attention_kernel != "math" else model


def inputs(config: ModelConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompts (decoder-only) or right-padded sources (encoder-decoders), and their masks."""
    rng = np.random.default_rng(seed)
    ids, mask = left_padded(rng, config, [6, 2, 4])
    ids[mask == 0] = config.pad_id
    if family_of(config).decoder_only:
        return ids, mask.astype(bool)
    ids = np.where(ids == config.pad_id, 3, ids)  # no pad inside a text
    ids, mask = ids[:, ::-1].copy(), mask[:, ::-1].copy().astype(bool)  # right-padded
    return np.where(mask, ids, config.pad_id), mask


STRATEGIES = [
    GenerationConfig(max_new_tokens=7),
    GenerationConfig(max_new_tokens=7, do_sample=True, temperature=1.3, top_k=5),
    GenerationConfig(max_new_tokens=7, do_sample=True, top_p=0.8),
    GenerationConfig(max_new_tokens=7, num_beams=3, length_penalty=0.7),
]


def cached_equals_uncached(model, ids, mask, config: GenerationConfig, seed: int) -> bool:
    draws = uniforms(seed, config.max_new_tokens, ids.shape[0])
    cached = generate(model, ids, mask, config, draws)
    reference = generate(model, ids, mask, config.replace(use_cache=False), draws)
    return cached.shape == reference.shape and np.array_equal(cached, reference)


@examples(2)
@given(seed=st.integers(0, 2**16))
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("strategy", STRATEGIES, ids=lambda c: f"{c.strategy}-k{c.top_k}-p{c.top_p}")
def test_cached_decoding_gives_the_uncached_tokens(family: str, strategy: GenerationConfig, seed: int) -> None:
    config = FAMILIES[family]
    model = our_model(config, seed)
    ids, mask = inputs(config, seed)
    assert cached_equals_uncached(model, ids, mask, strategy, seed)


def test_generate_streams_each_step_and_restores_train_mode() -> None:
    model = our_model(GPT2, 0).train()
    ids, mask = inputs(GPT2, 0)
    steps: list[np.ndarray] = []
    out = generate(model, ids, mask, GenerationConfig(max_new_tokens=5), on_token=steps.append)
    assert model.training
    assert np.array_equal(np.stack(steps, axis=1), out)
    assert out.dtype == np.int32 and out.shape == (3, 5)


# -- greedy == transformers' generate ----------------------------------------------------------------
def sharpen(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.mul_(PEAK)
    return model


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("seed", [0, 1])
def test_causal_lm_greedy_equals_transformers_on_a_left_padded_batch(family: str, seed: int) -> None:
    config = FAMILIES[family]
    hf = sharpen(hf_model(config, seed))
    ours = torch_impl.from_numpy(config, our_tensors(config, hf)).eval()
    ids, mask = inputs(config, seed)
    steps = 10
    out = generate(ours, ids, mask, GenerationConfig(max_new_tokens=steps, eos_token_id=()))
    with torch.no_grad():
        expected = hf.generate(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask.astype(np.int64)),
                               max_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=config.pad_id,
                               min_new_tokens=steps)[:, ids.shape[1]:].numpy()
    assert len(np.unique(expected)) >= 4, "near-uniform model: the comparison would prove nothing"
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_t5_greedy_equals_transformers(seed: int) -> None:
    tensors = peaked(t5_random_tensors(T5, seed))
    ours = torch_impl.from_numpy(T5, tensors).eval()
    src, mask = inputs(T5, seed)
    steps = 10
    out = generate(ours, src, mask, GenerationConfig(max_new_tokens=steps, eos_token_id=()))
    with torch.no_grad():
        expected = t5_hf_model(T5, tensors).generate(
            input_ids=torch.as_tensor(src), attention_mask=torch.as_tensor(mask.astype(np.int64)), max_new_tokens=steps,
            min_new_tokens=steps, do_sample=False, num_beams=1, suppress_tokens=[T5.pad_id], eos_token_id=None,
        ).numpy()[:, 1:]  # drop the start token
    assert len(np.unique(expected)) >= 4, "near-uniform model: the comparison would prove nothing"
    np.testing.assert_array_equal(out, expected)


# -- planted bugs: the cached == uncached check must catch them --------------------------------------
def write_one_slot_late(self, k, v, slot):
    end = slot + k.shape[2]
    self.k[:, :, slot + 1 : end + 1] = k[:, :, : self.k.shape[2] - slot - 1]
    self.v[:, :, slot + 1 : end + 1] = v[:, :, : self.v.shape[2] - slot - 1]
    return self.k[:, :, :end], self.v[:, :, :end]


def step_one_position_late(self, cache, tokens, t):
    cache = dict(cache, next_position=cache["next_position"] + 1)
    logits, _ = TRUE_CAUSAL_STEP(self, cache, tokens, t)
    return logits, cache


TRUE_CAUSAL_STEP = incremental.CausalLMIncremental.step


@pytest.mark.parametrize("family, bug", [
    ("gpt2", (attention.KVCache, "write", write_one_slot_late)),
    ("t5", (attention.KVCache, "write", write_one_slot_late)),
    ("llama", (incremental.CausalLMIncremental, "step", step_one_position_late)),
])
def test_a_planted_cache_bug_makes_cached_differ_from_uncached(monkeypatch, family, bug) -> None:
    config = FAMILIES[family]
    model = our_model(config, 0)
    ids, mask = inputs(config, 0)
    greedy = GenerationConfig(max_new_tokens=7)
    assert cached_equals_uncached(model, ids, mask, greedy, 0)
    monkeypatch.setattr(*bug)
    assert not cached_equals_uncached(model, ids, mask, greedy, 0)
