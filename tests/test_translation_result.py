"""benchmarks/translation_result.py: both stacks trained at once, compared at their common step."""

from __future__ import annotations

import json

import pytest

from benchmarks.translation_result import common_step, main
from shared.training.run_checkpoint import checkpoint_root, step_dir_name

from tests.test_train_cli import TINY


def _fake_run(root, steps):
    for step in steps:
        (checkpoint_root(root) / step_dir_name(step)).mkdir(parents=True)
    return root


def test_common_step_is_the_newest_step_both_runs_saved(tmp_path):
    faster = _fake_run(tmp_path / "a", [300, 600, 900, 1000])  # a time cap stopped it at 1000
    slower = _fake_run(tmp_path / "b", [300, 600, 700])
    assert common_step([faster, slower]) == 600
    with pytest.raises(ValueError, match="share no checkpoint step"):
        common_step([faster, _fake_run(tmp_path / "c", [50])])


def test_trains_both_stacks_and_scores_them_at_the_common_step(tmp_path, capsys):
    config = tmp_path / "tiny.json"
    TINY.replace(total_steps=4, save_every=2, keep_last=None, bleu_sentences=0).save(config)
    out = tmp_path / "out"
    assert main(["--config", str(config), "--out-dir", str(out), "--average", "2", "--beam", "1",
                 "--json", str(out / "result.json")]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["common_step"] == 4 and result["corpus"] == "toy"
    for framework in ("torch", "jax"):
        scores = result["stacks"][framework]
        assert scores["averaged_steps"] == [2, 4]
        for key in ("final", "average"):
            assert scores[key]["exit"] == 0 and scores[key]["framework"] == framework
            assert 0.0 <= scores[key]["bleu"] <= 100.0
        assert scores["training"]["last_step"] == 4 and "average_beam" not in scores
    assert "common step 4" in capsys.readouterr().out
