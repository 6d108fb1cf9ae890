"""`twinformer average`: average the weights of a run's last N checkpoints into one checkpoint.

The result is a plain checkpoint directory (weights, config, tokenizer, train config) that
`evaluate` and `translate` load in either stack. See shared/checkpoints/average.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from twinformer.arg_types import positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "average",
        help="average the weights of a run's last N checkpoints",
        description=__doc__.split("\n\n")[1],
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", dest="run_dir", type=Path, metavar="DIR", help="a run directory: average its newest --last checkpoints")
    source.add_argument("--checkpoints", type=Path, nargs="+", metavar="DIR", help="these checkpoint directories")
    parser.add_argument("--last", type=positive_int, metavar="N",
                        help="with --run: how many of its newest checkpoints (default: all it kept, its keep_last)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for the averaged checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out (the old one is removed only once the new one is complete)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from shared.checkpoints.atomic_output import atomic_output_dir
    from shared.checkpoints.average import last_checkpoints, write_average

    from shared.checkpoints.paths import resolve

    if args.run_dir is not None:
        directories = last_checkpoints(args.run_dir, args.last)
    else:
        if args.last is not None:
            raise ValueError("--last picks from a run: give it with --run DIR, not with --checkpoints")
        directories = [resolve(d, "model") for d in args.checkpoints]
    if any(Path(d).resolve() == args.out.resolve() for d in directories):
        raise ValueError(f"--out {args.out} is one of the checkpoints being averaged; choose another directory")
    # Nothing lost: a non-empty --out is refused unless --overwrite; a failed average leaves --out untouched.
    with atomic_output_dir(args.out, overwrite=args.overwrite) as out:
        write_average(directories, out)
    print(f"averaged {len(directories)} checkpoint(s) ({', '.join(d.name for d in directories)}) -> {args.out}")
    return 0
