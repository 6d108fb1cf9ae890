"""Mistral, Qwen2 and Gemma through the CLI: `convert --from hf` / `export --to hf` byte-equal round trips
of models saved by transformers (through the causal_lm round-trip test), `parity --against hf` on a
clean port (exit 0) and on each variant's planted porting bug (exit 1, the parting module named), the
presets' shapes against transformers' own models (on the meta device: no memory), and bad input refused.
"""

from __future__ import annotations

import pytest

from shared.checkpoints.checkpoint import save_checkpoint
from shared.checkpoints.hf_checkpoint import load_hf
from shared.config.model_config import ConfigError, ModelConfig
from shared.families.causal_lm import config_to_hf, key_table
from shared.checkpoints.weight_table import param_specs
from tests import test_causal_lm_hf_io as hf_io
from twinformer.cli import main

TINY = dict(d_model=32, num_heads=4, d_ff=48, num_decoder_layers=2, src_vocab_size=61, tgt_vocab_size=61, max_len=96)
ROUND_TRIPS = {
    "mistral": ModelConfig.from_preset("mistral-7b", **TINY, num_kv_heads=2, sliding_window=16),
    "qwen2-tied": ModelConfig.from_preset("qwen2.5-0.5b", **TINY, num_kv_heads=2, pad_id=60, bos_id=60, eos_id=60),
    "qwen2-untied-windowed": ModelConfig.from_preset("qwen2.5-0.5b", **TINY, pad_id=60, bos_id=60, eos_id=60,
                                                     tie_embeddings="none", sliding_window=8),
    "gemma": ModelConfig.from_preset("gemma-2b", **TINY, num_kv_heads=1, head_size=12),
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIPS))
def test_hf_round_trip_is_byte_equal_and_loads_in_transformers(tmp_path, monkeypatch, name: str) -> None:
    monkeypatch.setitem(hf_io.CONFIGS, name, ROUND_TRIPS[name])
    hf_io.test_hf_round_trip_is_byte_equal_and_loads_in_transformers(tmp_path, name)


def test_each_variant_exports_to_its_own_transformers_model() -> None:
    types = {name: config_to_hf(config)["architectures"][0] for name, config in ROUND_TRIPS.items()}
    assert types == {"mistral": "MistralForCausalLM", "qwen2-tied": "Qwen2ForCausalLM",
                     "qwen2-untied-windowed": "Qwen2ForCausalLM", "gemma": "GemmaForCausalLM"}
    # a Mistral without a window computes as Llama: it exports as one
    assert config_to_hf(ROUND_TRIPS["mistral"].replace(sliding_window=None))["model_type"] == "llama"


@pytest.mark.parametrize("preset, architecture, parameters", [
    ("mistral-7b", "MistralForCausalLM", 7_241_732_096),
    ("qwen2.5-0.5b", "Qwen2ForCausalLM", 494_032_768),
    ("gemma-2b", "GemmaForCausalLM", 2_506_172_416),
])
def test_presets_have_the_shapes_of_the_real_models(preset: str, architecture: str, parameters: int) -> None:
    """Every tensor's shape equals transformers' own model of the exported config, built on the meta device."""
    import torch
    import transformers

    config = ModelConfig.from_preset(preset)
    hf = dict(config_to_hf(config))
    assert hf.pop("architectures") == [architecture]
    with torch.device("meta"):
        model = getattr(transformers, architecture)(transformers.CONFIG_MAPPING[hf.pop("model_type")](**hf))
    theirs = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    ours = {key_table(config)[spec.torch_key]: spec.torch_shape for spec in param_specs(config)}
    tied = {"lm_head.weight"} if config.tie_embeddings == "tgt_out" else set()
    assert ours == {key: shape for key, shape in theirs.items() if key not in tied}
    assert sum(int(torch.Size(shape).numel()) for shape in ours.values()) == parameters  # the published sizes


# -- parity --against hf -------------------------------------------------------------------------------
PROMPT = ["--prompt-len", "64"]  # rows of 64 and 51 tokens: past Mistral's window of 16
PARITY = {"mistral": ROUND_TRIPS["mistral"], "gemma": ROUND_TRIPS["gemma"]}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    from parity_tests.causal_lm_helpers import hf_model

    directories = {}
    for name, config in PARITY.items():
        directories[name] = tmp_path_factory.mktemp(name)
        hf_model(config, seed=0).save_pretrained(directories[name])
    return directories


@pytest.mark.parametrize("name", sorted(PARITY))
def test_a_clean_variant_port_exits_0(hf_dirs, capsys, name: str) -> None:
    assert main(["parity", "--against", "hf", str(hf_dirs[name]), *PROMPT]) == 0
    out = capsys.readouterr().out
    assert "module outputs within their bounds" in out, out[-600:]
    assert out.count("top-1 agreement 1.0000") == 2


