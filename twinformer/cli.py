"""The `twinformer` console command: a thin dispatcher over twinformer/commands/*."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import twinformer
import twinformer.commands
from shared.checkpoints.checkpoint import CheckpointError
from shared.config.model_config import ConfigError
from shared.data.multi30k import Multi30kError

# Exit statuses: 0 success; 1 a real finding (parity: modules beyond tolerance); 2 bad input
# (arguments, files, configs, missing data), as argparse uses it; 128 + N killed by signal N
# (130 Ctrl-C, 143 SIGTERM), as shells report it.
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
USER_ERRORS = (ConfigError, CheckpointError, FileNotFoundError, ValueError, Multi30kError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twinformer",
        description="One encoder-decoder Transformer in PyTorch and JAX/Flax, kept in step.",
    )
    parser.add_argument("--version", action="version", version=f"twinformer {twinformer.__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(twinformer.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"twinformer.commands.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a usage error argparse has already printed
        return stop.code if isinstance(stop.code, int) else EXIT_USAGE
    try:
        return int(args.run(args) or 0)
    except USER_ERRORS as error:
        # One line (or the error's own list of problems), never a traceback: these are the user's
        # to fix, and the message says how.
        print(f"twinformer {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before training installed its handler, or a second Ctrl-C
        print(f"twinformer {args.command}: aborted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
