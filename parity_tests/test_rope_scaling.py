"""Rope scalings (llama3, linear, dynamic, yarn) against transformers' LlamaForCausalLM, in both stacks.

The reference is transformers' own model with its own rotary embedding (its rope_init_fn's
frequencies and attention factor), in float32 and as `.double()` (causal_lm_helpers.true_float64
with hf_rope=True: float64 norms and attention, HF's rotary tables untouched). Prompts run past
original_max_position_embeddings (16) up to max_position_embeddings (64): scaling bugs show beyond
the original context. Each rope type also has a planted bug (in the shared table, so in both
stacks) that the same comparison must catch.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jax_impl
import shared.families.causal_lm.rope_scaling as rope_scaling
from parity_tests.causal_lm_helpers import (
    hf_logits, hf_logits_unpadded, hf_model, left_padded, our_tensors, torch_logits,
)
from shared.config.model_config import ModelConfig
from shared.families.causal_lm import config_to_hf
from shared.families.causal_lm.rope_scaling import RopeScaling, default_inv_freq
from shared.parity.tolerances import FLOAT64_AGREEMENT, compare_stacks

ORIGINAL, MAX_LEN = 16, 64
# K = 32 with theta 1e4 puts llama3's three bands (kept, smoothed, divided) and yarn's ramp in the table
SCALINGS = {
    "llama3": RopeScaling("llama3", factor=4.0, low_freq_factor=1.0, high_freq_factor=2.0,
                          original_max_position_embeddings=ORIGINAL),
    "linear": RopeScaling("linear", factor=4.0),
    "dynamic": RopeScaling("dynamic", factor=4.0),
    "yarn": RopeScaling("yarn", factor=4.0, original_max_position_embeddings=ORIGINAL),
    "yarn-mscale": RopeScaling("yarn", factor=8.0, original_max_position_embeddings=ORIGINAL, beta_fast=16.0,
                               beta_slow=2.0, mscale=1.0, mscale_all_dim=0.5, truncate=False),
}
LENGTHS = [48, 37]  # two rows, the second left-padded; both past ORIGINAL


def _config(scaling: RopeScaling) -> ModelConfig:
    return ModelConfig.from_preset(
        "llama-small", d_model=32, num_heads=2, num_kv_heads=1, head_size=32, d_ff=48, num_decoder_layers=2,
        src_vocab_size=61, tgt_vocab_size=61, max_len=MAX_LEN, rope_theta=10000.0, rope_scaling=scaling,
    )


def _jax(config: ModelConfig, tensors: dict, ids: np.ndarray, mask: np.ndarray, float64: bool) -> np.ndarray:
    """Not jitted: a jit cache keyed on the config would keep the unplanted table."""
    dtype = np.float64 if float64 else np.float32
    with jax.enable_x64(float64):
        params = jax_impl.params_from_state_dict(config, {k: v.astype(dtype) for k, v in tensors.items()})
        return np.asarray(jax_impl.build_model(config).apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask)))


def _ratios(config: ModelConfig, seed: int = 0) -> dict[str, float]:
    """{stack: its float32 logits' ratio to the scale-aware bound against transformers}.

    No float64 agreement check against HF here: HF's frequencies come from torch's float32 pow, which
    may differ from numpy's by one ulp in a few entries on some CPUs (a rounding, not a formula
    difference), and its effect on float64 logits grows with the position.
    """
    model = hf_model(config, seed)
    tensors = our_tensors(config, model)
    ids, mask = left_padded(np.random.default_rng(seed), config, LENGTHS)
    real = mask.astype(bool)
    hf32 = hf_logits(model, ids, mask, torch.float32)[real]
    hf64 = hf_logits_unpadded(model, ids, mask, torch.float64, hf_rope=True)[real]
    f64 = {key: value.astype(np.float64) for key, value in tensors.items()}
    ours = {
        "torch_impl": (torch_logits(config, tensors, ids, mask, torch.float32)[real],
                       torch_logits(config, f64, ids, mask, None)[real]),
        "jax_impl": (_jax(config, tensors, ids, mask, False)[real], _jax(config, tensors, ids, mask, True)[real]),
    }
    ratios = {name: compare_stacks(low, hf32, high, hf64, "float32").ratio for name, (low, high) in ours.items()}
    (t32, t64), (j32, j64) = ours.values()
    across = compare_stacks(t32, j32, t64, j64, "float32")
    assert across.ok, f"torch_impl vs jax_impl: ratio {across.ratio:.3g}"
    assert np.abs(t64 - j64).max() <= FLOAT64_AGREEMENT * np.abs(j64).max()
    return ratios


@pytest.mark.parametrize("name", sorted(SCALINGS))
def test_scaled_rope_logits_match_transformers_past_the_original_context(name: str) -> None:
    for stack, ratio in _ratios(_config(SCALINGS[name])).items():
        assert ratio <= 1.0, f"{name}, {stack}: float32 logits at {ratio:.3g} x the scale-aware bound"


@pytest.mark.parametrize("name", sorted(SCALINGS))
def test_attention_factor_is_transformers(name: str) -> None:
    model = hf_model(_config(SCALINGS[name]), seed=0)
    _, factor = rope_scaling.inv_freq_and_factor(10000.0, 32, SCALINGS[name], MAX_LEN)
    assert factor == model.model.rotary_emb.attention_scaling


def _llama3_factors_swapped(theta, K, s, max_len):
    return rope_scaling._llama3(theta, K, RopeScaling(
        "llama3", factor=s.factor, low_freq_factor=s.high_freq_factor, high_freq_factor=s.low_freq_factor + 2 * (
            s.high_freq_factor - s.low_freq_factor), original_max_position_embeddings=s.original_max_position_embeddings,
    ), max_len)


PLANTED = {
    # low/high frequency factors exchanged (shifted so high still exceeds low: the bands move)
    "llama3": _llama3_factors_swapped,
    # positions multiplied by the factor instead of divided
    "linear": lambda theta, K, s, max_len: (default_inv_freq(theta, K) * np.float32(s.factor), 1.0),
    # the NTK base applied at every length (HF rescales only past max_position_embeddings)
    "dynamic": lambda theta, K, s, max_len: (default_inv_freq(theta * s.factor ** (K / (K - 2)), K), 1.0),
    # the attention factor dropped
    "yarn": lambda theta, K, s, max_len: (rope_scaling._yarn(theta, K, s, max_len)[0], 1.0),
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_a_planted_bug_per_rope_type_is_caught(monkeypatch, name: str, capsys) -> None:
    monkeypatch.setitem(rope_scaling.INV_FREQ, name, PLANTED[name])
    ratios = _ratios(_config(SCALINGS[name]))
    for stack, ratio in ratios.items():
        assert ratio > 1.0, f"{name}: planted bug not caught in {stack} (ratio {ratio:.3g})"
    with capsys.disabled():
        print(f"planted {name}: float32 ratios " + ", ".join(f"{s} {r:.3g}" for s, r in ratios.items()))


@pytest.mark.parametrize("name", sorted(SCALINGS))
def test_hf_config_round_trip_keeps_the_scaling(name: str) -> None:
    config = _config(SCALINGS[name])
    hf = json.loads(json.dumps(config_to_hf(config)))
    assert ModelConfig.from_hf(hf) == config
    # transformers v4 spelling: rope_scaling (with "type") and a top-level rope_theta
    v4 = {k: v for k, v in hf.items() if k != "rope_parameters"}
    v4["rope_scaling"] = {("type" if k == "rope_type" else k): v for k, v in v4["rope_scaling"].items()}
    assert ModelConfig.from_hf(v4) == config
    assert ModelConfig.from_json(config.to_json()) == config


def test_llama3_without_original_context_takes_max_position_embeddings() -> None:
    hf = config_to_hf(_config(SCALINGS["llama3"]))
    del hf["rope_parameters"]["original_max_position_embeddings"], hf["rope_scaling"]
    assert ModelConfig.from_hf(hf).rope_scaling.original_max_position_embeddings == MAX_LEN


@pytest.mark.parametrize("parameters, expected", [
    ({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [2.0]}, "unknown rope_scaling field"),
    ({"rope_type": "llama3", "factor": 8.0}, "needs high_freq_factor"),
    ({"rope_type": "linear", "factor": 0.5}, "factor must be >= 1"),
    ({"rope_type": "linear", "factor": 2.0, "beta_fast": 3.0}, "takes no beta_fast"),
    ({"rope_type": "default", "factor": 2.0}, "default rope takes only rope_theta"),
])
def test_unsupported_rope_parameters_are_refused(parameters: dict, expected: str) -> None:
    from shared.json_config import ConfigError

    hf = config_to_hf(_config(None))
    hf["rope_parameters"] = {**parameters, "rope_theta": 10000.0}
    with pytest.raises(ConfigError, match=expected):
        ModelConfig.from_hf(hf)
