"""`twinformer average` and shared/checkpoints/average.py: the mean of a run's last checkpoints."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from shared.checkpoints.checkpoint import CheckpointError, load_checkpoint
from shared.checkpoints.average import average_weights, last_checkpoints
from shared.training.run_checkpoint import list_checkpoints
from parity_tests.helpers import assert_all_close
from shared.checkpoints.checkpoint import save_checkpoint
from twinformer.cli import main

from tests.test_train_cli import TINY

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A toy run with a checkpoint every 2 steps, all kept: steps 2, 4, 6."""
    root = tmp_path_factory.mktemp("average")
    config_file = root / "tiny.json"
    TINY.replace(save_every=2, keep_last=None, bleu_sentences=0).save(config_file)
    assert main(["train", "--framework", "torch", "--config", str(config_file), "--run-dir", str(root / "run"),
                 "--steps", "6", "--no-progress"]) == 0
    return root / "run"


def test_average_is_the_elementwise_mean(run_dir):
    chosen = last_checkpoints(run_dir, 2)
    assert [p.name for p in chosen] == ["step_0000004", "step_0000006"]
    config, mean = average_weights(chosen)
    (_, a), (_, b) = load_checkpoint(chosen[0]), load_checkpoint(chosen[1])
    assert config == load_checkpoint(chosen[0])[0]
    moved = 0
    for key in a:
        expected = ((a[key].astype(np.float64) + b[key]) / 2).astype(a[key].dtype)
        np.testing.assert_array_equal(mean[key], expected, err_msg=key)
        moved += int(not np.array_equal(a[key], b[key]))
    assert moved > 0  # the checkpoints differ, so the mean is not one of them


def test_average_command_gives_a_checkpoint_both_stacks_evaluate(run_dir, tmp_path, capsys):
    out = tmp_path / "avg"
    assert main(["average", "--run", str(run_dir), "--last", "3", "--out", str(out)]) == 0
    assert "averaged 3 checkpoint(s) (step_0000002, step_0000004, step_0000006)" in capsys.readouterr().out
    # and an exact float64 copy of the averaged weights, for the bound (each stack's own rounding)
    config, tensors = load_checkpoint(out)
    out64 = tmp_path / "avg64"
    shutil.copytree(out, out64)
    save_checkpoint(out64, config, {k: v.astype(np.float64) for k, v in tensors.items()})
    losses = {}
    for directory in (out, out64):
        for framework in ("torch", "jax"):
            with jax.enable_x64(directory == out64):
                assert main(["evaluate", "--checkpoint", str(directory), "--framework", framework, "--max-sentences", "8",
                             "--no-bleu", "--json"]) == 0
            result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
            assert result["corpus"] == "toy" and result["sentences"] == 8
            losses[framework, directory.name] = result["loss"]
    quad = (losses["torch", "avg"], losses["jax", "avg"], losses["torch", "avg64"], losses["jax", "avg64"])
    assert_all_close("average: loss", {"loss": quad}, "float32", "one model, two stacks")


def test_average_reports_clean_errors(run_dir, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="holds 3 checkpoint"):
        last_checkpoints(run_dir, 4)
    with pytest.raises(ValueError, match="positive integer"):
        last_checkpoints(run_dir, 0)
    newest = list_checkpoints(run_dir)[-1]
    assert main(["average", "--checkpoints", str(newest), "--out", str(newest)]) == 2
    assert "is one of the checkpoints being averaged" in capsys.readouterr().err
    assert main(["average", "--run", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
