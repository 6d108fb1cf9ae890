"""`twinformer demo`: learn the embedded toy task in PyTorch, continue the same run in JAX, compare.

Trains a few hundred steps in PyTorch, resumes the checkpoint in JAX (weights, Adam state, schedule
and data position) and, for comparison, in PyTorch; prints both loss curves side by side and the
same held-out sentences translated by both stacks. About a minute on a 2-core CPU; no
network, and no files left behind unless --run-dir is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from twinformer.arg_types import non_negative_int, positive_int
from twinformer.cli_common import add_progress_argument, show_progress
from twinformer.demo import DEFAULT_STEPS_JAX, DEFAULT_STEPS_TORCH


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train the toy task in PyTorch, resume it in JAX, compare losses and translations",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--steps-torch", type=positive_int, default=DEFAULT_STEPS_TORCH, metavar="N",
                        help=f"updates trained in PyTorch before the switch (default {DEFAULT_STEPS_TORCH})")
    parser.add_argument("--steps-jax", type=positive_int, default=DEFAULT_STEPS_JAX, metavar="M",
                        help=f"updates after the switch, in JAX and in PyTorch (default {DEFAULT_STEPS_JAX})")
    parser.add_argument("--seed", type=non_negative_int, default=0, metavar="S", help="initial weights and data order")
    parser.add_argument("--run-dir", type=Path, metavar="DIR",
                        help="keep the runs' checkpoints and metrics here, plus demo_loss.png "
                             "(default: a temporary directory, deleted at the end)")
    add_progress_argument(parser, "no progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from twinformer.demo import run_demo

    run_demo(
        steps_torch=args.steps_torch,
        steps_jax=args.steps_jax,
        seed=args.seed,
        run_dir=args.run_dir,
        progress=show_progress(args),
    )
    return 0
