"""causal_lm checkpoints through Hugging Face: `convert --from hf` / `export --to hf` round trips
(byte-equal tensors, transformers loads the export), and every kind of bad input refused clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from parity_tests.causal_lm_helpers import hf_model
from shared.checkpoints.checkpoint import read_tensors
from shared.config.model_config import ConfigError, ModelConfig
from shared.families.causal_lm import config_to_hf
from twinformer.cli import main

TINY = dict(d_model=16, num_heads=4, d_ff=24, num_decoder_layers=2, src_vocab_size=37, tgt_vocab_size=37, max_len=16)
CONFIGS = {
    "gpt2": ModelConfig.from_preset("gpt2", **TINY, pad_id=36, bos_id=36, eos_id=36),
    "gpt2-untied": ModelConfig.from_preset("gpt2", **TINY, pad_id=36, bos_id=36, eos_id=36, tie_embeddings="none"),
    "llama-gqa": ModelConfig.from_preset("llama-small", **TINY, num_kv_heads=2, rope_theta=500000.0),
    "llama-tied-bias": ModelConfig.from_preset("llama-small", **TINY, tie_embeddings="tgt_out", bias=True, head_size=6),
    "llama3-rope": ModelConfig.from_preset("llama-small", **TINY, rope_theta=500000.0, rope_scaling={
        "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8}),
    "yarn-rope": ModelConfig.from_preset("llama-small", **TINY, rope_scaling={
        "rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 8}),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_hf_round_trip_is_byte_equal_and_loads_in_transformers(tmp_path, name: str) -> None:
    import transformers

    config = CONFIGS[name]
    original = hf_model(config, seed=3)
    original.save_pretrained(tmp_path / "hf")
    assert main(["convert", "--from", "hf", str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 0
    assert main(["export", "--to", "hf", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 0

    before, after = read_tensors(tmp_path / "hf" / "model.safetensors"), read_tensors(tmp_path / "out" / "model.safetensors")
    tied_copies = {"lm_head.weight"} if config.tie_embeddings == "tgt_out" else set()
    assert set(after) == set(before) - tied_copies
    for key, value in after.items():
        assert value.dtype == before[key].dtype and value.shape == before[key].shape, key
        assert value.tobytes() == before[key].tobytes(), f"{key} changed in the round trip"

    reloaded = getattr(transformers, type(original).__name__).from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    ids = torch.as_tensor(np.random.default_rng(0).integers(0, config.tgt_vocab_size, (2, 7)))
    with torch.no_grad():
        assert torch.equal(original(ids).logits, reloaded(ids).logits)
    assert ModelConfig.from_hf(json.loads((tmp_path / "out" / "config.json").read_text())) == config


def test_every_unsupported_gpt2_field_is_listed_at_once() -> None:
    hf = config_to_hf(CONFIGS["gpt2"]) | {"scale_attn_by_inverse_layer_idx": True, "add_cross_attention": True,
                                         "activation_function": "mish", "frobnicate": 1}
    with pytest.raises(ConfigError) as error:
        ModelConfig.from_hf(hf)
    message = str(error.value)
    for field in ("scale_attn_by_inverse_layer_idx", "add_cross_attention", "activation_function", "frobnicate"):
        assert field in message
    assert "4 unsupported field(s)" in message


def test_every_unsupported_llama_field_is_listed_at_once() -> None:
    hf = config_to_hf(CONFIGS["llama-gqa"]) | {"rope_scaling": {"rope_type": "linear", "factor": 2.0},
                                              "pretraining_tp": 2, "attention_bias": True}
    hf["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 1.0, "factor": 4.0}
    with pytest.raises(ConfigError) as error:
        ModelConfig.from_hf(hf)
    message = str(error.value)
    for field in ("rope_scaling", "pretraining_tp", "attention_bias", "rope_parameters"):
        assert field in message


@pytest.mark.parametrize("overrides, expected", [
    (dict(num_kv_heads=3), "multiple of num_kv_heads"),
    (dict(head_size=5), "head size must be even"),
    (dict(num_encoder_layers=2), "num_encoder_layers"),
    (dict(src_vocab_size=40), "one vocabulary"),
    (dict(tie_embeddings="all"), "tie_embeddings"),
    (dict(positional="sinusoid"), "positional"),
    (dict(num_kv_heads=0), "num_kv_heads must be a positive integer"),
    (dict(rope_theta=-1.0), "rope_theta must be > 0"),
])
def test_bad_configs_are_refused(overrides: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        ModelConfig.from_preset("llama-small", **(TINY | overrides))


def test_causal_lm_options_are_refused_in_other_families() -> None:
    with pytest.raises(ConfigError, match="num_kv_heads is a causal_lm option"):
        ModelConfig.from_preset("tiny", num_kv_heads=2)


def test_configs_transformers_cannot_express_are_not_exported() -> None:
    with pytest.raises(ConfigError, match="fused_qkv"):
        config_to_hf(CONFIGS["llama-gqa"].replace(fused_qkv=True))
    with pytest.raises(ConfigError, match="gated_ffn"):
        config_to_hf(CONFIGS["gpt2"].replace(gated_ffn=True))


def test_a_checkpoint_with_the_wrong_tensors_is_refused(tmp_path, capsys) -> None:
    from safetensors.numpy import save_file

    config = CONFIGS["llama-gqa"]
    original = hf_model(config, seed=0)
    original.save_pretrained(tmp_path / "hf")
    tensors = read_tensors(tmp_path / "hf" / "model.safetensors")
    tensors.pop("model.layers.1.mlp.up_proj.weight")
    save_file(tensors, str(tmp_path / "hf" / "model.safetensors"))
    assert main(["convert", "--from", "hf", str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 2
    assert "missing key model.layers.1.mlp.up_proj.weight" in capsys.readouterr().err
    assert not (tmp_path / "ckpt").exists()
