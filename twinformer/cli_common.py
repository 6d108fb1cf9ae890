"""Pieces several `twinformer` commands share: the --threads / --no-progress flags, the line an
interrupted run ends with. (Not in commands/: every module there is a subcommand.)"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from twinformer.arg_types import non_negative_int
from twinformer.threads import DEFAULT_CPU_THREADS


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=non_negative_int, metavar="N",
        help=f"CPU threads for torch / XLA (default {DEFAULT_CPU_THREADS}, or $OMP_NUM_THREADS; "
             "0: the libraries' default, one per core). See twinformer/threads.py",
    )  # fmt: skip


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def model_and_adapter(checkpoint: Path, adapter: Path | None) -> tuple[Path, Path | None]:
    """(model checkpoint dir, adapter dir or None) from --checkpoint and --adapter, resolved by the
    one rule (shared/checkpoint_paths.py). A LoRA run (or checkpoint) given as --checkpoint alone
    means its recorded base, with it as the adapter."""
    from shared.checkpoint_paths import resolve
    from shared.finetune import base_of_lora_run

    if adapter is None and (base := base_of_lora_run(checkpoint)) is not None:
        return resolve(base, "model"), resolve(checkpoint, "adapter")
    return resolve(checkpoint, "model"), None if adapter is None else resolve(adapter, "adapter")


def report_interrupted(result, command: list[str]) -> int:
    """One line for a run a signal stopped (where it saved, how to resume); returns 128 + signal."""
    stop = result.stopped_by
    print(
        f"{stop.name}: stopped at step {result.step} and saved {result.checkpoint}; resume with: "
        f"{shlex.join(command)}",
        file=sys.stderr, flush=True,
    )  # fmt: skip
    return stop.exit_status


__all__ = ["add_progress_argument", "add_threads_argument", "model_and_adapter", "report_interrupted"]
