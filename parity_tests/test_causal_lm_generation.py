"""Generation of the causal_lm family: greedy token-identical across the stacks and transformers,
sampling identical given the same uniforms, stop tokens, max_new_tokens, left-padded batches."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import jax_impl
import torch_impl
from jax_impl import generate as jax_generation
from parity_tests.causal_lm_helpers import examples, hf_model, left_padded, our_tensors
from parity_tests.test_causal_lm import causal_configs
from shared.config.model_config import ConfigError, ModelConfig
from shared.decoding import generation
from shared.decoding.generation import GenerationConfig
from torch_impl import generate as torch_generation

# one fixed tiny GPT-2 for the example-based tests
FIXED = ModelConfig.from_preset("gpt2", d_model=16, num_heads=2, d_ff=24, num_decoder_layers=2, src_vocab_size=61,
                                tgt_vocab_size=61, max_len=24, pad_id=0, bos_id=1, eos_id=2)


def greedy(steps: int, stop_ids: tuple[int, ...] = ()) -> GenerationConfig:
    """Greedy for `steps` tokens, stopping only at `stop_ids` (none: the model's eos does not stop a row)."""
    return GenerationConfig(max_new_tokens=steps, eos_token_id=stop_ids)


def torch_generate(model, ids, mask, config: GenerationConfig, draws=None) -> np.ndarray:
    return torch_generation.generate(model, ids, mask, config, draws)


def jax_generate(config: ModelConfig, params, ids, mask, gen: GenerationConfig, draws=None) -> np.ndarray:
    return jax_generation.generate(jax_impl.build_model(config), params, ids, mask, gen, draws)


sampling_configs = st.builds(
    GenerationConfig, max_new_tokens=st.just(6), do_sample=st.just(True),
    temperature=st.sampled_from([0.5, 1.0, 1.7]), top_k=st.sampled_from([0, 1, 5]),
    top_p=st.sampled_from([1.0, 0.9, 0.3]), eos_token_id=st.just(()),
)


@examples(20)
@given(config=sampling_configs, seed=st.integers(0, 2**16))
def test_the_three_sampling_rules_pick_the_same_tokens(config: GenerationConfig, seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal((64, 50))).astype(np.float32)
    logits[:4, :3] = logits[:4, :1]  # ties, which top-k keeps and the stable sort orders by id
    u = rng.random(64)
    reference = generation.choose_next(logits, u, config)  # the numpy rule both stacks mirror
    assert np.array_equal(torch_generation.choose_next(torch.as_tensor(logits), torch.as_tensor(u), config).numpy(), reference)
    assert np.array_equal(np.asarray(jax_generation.choose_next(jnp.asarray(logits), jnp.asarray(u), config)), reference)
    if config.top_k == 1:  # one candidate left where the maximum is unique (rows 4..): sampling is greedy
        assert np.array_equal(reference[4:], logits[4:].argmax(-1))


def test_top_p_keeps_the_smallest_nucleus() -> None:
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], dtype=np.float32))
    kept = {int(generation.choose_next(logits, np.array([u]), GenerationConfig(do_sample=True, top_p=0.75))[0])
            for u in np.linspace(0, 0.999, 200)}
    assert kept == {0, 1}  # 0.5 < 0.75, then 0.8 >= 0.75: two tokens


def _models(config, seed):
    model = hf_model(config, seed)
    tensors = our_tensors(config, model)
    return model, torch_impl.from_numpy(config, tensors).eval(), jax_impl.params_from_state_dict(config, tensors)


@examples(2)
@given(config=causal_configs(), seed=st.integers(0, 2**16))
def test_greedy_is_token_identical_across_stacks_and_transformers(config, seed: int) -> None:
    hf, ours, params = _models(config, seed)
    ids, mask = left_padded(np.random.default_rng(seed), config, [5, 2, 4])
    cfg = greedy(6)
    torch_out = torch_generate(ours, ids, mask, cfg)
    jax_out = jax_generate(config, params, ids, mask, cfg)
    assert np.array_equal(torch_out, jax_out)
    with torch.no_grad():
        expected = hf.generate(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), max_new_tokens=6, do_sample=False,
                               eos_token_id=None, pad_token_id=config.pad_id, min_new_tokens=6)
    assert np.array_equal(torch_out, expected[:, ids.shape[1]:].numpy())


@examples(2)
@given(config=causal_configs(hf_exportable=False), sampler=sampling_configs, seed=st.integers(0, 2**16))
def test_sampling_is_identical_given_the_same_uniforms(config, sampler: GenerationConfig, seed: int) -> None:
    from parity_tests.test_causal_lm import _random_tensors

    tensors = _random_tensors(config, seed)
    ours, params = torch_impl.from_numpy(config, tensors).eval(), jax_impl.params_from_state_dict(config, tensors)
    ids, mask = left_padded(np.random.default_rng(seed), config, [3, 1])
    draws = generation.uniforms(seed, sampler.max_new_tokens, ids.shape[0])  # one generator feeds both stacks
    torch_out = torch_generate(ours, ids, mask, sampler, draws)
    assert np.array_equal(torch_out, jax_generate(config, params, ids, mask, sampler, draws))


def test_stop_tokens_end_a_row_and_pad_the_rest() -> None:
    config = FIXED
    ours = torch_impl.from_numpy(config, our_tensors(config, hf_model(config, 1))).eval()
    ids, mask = left_padded(np.random.default_rng(1), config, [4, 2, 3])
    free = torch_generate(ours, ids, mask, greedy(8))
    stop = int(free[0, 0])  # row 0 stops at once
    stopped = torch_generate(ours, ids, mask, greedy(8, (stop,)))
    assert stopped.shape == free.shape == (3, 8)  # the other rows run on
    for row in range(ids.shape[0]):
        hits = np.flatnonzero(free[row] == stop)
        end = hits[0] + 1 if hits.size else free.shape[1]  # the stop token itself is kept
        assert np.array_equal(stopped[row, :end], free[row, :end])
        assert (stopped[row, end:] == config.pad_id).all()
    assert (stopped[0, 1:] == config.pad_id).all()
    assert torch_generate(ours, ids, mask, greedy(3)).shape == (3, 3)
    assert np.array_equal(torch_generate(ours, ids, mask, greedy(3)), free[:, :3])


@pytest.mark.parametrize("change, message", [
    (lambda ids, mask: (ids, mask[:, ::-1].copy()), "left-padded"),
    (lambda ids, mask: (ids, np.zeros_like(mask)), "at least one token"),
    (lambda ids, mask: (ids + 1000, mask), "token ids must be in"),
    (lambda ids, mask: (np.tile(ids, (1, 10)), np.tile(mask, (1, 10))), "exceeds max_len"),
])
def test_bad_prompts_are_refused(change, message: str) -> None:
    config = FIXED
    ours = torch_impl.from_numpy(config, our_tensors(config, hf_model(config, 0))).eval()
    ids, mask = change(*left_padded(np.random.default_rng(0), config, [3, 1]))
    with pytest.raises(ValueError, match=message):
        torch_generate(ours, ids, mask, greedy(3))


def test_bad_sampling_settings_are_refused_all_at_once() -> None:
    with pytest.raises(ConfigError) as error:
        GenerationConfig(max_new_tokens=0, temperature=0.0, top_k=-1, top_p=1.5)
    assert all(word in str(error.value) for word in ("max_new_tokens", "temperature", "top_k", "top_p"))
