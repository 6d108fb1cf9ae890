"""Pieces several `twinformer` commands share: the --threads / --no-progress / --data-dir flags, when
a progress bar is shown, the line an interrupted run ends with. (Not in commands/: every module
there is a subcommand.)"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from twinformer.arg_types import non_empty, non_negative_int
from twinformer.threads import DEFAULT_CPU_THREADS


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=non_negative_int, metavar="N",
        help=f"CPU threads for torch / XLA (default {DEFAULT_CPU_THREADS}, or $OMP_NUM_THREADS; "
             "0: the libraries' default, one per core). See twinformer/threads.py",
    )  # fmt: skip


def add_force_argument(parser: argparse.ArgumentParser) -> None:
    """--force: apply an adapter to a base whose hash differs from the one it recorded (shared/checkpoints/adapter_base.py)."""
    parser.add_argument("--force", action="store_true",
                        help="apply the adapter even if the base's weights differ from those it was trained on "
                             "(its recorded base sha256); refused without it")  # fmt: skip


def add_progress_argument(parser: argparse.ArgumentParser, help: str = "no progress bar") -> None:
    parser.add_argument("--no-progress", action="store_true", help=f"{help} (bars are drawn only on a terminal)")


def show_progress(args: argparse.Namespace) -> bool:
    """The one rule for every command's progress bars: not with --no-progress, and only when stderr
    is a terminal. A bar redrawn with carriage returns into a redirected log is noise (tqdm writes
    every refresh: ~80 KB for one `demo`); the lines a command prints are its log."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


DATA_DIR_HELP = ("directory holding the corpus files (Multi30k .gz, tweetsum_<split>.csv.gz, <split>.txt); default: "
                 "the train config's data_dir, then $TWINFORMER_<CORPUS>_DIR (MULTI30K, TWEETSUM, TEXT), then the "
                 "cache $TWINFORMER_CACHE/<corpus> (shared/data/data_dirs.py)")  # fmt: skip


class _DataDirAction(argparse.Action):
    """Stores --data-dir; an older name of the flag also works and says once, on stderr, that it is deprecated."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if option_string != "--data-dir":
            print(f"twinformer: {option_string} is deprecated; use --data-dir (same meaning)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_data_dir_argument(parser: argparse.ArgumentParser, *deprecated: str) -> None:
    """--data-dir DIR, the one name for where a corpus's files are (older names: deprecated aliases)."""
    parser.add_argument("--data-dir", *deprecated, type=non_empty, metavar="DIR", dest="data_dir",
                        action=_DataDirAction, help=DATA_DIR_HELP)  # fmt: skip


def refuse_other_framework_options(args: argparse.Namespace) -> None:
    """--mesh is JAX's layout and --strategy torch's: given to the other framework, refuse in one line
    rather than drop it without a word."""
    # "none" (one device) only clears a layout a config or resumed run carries: fine in either framework.
    if getattr(args, "mesh", None) not in (None, "none") and args.framework != "jax":
        raise ValueError("--mesh is for --framework jax (a JAX device mesh); torch takes --strategy ddp|fsdp under torchrun")
    if getattr(args, "strategy", None) not in (None, "none") and args.framework != "torch":
        raise ValueError("--strategy is for --framework torch (under torchrun); jax takes --mesh SPEC (e.g. data=4)")


def model_and_adapter(checkpoint: Path, adapter: Path | None) -> tuple[Path, Path | None]:
    """(model checkpoint dir, adapter dir or None) from --checkpoint and --adapter, resolved by the
    one rule (shared/checkpoints/paths.py). A LoRA run (or checkpoint) given as --checkpoint alone
    means its recorded base, with it as the adapter."""
    from shared.checkpoints.paths import resolve
    from shared.training.finetune import base_of_lora_run

    if adapter is None and (base := base_of_lora_run(checkpoint)) is not None:
        return resolve(base, "model"), resolve(checkpoint, "adapter")
    return resolve(checkpoint, "model"), None if adapter is None else resolve(adapter, "adapter")


def read_lines(given: list[str], input_file: Path | None, what: str) -> list[str]:
    """Texts from the command line, from --input FILE (one per line), or one per line from stdin."""
    if given and input_file is not None:
        raise ValueError(f"give {what} on the command line or --input FILE, not both")
    if given:
        return list(given)
    if input_file is not None:
        if not input_file.is_file():
            raise FileNotFoundError(f"--input {input_file}: no such file")
        return input_file.read_text(encoding="utf-8").splitlines()
    return sys.stdin.read().splitlines()


def require_encoder_decoder(config, command: str, source, instead: str) -> None:
    """One line naming the command to use when a decoder-only model reaches an encoder-decoder command."""
    from shared.families import family_of

    if family_of(config).decoder_only:
        raise ValueError(f"{command} needs an encoder-decoder model; {source} is a decoder-only "
                         f"({config.family}) model: use {instead}")


def report_interrupted(result, command: list[str]) -> int:
    """One line for a run a signal stopped (where it saved, how to resume); returns 128 + signal."""
    stop = result.stopped_by
    print(
        f"{stop.name}: stopped at step {result.step} and saved {result.checkpoint}; resume with: "
        f"{shlex.join(command)}",
        file=sys.stderr, flush=True,
    )  # fmt: skip
    return stop.exit_status


__all__ = [
    "DATA_DIR_HELP",
    "add_data_dir_argument",
    "add_force_argument",
    "add_progress_argument",
    "add_threads_argument",
    "model_and_adapter",
    "refuse_other_framework_options",
    "report_interrupted",
    "show_progress",
]
