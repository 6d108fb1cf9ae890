"""Hugging Face T5 directories in and out: byte-equal round trips in every weight format, the
tokenizer carried along, and one clear error for each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import T5ForConditionalGeneration

from parity_tests.t5_reference import hf_model, random_tensors
from shared.checkpoints.checkpoint import CheckpointError, load_checkpoint
from shared.config.model_config import ConfigError, ModelConfig
from shared.families.t5 import config_to_hf
from shared.checkpoints.hf_checkpoint import read_hf_tensors
from shared.config.presets import PRESETS
from twinformer.cli import main

TINY = {
    "v1.0": ModelConfig.from_preset("t5-small", d_model=8, num_heads=2, head_size=3, d_ff=6, num_encoder_layers=2,
                                    num_decoder_layers=1, src_vocab_size=11, tgt_vocab_size=11, max_len=32),
    "v1.1": ModelConfig.from_preset("flan-t5-small", d_model=8, num_heads=2, head_size=3, d_ff=6, num_encoder_layers=1,
                                    num_decoder_layers=2, src_vocab_size=11, tgt_vocab_size=11, max_len=32),
}
TOKENIZER_JSON = '{"version": "1.0", "model": {"type": "Unigram", "vocab": [["<pad>", 0.0]]}}'


def write_hf_dir(directory: Path, config: ModelConfig, weights: str) -> T5ForConditionalGeneration:
    """A transformers-saved T5 directory in one of the three weight formats, plus a tokenizer file."""
    model = hf_model(config, random_tensors(config, seed=3))
    if weights == "safetensors":
        model.save_pretrained(directory)
    elif weights == "sharded":
        model.save_pretrained(directory, max_shard_size="2KB")
        assert (directory / "model.safetensors.index.json").is_file()
    else:  # the older torch.save format (every tied name saved, as transformers 4 did)
        directory.mkdir(parents=True)
        model.config.to_json_file(directory / "config.json")
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, directory / "pytorch_model.bin")
    (directory / "tokenizer.json").write_text(TOKENIZER_JSON)
    return model


@pytest.mark.parametrize("weights", ["safetensors", "sharded", "bin"])
@pytest.mark.parametrize("version", sorted(TINY))
def test_hf_to_twinformer_to_hf_is_byte_equal(tmp_path, version, weights, capsys):
    config = TINY[version]
    original = write_hf_dir(tmp_path / "hf", config, weights)
    assert main(["convert", "--from", "hf", str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 0
    assert load_checkpoint(tmp_path / "ckpt")[0] == config.replace(dropout=0.1, attention_dropout=0.1, embedding_dropout=0.1)
    assert main(["export", "--to", "hf", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 0
    source, exported = read_hf_tensors(tmp_path / "hf"), load_file(tmp_path / "out" / "model.safetensors")
    tied_copies = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}
    if version == "v1.0":
        tied_copies.add("lm_head.weight")
    assert set(exported) == set(source) - tied_copies
    for key, value in exported.items():
        assert value.dtype == source[key].dtype and value.tobytes() == source[key].tobytes(), key
    for name in ("tokenizer.json",):
        assert (tmp_path / "ckpt" / name).read_text() == TOKENIZER_JSON
        assert (tmp_path / "out" / name).read_text() == TOKENIZER_JSON
    reloaded = T5ForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    src, tgt = torch.tensor([[3, 4, 5, 1]]), torch.tensor([[0, 6, 7]])
    with torch.no_grad():
        assert torch.equal(original(input_ids=src, decoder_input_ids=tgt).logits,
                           reloaded(input_ids=src, decoder_input_ids=tgt).logits)


@pytest.mark.parametrize("name", ["t5-small", "flan-t5-small", "flan-t5-base"])
def test_preset_configs_translate_both_ways(name):
    assert ModelConfig.from_hf(config_to_hf(PRESETS[name])) == PRESETS[name]


def test_an_inexpressible_config_lists_every_unsupported_field():
    hf = config_to_hf(TINY["v1.1"]) | {
        "feed_forward_proj": "gated-silu", "is_decoder": True, "eos_token_id": [1, 2], "rope_theta": 10000.0,
    }
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_hf(hf)
    message = str(info.value)
    assert "4 unsupported field(s)" in message
    for text in ("feed_forward_proj='gated-silu'", "is_decoder=True", "eos_token_id=[1, 2]", "rope_theta=10000.0"):
        assert text in message


def test_convert_reports_bad_directories(tmp_path, capsys):
    assert main(["convert", "--from", "hf", str(tmp_path / "nowhere"), str(tmp_path / "a")]) == 2
    assert "does not exist" in capsys.readouterr().err
    write_hf_dir(tmp_path / "hf", TINY["v1.0"], "safetensors")
    (tmp_path / "hf" / "model.safetensors").unlink()
    assert main(["convert", "--from", "hf", str(tmp_path / "hf"), str(tmp_path / "b")]) == 2
    assert "holds no weights: expected model.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_truncated_shard_names_the_file(tmp_path, capsys):
    write_hf_dir(tmp_path / "hf", TINY["v1.1"], "sharded")
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    shard = tmp_path / "hf" / sorted(set(index["weight_map"].values()))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert main(["convert", "--from", "hf", str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 2
    error = capsys.readouterr().err
    assert shard.name in error and "truncated or corrupt" in error
    assert not (tmp_path / "ckpt").exists()


def test_missing_and_unexpected_tensors_are_all_listed(tmp_path):
    write_hf_dir(tmp_path / "hf", TINY["v1.1"], "safetensors")
    tensors = load_file(tmp_path / "hf" / "model.safetensors")
    tensors.pop("decoder.final_layer_norm.weight")
    tensors["encoder.block.0.layer.0.SelfAttention.q.bias"] = np.zeros(6, np.float32)
    from safetensors.numpy import save_file

    save_file(tensors, tmp_path / "hf" / "model.safetensors")
    with pytest.raises(CheckpointError) as info:
        from shared.checkpoints.hf_checkpoint import load_hf

        load_hf(tmp_path / "hf")
    assert "missing key decoder.final_layer_norm.weight" in str(info.value)
    assert "unexpected key encoder.block.0.layer.0.SelfAttention.q.bias" in str(info.value)


@pytest.mark.parametrize("explicit", [{}, {"tie_word_embeddings": True}, {"tie_word_embeddings": False}])
def test_omitted_tie_fields_default_as_transformers_reads_them(explicit):
    """A config.json without tie_word_embeddings / scale_decoder_outputs (t5-small's) means what
    transformers' own T5Config makes of it: the tied, rescaled head (tie_embeddings "all")."""
    import transformers

    from shared.families import t5 as t5_family

    written = {"vocab_size": 32, "d_model": 8, "d_kv": 4, "d_ff": 16, "num_layers": 1, "num_heads": 2} | explicit
    theirs = transformers.T5Config(**written)
    expected = getattr(theirs, "scale_decoder_outputs", theirs.tie_word_embeddings)
    ours = ModelConfig(**t5_family.fields_from_hf(written))
    assert (ours.tie_embeddings == "all") == bool(expected), (explicit, ours.tie_embeddings, expected)
