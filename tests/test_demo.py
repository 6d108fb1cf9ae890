"""`twinformer demo` with a few steps: PyTorch phase, JAX resume from its checkpoint, parity, no files left."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest

from shared.tolerances import excess, tolerance
from twinformer.cli import main
from twinformer.demo import DemoResult, Sample, ascii_loss_plot, plot_demo_losses, run_demo

# Ten resumed steps: the window in which the table's single-computation tolerance applies to a
# training trajectory. Later, Adam (eps 1e-9) turns float32 noise in mathematically-zero gradients
# (the key-projection biases: softmax ignores a shift shared by all keys) into lr-sized steps, and
# the runs drift apart by ~1e-4 within ~20 steps here; PyTorch against itself on two threads
# instead of one drifts the same way (PARITY_PITFALLS.md, item 7).
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


def test_jax_losses_track_the_torch_continuation(demo):
    """Same weights, Adam state, schedule and batches: the losses agree to the float32 table row."""
    result, _, _ = demo
    device = "gpu" if result.devices["torch"].startswith("cuda") else "cpu"
    tol = tolerance(device, "float32")
    assert excess(result.torch_phase2, result.jax_phase2, tol) <= 1.0, result.phase2_differences()
    # Validation loss too (BLEU is not compared: a near-tie in an untrained model's argmax may
    # legitimately flip on a rounding difference).
    assert excess([result.torch_eval["val_loss"]], [result.jax_eval["val_loss"]], tol) <= 1.0
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
