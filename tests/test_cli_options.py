"""Options a command must never drop silently, what a run says it trained on, and the one progress-bar
rule (bars only on a terminal): `train --mesh / --strategy`, the layout line and record, `translate`'s bar."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from shared.training.run_checkpoint import load_run_checkpoint
from tests.conftest import TINY_RUN
from twinformer.cli import main
from twinformer.cli_common import show_progress

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(("framework", "option", "says"), [
    ("torch", ["--mesh", "data=2"], "--mesh is for --framework jax"),
    ("jax", ["--strategy", "ddp"], "--strategy is for --framework torch"),
])  # fmt: skip
def test_the_other_frameworks_layout_option_is_refused_in_one_line(framework, option, says, tmp_path, capsys):
    TINY_RUN.save(tmp_path / "tiny.json")
    code = main(["train", "--framework", framework, "--config", str(tmp_path / "tiny.json"),
                 "--run-dir", str(tmp_path / "run"), "--no-progress", *option])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"twinformer train: error: {says}") and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before any work


def test_a_mesh_run_says_its_layout_and_records_it(tmp_path, capsys):
    TINY_RUN.replace(total_steps=2, save_every=0).save(tmp_path / "tiny.json")
    assert main(["train", "--framework", "jax", "--config", str(tmp_path / "tiny.json"), "--run-dir",
                 str(tmp_path / "run"), "--no-progress", "--mesh", "data=1"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert "train: jax on mesh data=1: 1 device, 1 process" in captured.err.splitlines()
    layout = {"framework": "jax", "mesh": "data=1", "devices": 1, "processes": 1}
    assert json.loads(captured.out.strip().splitlines()[-1])["layout"] == layout
    assert load_run_checkpoint(tmp_path / "run").trainer_state["layout"] == layout


def test_a_single_device_run_records_its_layout_without_a_line(tiny_run):
    state = load_run_checkpoint(tiny_run).trainer_state
    assert state["layout"] == {"framework": "torch", "devices": 1, "processes": 1}


def test_progress_bars_only_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", Terminal())
    assert show_progress(argparse.Namespace(no_progress=False))
    assert not show_progress(argparse.Namespace(no_progress=True))
    monkeypatch.setattr("sys.stderr", io.StringIO())  # redirected to a file or pipe
    assert not show_progress(argparse.Namespace(no_progress=False))


def test_translate_draws_no_bar_into_a_redirected_stderr(tiny_run, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("".join(f"{word}\n" for word in ["a b", "b c", "c d", "d e", "e f"] * 3))
    assert main(["translate", "--checkpoint", str(tiny_run), "--input", str(tmp_path / "in.txt"),
                 "--batch-size", "2", "--max-new-tokens", "2"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 15 and "\r" not in captured.err and captured.err == ""
