"""`twinformer demo` with a few steps: PyTorch phase, JAX resume from its checkpoint, parity, no files left."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest

import jax
import numpy as np

from parity_tests.helpers import assert_all_close, float64_backend, float64_checkpoint_copy
from twinformer.backends import make_backend
from twinformer.cli import main
from twinformer.demo import DemoResult, Sample, ascii_loss_plot, plot_demo_losses, run_demo

STEPS_TORCH, STEPS_JAX = 20, 10


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One short demo run in its default temporary directory, whose path is recorded."""
    scratch = tmp_path_factory.mktemp("scratch")
    lines: list[str] = []
    made: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(*args, **kwargs):
        made.append(Path(real_mkdtemp(*args, **{**kwargs, "dir": scratch})))
        return str(made[-1])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
        result = run_demo(STEPS_TORCH, STEPS_JAX, seed=0, progress=False, echo=lines.append)
    return result, "\n".join(lines), made


def test_both_phases_ran_and_jax_resumed_at_the_torch_step(demo):
    result, _, _ = demo
    assert len(result.torch_phase1) == STEPS_TORCH
    assert len(result.torch_phase2) == len(result.jax_phase2) == STEPS_JAX
    assert result.jax_start_step == STEPS_TORCH
    losses = result.torch_phase1 + result.torch_phase2 + result.jax_phase2
    assert all(math.isfinite(x) and x > 0 for x in losses)
    # JAX continued the trained model: a fresh start would be back at the first step's loss.
    assert result.jax_phase2[0] < 0.9 * result.torch_phase1[0]
    assert result.torch_phase1[-1] < result.torch_phase1[0]


@pytest.fixture(scope="module")
def float64_phase2(tmp_path_factory, demo):
    """(torch, jax) float64 twins of the demo's phase 2: (losses, final val_loss) each.

    Phase 1 is rerun (float32, one thread as the demo: the same checkpoint) and its checkpoint
    converted exactly to float64; both stacks resume it in float64 for the same steps.
    """
    import torch

    from shared.training.loop import train
    from twinformer.demo import demo_config

    root = tmp_path_factory.mktemp("demo-float64")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        phase1 = train(demo_config(STEPS_TORCH, STEPS_JAX, seed=0), "torch", root / "torch", stop_at=STEPS_TORCH,
                       progress=False, backend_factory=make_backend)
        assert phase1.losses == demo[0].torch_phase1, "the rerun of phase 1 must reproduce the demo's"
        checkpoint = float64_checkpoint_copy(phase1.checkpoint, root / "float64")
        runs = {}
        with jax.enable_x64():
            for framework in ("torch", "jax"):
                run = train(None, framework, root / f"{framework}-float64", resume=checkpoint, progress=False,
                            backend_factory=float64_backend)
                runs[framework] = (np.array(run.losses), run.evals[-1]["val_loss"])
    finally:
        torch.set_num_threads(threads)
    return runs["torch"], runs["jax"]


def test_jax_losses_track_the_torch_continuation(demo, float64_phase2):
    """Same weights, Adam state, schedule and batches: losses within the scale-aware bound of float64 twins."""
    result, _, _ = demo
    (torch64, torch_val64), (jax64, jax_val64) = float64_phase2
    quad = (np.array(result.torch_phase2), np.array(result.jax_phase2), torch64, jax64)
    assert_all_close("demo: phase 2 losses", {"losses": quad}, "float32", str(result.phase2_differences()))
    # Validation loss too (BLEU is not compared: a near-tie in an untrained model's argmax may
    # legitimately flip on a rounding difference).
    val = (result.torch_eval["val_loss"], result.jax_eval["val_loss"], torch_val64, jax_val64)
    assert_all_close("demo: validation loss", {"val_loss": val}, "float32", "after phase 2")
    assert result.val_sentences == 200 and 0 <= result.val_identical <= 200


def test_report_shows_losses_translations_and_scores(demo):
    result, text, _ = demo
    assert "resumed from step 20" in text
    for step in (1, STEPS_TORCH, STEPS_TORCH + 1, STEPS_TORCH + STEPS_JAX):
        assert f"\n{step:>6}  " in text, step
    assert len(result.samples) == 6
    for sample in result.samples:
        assert sample.source and sample.reference
        assert f"PyTorch    {sample.torch}" in text and f"JAX        {sample.jax}" in text
    assert "BLEU" in text and f"{result.val_identical}/200" in text
    assert "T = PyTorch, J = JAX" in text


def test_no_files_left_behind(demo):
    """The runs' checkpoints went to one temporary directory, deleted at the end."""
    _, _, made = demo
    ours = [path for path in made if path.name.startswith("twinformer-demo-")]
    assert len(ours) == 1 and not ours[0].exists()


def test_loss_png_and_ascii_plot(tmp_path):
    result = DemoResult(
        steps_torch=3, steps_jax=2, torch_phase1=[5.0, 3.0, 2.0], torch_phase2=[1.0, 0.5], jax_phase2=[1.0, 0.5],
        jax_start_step=3, torch_eval={}, jax_eval={}, val_identical=0, val_sentences=0,
        samples=[Sample("a", "b", "b", "b")],
    )  # fmt: skip
    plot = ascii_loss_plot(result, width=5, height=4)
    rows = plot.splitlines()[1:5]
    assert rows[0].endswith("T  | ") and rows[-1].endswith("   |*")  # highest first, lowest last; overlap = *
    png = plot_demo_losses(result, tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_refused_naming_the_flag(capsys, tmp_path):
    for flag, value, message in (("--steps-torch", "0", "must be a positive integer, got '0'"),
                                 ("--steps-jax", "-3", "must be a positive integer, got '-3'"),
                                 ("--seed", "-1", "must be a non-negative integer, got '-1'")):  # fmt: skip
        assert main(["demo", flag, value]) == 2
        assert f"argument {flag}: {message}" in capsys.readouterr().err
    (tmp_path / "old-run").write_text("")
    assert main(["demo", "--run-dir", str(tmp_path), "--no-progress"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
