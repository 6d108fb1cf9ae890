"""Ctrl-C and SIGTERM during `train` / `finetune`: finish the step, save, one line, exit 130 / 143.

The signal cases run the real command in a subprocess (`python -m twinformer.cli`), wait until it
has logged a training step, signal it, and check the exit status, the one line it prints, and that
the checkpoint it left resumes. Tiny models: each case takes a few seconds, mostly imports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.training.interrupts import stop_on_signals
from shared.training.run_checkpoint import latest_checkpoint, load_run_checkpoint
from tests.conftest import TINY_RUN
from twinformer.cli import main

REPO = Path(__file__).resolve().parents[1]
# Far more steps than a test waits for: only a signal ends these runs.
ENDLESS = TINY_RUN.replace(total_steps=1_000_000, save_every=0, log_every=1)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _start(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "twinformer.cli", *argv, "--no-progress", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)  # fmt: skip


def _signal_after_first_step(process: subprocess.Popen, run_dir: Path, signum: int) -> tuple[str, str]:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and '"kind": "train"' in metrics.read_text()):
        assert process.poll() is None, f"the run ended before its first step: {process.communicate()}"
        assert time.monotonic() < deadline, "no training step logged within 120 s"
        time.sleep(0.05)
    process.send_signal(signum)
    return process.communicate(timeout=120)


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    return lines[0]


def test_sigint_during_train_saves_and_the_run_resumes(tmp_path, capsys):
    ENDLESS.save(tmp_path / "endless.json")
    run_dir = tmp_path / "run"
    process = _start("train", "--framework", "torch", "--config", str(tmp_path / "endless.json"), "--run-dir", str(run_dir))
    out, err = _signal_after_first_step(process, run_dir, signal.SIGINT)

    assert process.returncode == 130
    line = _one_line(err)
    assert "Traceback" not in err and out == ""
    checkpoint = latest_checkpoint(run_dir)
    step = load_run_checkpoint(checkpoint).step
    assert step >= 1
    assert line == (f"SIGINT: stopped at step {step} and saved {checkpoint}; "
                    f"resume with: twinformer train --framework torch --resume {run_dir}")  # fmt: skip

    # The checkpoint on disk continues the run.
    assert main(["train", "--framework", "torch", "--resume", str(run_dir), "--steps", str(step + 2), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == step + 2 and summary["run_dir"] == str(run_dir)


def test_sigterm_during_finetune_saves_and_exits_143(tiny_run, tmp_path, capsys):
    ENDLESS.save(tmp_path / "ft.json")
    run_dir = tmp_path / "ft"
    process = _start("finetune", "--framework", "torch", "--base", str(tiny_run), "--full",
                     "--config", str(tmp_path / "ft.json"), "--run-dir", str(run_dir))  # fmt: skip
    _, err = _signal_after_first_step(process, run_dir, signal.SIGTERM)

    assert process.returncode == 143
    line = _one_line(err)
    step = load_run_checkpoint(run_dir).step
    assert line.startswith(f"SIGTERM: stopped at step {step} and saved ")
    assert line.endswith(f"resume with: twinformer finetune --framework torch --resume {run_dir}")
    assert main(["finetune", "--framework", "torch", "--resume", str(run_dir), "--steps", str(step + 1),
                 "--no-progress"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == step + 1


# A process that takes one stop signal, then blocks in C code that no signal interrupts (a default
# pthread mutex locked twice: what an XLA compile or a long kernel is to Python's signal handlers).
_STUCK_IN_C = """
import ctypes, signal, os, sys
from shared.training.interrupts import stop_on_signals
libc = ctypes.CDLL(None)
mutex = ctypes.create_string_buffer(64)  # zeroed: PTHREAD_MUTEX_INITIALIZER on glibc
with stop_on_signals() as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested and stop.name == "SIGTERM" and stop.exit_status == 143
    print("stuck", flush=True)
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)  # never returns
"""


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_aborts_at_once_even_inside_c_code(second):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", _STUCK_IN_C], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        assert process.stdout.readline() == "stuck\n"
        time.sleep(0.2)  # inside the C call
        process.send_signal(second)
        # Ended by the signal itself (the shell reports 128 + N), not by a handler that never runs.
        assert process.wait(timeout=20) == -second
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_one_signal_sets_the_request_and_the_handlers_are_restored():
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    with stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs between bytecodes of the main thread
        assert stop.requested and stop.name == "SIGTERM" and stop.exit_status == 143
    assert {signum: signal.getsignal(signum) for signum in before} == before


def test_an_abort_exits_130_without_a_traceback(monkeypatch, capsys):
    import twinformer.commands.parity as parity

    def aborted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(parity, "run", aborted)
    assert main(["parity"]) == 130
    assert capsys.readouterr().err == "twinformer parity: aborted\n"
