"""ModelConfig: JSON round trips, presets, and invalid configs rejected with every problem named."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given

from parity_tests import strategies as pst
from shared.config.model_config import ConfigError, ModelConfig
from shared.config.presets import PRESETS
from shared.checkpoints.weight_table import param_specs


@given(config=pst.model_configs())
def test_json_round_trip(config: ModelConfig) -> None:
    assert ModelConfig.from_json(config.to_json()) == config
    assert ModelConfig.from_dict(json.loads(config.to_json())) == config
    with tempfile.TemporaryDirectory() as tmp:
        config.save(Path(tmp) / "config.json")
        assert ModelConfig.load(Path(tmp) / "config.json") == config
    assert set(json.loads(config.to_json())) == {f.name for f in dataclasses.fields(ModelConfig)}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_load_and_round_trip(name: str) -> None:
    config = ModelConfig.from_preset(name)
    assert config == PRESETS[name]
    assert ModelConfig.from_json(config.to_json()) == config
    assert param_specs(config)  # the table can describe it
    assert ModelConfig.from_preset(name, dropout=0.0).dropout == 0.0


def test_expected_presets_exist() -> None:
    assert {"book-ch3", "book-ch4", "base", "tiny"} <= set(PRESETS)


def test_unknown_preset_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'huge'; available: base, book-ch3"):
        ModelConfig.from_preset("huge")


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown ModelConfig field\\(s\\): layers"):
        ModelConfig.from_preset("tiny", layers=3)


BASE = PRESETS["tiny"].to_dict()
INVALID = {
    "unknown field": ({"n_layers": 3}, ["unknown ModelConfig field(s): n_layers"]),
    "heads do not divide d_model": ({"d_model": 30, "num_heads": 4}, ["d_model (30) must be divisible by num_heads (4)"]),
    "unknown activation": ({"activation": "swish"}, ["unknown activation 'swish'; expected one of relu, gelu, gelu_tanh"]),
    "odd d_model with sinusoid": ({"d_model": 9, "num_heads": 3}, ["the interleaved sinusoid needs an even d_model, got 9"]),
    "tie all with two vocabularies": ({"tie_embeddings": "all"}, ["tie_embeddings='all' shares one table"]),
    "an option of another family": (
        {"norm_kind": "rms", "positional": "relative"},
        ["the transformer family needs norm_kind in ('layernorm', 'book'), got 'rms'",
         "the transformer family needs positional in ('sinusoid', 'learned'), got 'relative'"],
    ),
    "unknown family": ({"family": "rnn"}, ["unknown family 'rnn'; expected one of transformer, t5"]),
    "pad_id outside the vocabulary": ({"pad_id": 61}, ["pad_id (61) must be < src_vocab_size (61)"]),
    "several problems at once": (
        {"activation": "swish", "norm_kind": "l2", "dropout": 1.5, "bias": 1, "num_encoder_layers": -1},
        [
            "unknown activation 'swish'",
            "unknown norm_kind 'l2'",
            "dropout must be in [0, 1), got 1.5",
            "bias must be a bool, got 1",
            "num_encoder_layers must be a non-negative integer, got -1",
        ],
    ),
}


@pytest.mark.parametrize("case", INVALID)
def test_invalid_configs_name_every_problem(case: str, tmp_path: Path) -> None:
    overrides, expected = INVALID[case]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(BASE | overrides))
    with pytest.raises(ConfigError) as info:
        ModelConfig.load(path)
    message = str(info.value)
    assert str(path) in message
    for text in expected:
        assert text in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "model config is not valid JSON"),
        ("[1, 2]", "a model config must be a JSON object, got list"),
        ('{"d_model": 8}', "model config is missing required field(s): src_vocab_size, tgt_vocab_size"),
    ],
)
def test_malformed_json_is_a_config_error(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("(", "\\(").replace(")", "\\)")):
        ModelConfig.from_json(text)
