"""`convert` never replaces a used OUT_DIR (a checkpoint, a run) unless --overwrite (shared/checkpoints/atomic_output.py)."""

from __future__ import annotations

from parity_tests.causal_lm_helpers import hf_model
from shared.config.model_config import ModelConfig
from twinformer.cli import main

TINY = dict(d_model=16, num_heads=4, d_ff=24, num_decoder_layers=2, src_vocab_size=37, tgt_vocab_size=37, max_len=16)


def test_convert_refuses_a_non_empty_out_dir_unless_overwrite(tmp_path, capsys) -> None:
    hf_model(ModelConfig.from_preset("gpt2", **TINY, pad_id=36, bos_id=36, eos_id=36), seed=3).save_pretrained(tmp_path / "hf")
    out = tmp_path / "run"
    out.mkdir()
    (out / "trainer_state.json").write_text("{}")  # a run directory convert must not hide
    convert = ["convert", "--from", "hf", str(tmp_path / "hf"), str(out)]
    assert main(convert) != 0
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["trainer_state.json"]
    assert main([*convert, "--overwrite"]) == 0
    assert not (out / "trainer_state.json").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]  # no temporary left behind


def test_export_refuses_a_non_empty_hf_dir_unless_overwrite(tmp_path, capsys) -> None:
    hf_model(ModelConfig.from_preset("gpt2", **TINY, pad_id=36, bos_id=36, eos_id=36), seed=3).save_pretrained(tmp_path / "hf")
    assert main(["convert", "--from", "hf", str(tmp_path / "hf"), str(tmp_path / "ckpt")]) == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "spiece.model").write_text("a stale T5 tokenizer")
    export = ["export", "--to", "hf", str(tmp_path / "ckpt"), str(out)]
    assert main(export) != 0
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["spiece.model"]
    assert main([*export, "--overwrite"]) == 0
    assert not (out / "spiece.model").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "hf", "out"]
