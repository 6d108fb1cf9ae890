"""`twinformer finetune`: fine-tune a trained checkpoint in PyTorch or JAX, with LoRA or fully.

The pre-training loop runs on the base checkpoint's model and tokenizer (never retrained). With
--lora only the adapter trains and every checkpoint is a PEFT adapter directory (translate and
evaluate take it as --adapter); with --full every weight trains and checkpoints are full ones.
A run resumes with --resume RUN_DIR, in either framework.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shared.training.train_config import FRAMEWORKS
from twinformer.arg_types import non_empty, positive_int
from twinformer.cli_common import (
    add_data_dir_argument,
    add_progress_argument,
    add_threads_argument,
    report_interrupted,
    show_progress,
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a checkpoint (LoRA or full) with the pre-training loop, or resume a fine-tune",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--framework", choices=FRAMEWORKS, required=True)
    parser.add_argument("--base", type=Path, metavar="DIR",
                        help="the checkpoint (or run directory) to fine-tune; on --resume, the run's base by default")
    parser.add_argument("--lora", type=Path, metavar="CONFIG",
                        help="LoRA fine-tuning: a LoRA config JSON, a PEFT adapter_config.json, or a recipe "
                             "with a 'lora' section (configs/finetune-lora.json)")
    parser.add_argument("--full", action="store_true", help="full fine-tuning: every weight trains")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="the fine-tuning TrainConfig (corpus, languages, steps, optimizer), or a recipe "
                             "with a 'train' section; default: the --lora recipe's")
    parser.add_argument("--resume", type=Path, metavar="DIR", help="a fine-tuning run directory or checkpoint")
    parser.add_argument("--run-dir", type=Path, metavar="DIR",
                        help="default: runs/finetune-<lora|full>-<framework>, or the resumed run's directory")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in a --run-dir that holds another run (deletes its checkpoints and metrics)")
    parser.add_argument("--steps", type=positive_int, metavar="N", help="override the config's total_steps / epochs")
    parser.add_argument("--corpus", choices=("toy", "multi30k", "tweetsum"), help="override the config's corpus")
    parser.add_argument("--src-lang", type=non_empty, help="override the config's source language")
    parser.add_argument("--tgt-lang", type=non_empty, help="override the config's target language")
    add_data_dir_argument(parser)
    add_threads_argument(parser)
    add_progress_argument(parser)
    parser.set_defaults(run=run)


def _problems(args: argparse.Namespace) -> list[str]:
    """Every misuse of the arguments, found before any file is read."""
    found = []
    if args.lora is not None and args.full:
        found.append("give either --lora CONFIG or --full, not both")
    if args.resume is None:
        if args.lora is None and not args.full:
            found.append("choose the kind of fine-tuning: --lora CONFIG (adapters only) or --full (every weight)")
        if args.base is None:
            found.append("give --base DIR: the checkpoint to fine-tune")
        if args.config is None and args.full:
            found.append("give --config FILE: the fine-tuning train config (e.g. configs/finetune-full.json)")
    if args.steps is not None and args.steps < 1:
        found.append(f"--steps must be a positive integer, got {args.steps}")
    return found


def _train_config(args: argparse.Namespace):
    """The TrainConfig from --config (or the --lora recipe), with the command-line data overrides."""
    from shared.training.finetune import read_train_config, recipe_has_train

    source = args.config
    if source is None and args.lora is not None and args.resume is None:
        if not recipe_has_train(args.lora):
            raise ValueError(f"give --config FILE: {args.lora} has no 'train' section to fine-tune with")
        source = args.lora
    overrides = {name: getattr(args, name) for name in ("corpus", "src_lang", "tgt_lang", "data_dir")
                 if getattr(args, name) is not None}  # fmt: skip
    if source is None:
        if overrides:
            raise ValueError(f"--{', --'.join(k.replace('_', '-') for k in overrides)} need --config FILE on --resume")
        return None
    config = read_train_config(source)
    if "corpus" in overrides and overrides["corpus"] != config.corpus:
        overrides = {"src_lang": None, "tgt_lang": None, **overrides}  # another corpus: its default languages
    return config.replace(**overrides)


def run(args: argparse.Namespace) -> int:
    from twinformer.threads import apply_threads

    apply_threads(args.threads)  # before torch / jax are imported
    from shared.training.finetune import finetune, read_lora_config
    from shared.training.run_checkpoint import resolve_checkpoint
    from twinformer.backends import make_backend, make_lora_backend

    problems = _problems(args)
    if problems:
        raise ValueError("finetune arguments:\n  - " + "\n  - ".join(problems))
    lora = read_lora_config(args.lora) if args.lora is not None else None
    mode = "lora" if args.lora is not None else "full" if args.full else None
    config = _train_config(args)
    checkpoint_dir = resolve_checkpoint(args.resume) if args.resume is not None else None
    if args.run_dir is not None:
        run_dir = args.run_dir
    elif checkpoint_dir is not None:
        run_dir = checkpoint_dir.parent.parent  # RUN_DIR/checkpoints/step_XXXXXXX
    else:
        run_dir = Path("runs") / f"finetune-{mode}-{args.framework}"
    result = finetune(
        args.framework, run_dir, base=args.base, mode=mode, lora=lora, config=config, resume=checkpoint_dir,
        total_steps=args.steps, progress=show_progress(args), overwrite=args.overwrite,
        backend_factory=make_backend, lora_backend_factory=make_lora_backend,
    )  # fmt: skip
    if result.stopped_by.requested:
        return report_interrupted(result, ["twinformer", "finetune", "--framework", args.framework, "--resume", str(run_dir)])
    lora_run = getattr(result.backend, "lora", None) is not None
    summary = result.summary(args.framework)
    # A LoRA checkpoint directory is itself an adapter directory (adapter_config.json + weights).
    summary.update(mode="lora" if lora_run else "full", **({"adapter": str(result.checkpoint)} if lora_run else {}))
    print(json.dumps(summary, sort_keys=True))
    return 0
