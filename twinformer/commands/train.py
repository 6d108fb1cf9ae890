"""`twinformer train`: pre-train a model in PyTorch or JAX from a TrainConfig JSON, or resume a run.

A run directory collects checkpoints/step_XXXXXXX/ (+ `latest`), metrics.jsonl and loss.png.
A run can be resumed in either framework: `--resume RUN_DIR --framework jax` continues a run
that PyTorch started (and the reverse); the losses track the uninterrupted run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from shared.training.sharding import STRATEGIES
from shared.training.train_config import FRAMEWORKS
from twinformer.arg_types import positive_float, positive_int
from twinformer.cli_common import (
    add_data_dir_argument,
    add_progress_argument,
    add_threads_argument,
    refuse_other_framework_options,
    report_interrupted,
    show_progress,
)


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
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a --run-dir that holds another run (deletes its checkpoints and metrics)")
    parser.add_argument("--steps", type=positive_int, metavar="N", help="override the config's total_steps / epochs")
    add_data_dir_argument(parser)
    parser.add_argument("--max-minutes", type=positive_float, metavar="M",
                        help="stop after M minutes of training (then evaluate and save as at the end)")
    add_threads_argument(parser)
    add_progress_argument(parser)
    parser.add_argument("--mesh", metavar="SPEC",
                        help="JAX: train on a device mesh, data=N (data parallel), fsdp=N (fully sharded) or "
                             "data=N,fsdp=M; 'none' = one device (overrides the config's mesh)")
    parser.add_argument("--strategy", choices=(*STRATEGIES, "none"),
                        help="torch under torchrun: ddp or fsdp (FSDP2); 'none' = one process "
                             "(overrides the config's strategy)")
    parser.add_argument("--compile", action="store_true",
                        help="torch: run the model under torch.compile (the config's torch_compile); jax: always jitted")
    parser.add_argument("--attention", choices=("math", "fused"),
                        help="override the config's attention kernel (fused: SDPA / jax.nn.dot_product_attention)")
    parser.set_defaults(run=run)


def default_run_dir(args: argparse.Namespace, checkpoint_dir: Path | None) -> Path:
    if args.run_dir is not None:
        return args.run_dir
    if checkpoint_dir is not None:
        return checkpoint_dir.parent.parent  # RUN_DIR/checkpoints/step_XXXXXXX
    return Path("runs") / f"{args.config.stem}-{args.framework}"


def run(args: argparse.Namespace) -> int:
    from twinformer.threads import apply_threads

    refuse_other_framework_options(args)  # --mesh is JAX's, --strategy torch's: never dropped silently
    apply_threads(args.threads)  # before torch / jax are imported
    from shared.training.run_checkpoint import TRAIN_CONFIG_FILE, load_run_checkpoint, resolve_checkpoint
    from shared.training.train_config import TrainConfig
    from shared.training.sharding import describe_layout, run_layout, torchrun_world
    from shared.training.loop import train

    if args.config is None and args.resume is None:
        raise ValueError("give --config FILE to start a run, or --resume DIR to continue one")
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
    if args.data_dir is not None:  # where the corpus lives on this machine: not a change of recipe
        base = config if config is not None else TrainConfig.load(checkpoint_dir / TRAIN_CONFIG_FILE)
        config = base.replace(data_dir=args.data_dir)
    run_dir = default_run_dir(args, checkpoint_dir)
    if config is None:  # resuming: the checkpoint's config, which --mesh / --strategy may change
        config = load_run_checkpoint(checkpoint_dir).train_config
    config = scale_out_overrides(args, config)
    backend_factory = scale_out_backend_factory(args.framework, config)  # checks the layout first
    layout = run_layout(args.framework, config.mesh, config.strategy)
    main_process = torchrun_world()[0] == 0 and os.environ.get("JAX_PROCESS_ID", "0") == "0"
    if ("mesh" in layout or "strategy" in layout) and main_process:  # a scaled-out run says on what, once
        print(f"train: {describe_layout(layout)}", file=sys.stderr, flush=True)
    result = train(
        config,
        args.framework,
        run_dir,
        resume=checkpoint_dir,
        total_steps=args.steps,
        time_budget_s=None if args.max_minutes is None else 60.0 * args.max_minutes,
        progress=show_progress(args),
        overwrite=args.overwrite,
        backend_factory=backend_factory,
        extra_trainer_state={"layout": layout},  # what this run trained on (a resume records its own)
    )
    if result.backend is not None and not getattr(result.backend, "is_main_process", True):
        return result.stopped_by.exit_status  # the main process reports (0, or 130/143 after a signal)
    if result.stopped_by.requested:
        return report_interrupted(result, ["twinformer", "train", "--framework", args.framework, "--resume", str(run_dir)])
    summary = {**result.summary(args.framework), "layout": layout}
    print(json.dumps(summary, sort_keys=True))
    return 0


def scale_out_overrides(args: argparse.Namespace, config):
    """The train config with --mesh / --strategy applied."""
    overrides = {}
    if args.mesh is not None:
        overrides["mesh"] = None if args.mesh == "none" else args.mesh
    if args.strategy is not None:
        overrides["strategy"] = None if args.strategy == "none" else args.strategy
    return config.replace(**overrides) if overrides else config


def scale_out_backend_factory(framework: str, config):
    """The backend factory for the config's layout: one device, a JAX mesh, or torch DDP/FSDP2.

    A config holds both layouts (mesh for JAX, strategy for torch); each framework reads its own.
    """
    from shared.training.sharding import MeshSpec, torchrun_world

    if framework == "jax" and config.mesh is not None:
        from jax_impl.sharding import initialize_distributed, make_sharded_backend_factory

        initialize_distributed()
        return make_sharded_backend_factory(MeshSpec.parse(config.mesh))
    if framework == "torch" and config.strategy is not None:
        from torch_impl.distributed import make_distributed_backend_factory

        return make_distributed_backend_factory(config.strategy)
    if framework == "torch" and torchrun_world()[1] > 1:
        raise ValueError("started by torchrun with several processes: choose --strategy ddp or fsdp")
    from twinformer.backends import make_backend

    return make_backend
