"""`twinformer merge`: fold a LoRA adapter into its base checkpoint, giving a plain full checkpoint.

W <- W + scaling * B @ A for every adapted Linear, modules_to_save replaced by their trained copies.
The result is an ordinary checkpoint directory (shared/checkpoints/checkpoint.py) that either stack loads,
with the tokenizer and train config copied in, so translate and evaluate use it as they use the base.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.training.train_config import FRAMEWORKS
from twinformer.cli_common import add_force_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge a LoRA adapter into its base checkpoint",
        description="Merge a PEFT-format LoRA adapter (adapter_config.json + adapter_model.safetensors) "
        "into a base checkpoint (config.json + model.safetensors) and write a full checkpoint.",
    )
    parser.add_argument("--base", required=True, type=Path, metavar="DIR",
                        help="the base: a run directory (its latest checkpoint) or a checkpoint directory")
    parser.add_argument("--adapter", required=True, type=Path, metavar="DIR",
                        help="an adapter directory (ours or PEFT's) or a LoRA run (its latest checkpoint)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for the merged checkpoint")
    add_force_argument(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --out (the old one is removed only once the new one is complete)")
    parser.add_argument(
        "--framework", "--stack", dest="framework", choices=FRAMEWORKS, default="torch",
        help="which implementation does the arithmetic (torch: PEFT's merge_and_unload; default torch). "
             "--stack is the old name",
    )  # fmt: skip
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from shared.checkpoints.atomic_output import atomic_output_dir
    from shared.checkpoints.paths import copy_companions, resolve

    base, adapter = resolve(args.base, "model"), resolve(args.adapter, "adapter")
    if args.out.resolve() in (base.resolve(), adapter.resolve()):
        raise ValueError(f"--out {args.out} is an input of the merge; choose another directory")
    merge = _merge_torch if args.framework == "torch" else _merge_jax
    # Nothing lost: a non-empty --out is refused unless --overwrite; a failed merge leaves --out untouched.
    with atomic_output_dir(args.out, overwrite=args.overwrite) as out:
        num_layers, saved = merge(base, adapter, out, args.force)
        # The fine-tune's train config (its corpus and languages) describes the merged model's task; the
        # tokenizer is the base's (a fine-tune never retrains it).
        copied = copy_companions(out, tokenizer_from=[base, adapter], train_config_from=[adapter, base])
    extra = f" and replaced {len(saved)} module(s) ({', '.join(saved)})" if saved else ""
    with_files = f" (with {', '.join(copied)})" if copied else " (no tokenizer found beside the inputs: add one before translating)"
    print(f"merged {num_layers} adapted layer(s){extra} from {adapter} into {base} -> {args.out}{with_files}")
    return 0


def _merge_torch(base: Path, adapter: Path, out: Path, force: bool) -> tuple[int, list[str]]:
    import torch_impl
    from shared.checkpoints.lora_config import resolve_modules_to_save, resolve_targets
    from torch_impl import lora

    model = torch_impl.load(base)
    peft_model = lora.load_adapter(model, adapter, base=base, force=force)
    lora_config = lora.lora_config_of(peft_model)
    merged = lora.merged_model(peft_model)
    torch_impl.save(merged, out)
    return len(resolve_targets(model.config, lora_config)), resolve_modules_to_save(model.config, lora_config)


def _merge_jax(base: Path, adapter: Path, out: Path, force: bool) -> tuple[int, list[str]]:
    import jax

    import jax_impl
    from jax_impl import lora
    from shared.checkpoints.lora_config import resolve_modules_to_save, resolve_targets

    model, params = jax_impl.load(base)
    lora_config, adapters = lora.load_adapter(adapter, model.config, base=base, force=force)
    merged = lora.merge(params, adapters, lora_config)
    # The merged checkpoint keeps the base's dtype (adapters are often float32 on a bf16 base).
    merged = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), merged, params)
    jax_impl.save(model.config, merged, out)
    return len(resolve_targets(model.config, lora_config)), resolve_modules_to_save(model.config, lora_config)