PLANTED = {  # bug -> (variant, port, the module that must be named)
    "Gemma's (1 + w) dropped": ("gemma", lambda c: c.replace(norm_one_plus_weight=False), "layers.0.attn_norm"),
    "sliding window ignored": ("mistral", lambda c: c.replace(sliding_window=None), "layers.0.self_attn.o_proj"),
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_a_planted_variant_bug_is_named_where_it_first_shows(hf_dirs, tmp_path, capsys, bug: str) -> None:
    name, plant, expected = PLANTED[bug]
    config, tensors = load_hf(hf_dirs[name])
    save_checkpoint(tmp_path / "port", plant(config), tensors)
    assert main(["parity", "--against", "hf", str(hf_dirs[name]), "--checkpoint", str(tmp_path / "port"), *PROMPT]) == 1
    out = capsys.readouterr().out
    assert f"first module where our stacks part from transformers: {expected}\n" in out, out[-600:]


# -- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, change, expected", [
    ("qwen2-tied", {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}, "layer_types"),
    ("qwen2-tied", {"layer_types": ["sliding_attention", "full_attention"]}, "one attention kind"),
    ("qwen2-tied", {"use_mrope": True}, "use_mrope"),
    ("gemma", {"attention_bias": True}, "attention_bias"),
    ("gemma", {"hidden_activation": "silu"}, "hidden_activation"),
    ("gemma", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ("mistral", {"attention_bias": True}, "not a MistralForCausalLM field"),
    ("mistral", {"sliding_window": 0}, "sliding_window must be a positive integer"),
])
def test_unsupported_variant_configs_are_refused_clearly(name: str, change: dict, expected: str) -> None:
    hf = config_to_hf(ROUND_TRIPS[name])
    if "layer_types" not in change and "use_sliding_window" in change:
        hf.pop("layer_types")
    with pytest.raises(ConfigError, match=expected):
        ModelConfig.from_hf({**hf, **change})


def test_gemma_legacy_gelu_is_the_tanh_approximation() -> None:
    hf = config_to_hf(ROUND_TRIPS["gemma"])
    assert ModelConfig.from_hf({**hf, "hidden_act": "gelu", "hidden_activation": None}).activation == "gelu_tanh"
    assert ModelConfig.from_hf({**hf, "hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh"}) == ROUND_TRIPS["gemma"]


@pytest.mark.parametrize("overrides, expected", [
    (dict(qkv_bias=True, bias=True), "set qkv_bias false"),
    (dict(qkv_bias=True, fused_qkv=True), "set fused_qkv false"),
    (dict(norm_one_plus_weight=True, norm_kind="layernorm", positional="learned"), "set it to 'rms'"),
    (dict(sliding_window=0), "sliding_window must be a positive integer"),
    (dict(qkv_bias=1), "qkv_bias must be a bool"),
])
def test_bad_variant_options_are_refused(overrides: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        ModelConfig.from_preset("llama-small", **overrides)


def test_variant_options_are_refused_in_other_families() -> None:
    with pytest.raises(ConfigError, match="sliding_window is a causal_lm option"):
        ModelConfig.from_preset("tiny", sliding_window=4)


@pytest.mark.parametrize("config, expected", [
    (ROUND_TRIPS["gemma"].replace(sliding_window=8), "sliding_window"),
    (ROUND_TRIPS["gemma"].replace(norm_one_plus_weight=False), "norm_one_plus_weight"),
    (ROUND_TRIPS["mistral"].replace(bias=True), "bias"),
    (ModelConfig.from_preset("gpt2", d_model=16, num_heads=2, sliding_window=4), "sliding_window"),
])
def test_configs_no_transformers_model_expresses_are_not_exported(config: ModelConfig, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        config_to_hf(config)


# The published config.json files, as on the Hub (written by transformers 4.x), field for field.
PUBLISHED = {
    "mistral-7b": {
        "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768,
        "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.34.0.dev0", "use_cache": True, "vocab_size": 32000},
    "qwen2.5-0.5b": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
        "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
        "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.40.1", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
        "use_mrope": False},
    "gemma-2b": {
        "architectures": ["GemmaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 2,
        "eos_token_id": 1, "head_dim": 256, "hidden_act": "gelu", "hidden_size": 2048, "initializer_range": 0.02,
        "intermediate_size": 16384, "max_position_embeddings": 8192, "model_type": "gemma", "num_attention_heads": 8,
        "num_hidden_layers": 18, "num_key_value_heads": 1, "pad_token_id": 0, "rms_norm_eps": 1e-06,
        "rope_scaling": None, "rope_theta": 10000.0, "torch_dtype": "bfloat16", "transformers_version": "4.38.0.dev0",
        "use_cache": True, "vocab_size": 256000},
}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_the_published_configs_convert_to_the_presets(preset: str) -> None:
    assert ModelConfig.from_hf(PUBLISHED[preset]) == ModelConfig.from_preset(preset)
