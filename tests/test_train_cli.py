"""The `twinformer train` and `twinformer evaluate` commands on the embedded toy task (a few steps)."""

from __future__ import annotations

import json

import pytest

from shared.training.train_config import TrainConfig
from twinformer.cli import main

TINY = TrainConfig(
    model_overrides={"d_model": 16, "num_heads": 2, "d_ff": 32, "num_encoder_layers": 1,
                     "num_decoder_layers": 1, "dropout": 0.0, "attention_dropout": 0.0,
                     "embedding_dropout": 0.0, "max_len": 16},
    vocab_size=48, batch_size=16, max_len=16, pad_to_multiple=16, total_steps=100,
    log_every=2, bleu_sentences=4, max_decode_len=6,
)  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_train_resume_in_other_framework_and_evaluate(tmp_path, capsys):
    config_file = tmp_path / "tiny.json"
    TINY.save(config_file)
    run_dir = tmp_path / "run"
    assert main(["train", "--framework", "torch", "--config", str(config_file), "--run-dir", str(run_dir),
                 "--steps", "4", "--no-progress", "--attention", "fused"]) == 0  # saved with the run: the JAX resume uses it too
    summary = _last_json(capsys.readouterr().out)
    assert summary["step"] == 4 and summary["checkpoint"].endswith("step_0000004") and "val_loss" in summary
    assert (run_dir / "metrics.jsonl").is_file() and (run_dir / "loss.png").is_file()

    assert main(["train", "--framework", "jax", "--resume", str(run_dir), "--steps", "6", "--no-progress"]) == 0
    summary = _last_json(capsys.readouterr().out)
    assert summary["step"] == 6 and summary["run_dir"] == str(run_dir) and "bleu" in summary

    for framework in ("torch", "jax"):
        assert main(["evaluate", "--checkpoint", str(run_dir), "--framework", framework,
                     "--max-sentences", "8", "--json"]) == 0
        result = _last_json(capsys.readouterr().out)
        assert result["split"] == "test" and result["sentences"] == 8 and result["checkpoint"].endswith("step_0000006")
        assert 0.0 < result["loss"] < 10.0 and 0.0 <= result["bleu"] <= 100.0 and result["num_beams"] == 1
        assert "val_loss" not in result, "the test split's loss is not a validation loss"

        assert main(["evaluate", "--checkpoint", str(run_dir), "--framework", framework,
                     "--max-sentences", "8", "--beam", "2", "--json"]) == 0
        beam = _last_json(capsys.readouterr().out)
        assert beam["num_beams"] == 2 and 0.0 <= beam["bleu"] <= 100.0 and beam["bleu_sentences"] == 8
        assert beam["loss"] == result["loss"], "the beam changes decoding only"


def test_train_reports_clean_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"optimizer": "sgd", "lr": 0}))
    assert main(["train", "--framework", "torch", "--config", str(bad), "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown optimizer 'sgd'" in err and "lr must be > 0" in err
    assert main(["train", "--framework", "jax", "--run-dir", str(tmp_path)]) == 2
    assert "give --config FILE" in capsys.readouterr().err
    assert main(["train", "--framework", "torch", "--resume", str(tmp_path), "--compile"]) == 2
    assert "--compile and --attention go with --config" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert f"{tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing"), "--beam", "0"]) == 2
    assert "argument --beam: must be a positive integer, got '0'" in capsys.readouterr().err
