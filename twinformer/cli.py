"""The `twinformer` console command: a thin dispatcher over twinformer/commands/*."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import twinformer.commands
from shared.checkpoint import CheckpointError
from shared.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twinformer",
        description="One encoder-decoder Transformer in PyTorch and JAX/Flax, kept in step.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(twinformer.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"twinformer.commands.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"twinformer {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
