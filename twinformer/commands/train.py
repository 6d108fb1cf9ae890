"""`twinformer train`: pre-train a model in PyTorch or JAX from a TrainConfig JSON, or resume a run.

A run directory collects checkpoints/step_XXXXXXX/ (+ `latest`), metrics.jsonl and loss.png.
A run can be resumed in either framework: `--resume RUN_DIR --framework jax` continues a run
that PyTorch started (and the reverse); the losses track the uninterrupted run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from shared.train_config import FRAMEWORKS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="pre-train a model (torch or jax) from a train config, or resume a run",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--framework", choices=FRAMEWORKS, required=True)
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="TrainConfig JSON (e.g. configs/toy.json); optional with --resume")
    parser.add_argument("--resume", type=Path, metavar="DIR",
                        help="a run directory (its latest checkpoint) or a checkpoint directory")
    parser.add_argument("--run-dir", type=Path, metavar="DIR",
                        help="where checkpoints and metrics go (default: runs/<config>-<framework>, "
                             "or the resumed run's directory)")
    parser.add_argument("--steps", type=int, metavar="N", help="override the config's total_steps / epochs")
    parser.add_argument("--max-minutes", type=float, metavar="M",
                        help="stop after M minutes of training (then evaluate and save as at the end)")
    parser.add_argument("--compile", action="store_true",
                        help="torch: run the model under torch.compile (the config's torch_compile); jax: always jitted")
    parser.add_argument("--attention", choices=("math", "fused"),
                        help="override the config's attention kernel (fused: SDPA / jax.nn.dot_product_attention)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def default_run_dir(args: argparse.Namespace, checkpoint_dir: Path | None) -> Path:
    if args.run_dir is not None:
        return args.run_dir
    if checkpoint_dir is not None:
        return checkpoint_dir.parent.parent  # RUN_DIR/checkpoints/step_XXXXXXX
    return Path("runs") / f"{args.config.stem}-{args.framework}"


def run(args: argparse.Namespace) -> int:
    from shared.run_checkpoint import load_run_checkpoint, resolve_checkpoint
    from shared.train_config import TrainConfig
    from shared.training_loop import train

    if args.config is None and args.resume is None:
        raise ValueError("give --config FILE to start a run, or --resume DIR to continue one")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be a positive integer, got {args.steps}")
    config = TrainConfig.load(args.config) if args.config is not None else None
    speed = {k: v for k, v in (("torch_compile", args.compile or None), ("attention", args.attention)) if v is not None}
    if speed and config is None:
        raise ValueError("--compile and --attention go with --config (a resumed run keeps its own config)")
    if speed:
        config = dataclasses.replace(config, **speed)
    checkpoint_dir = resolve_checkpoint(args.resume) if args.resume is not None else None
    if checkpoint_dir is not None and config is not None:
        saved = load_run_checkpoint(checkpoint_dir).train_config.to_dict()
        changed = sorted(k for k, v in config.to_dict().items() if saved.get(k) != v)
        if changed:
            print(f"note: --config differs from the checkpoint's train config in: {', '.join(changed)}")
    run_dir = default_run_dir(args, checkpoint_dir)
    result = train(
        config,
        args.framework,
        run_dir,
        resume=checkpoint_dir,
        total_steps=args.steps,
        time_budget_s=None if args.max_minutes is None else 60.0 * args.max_minutes,
        progress=not args.no_progress,
    )
    summary = result.summary(args.framework)
    print(json.dumps(summary, sort_keys=True))
    return 0
