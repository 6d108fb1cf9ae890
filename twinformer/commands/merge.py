"""`twinformer merge`: fold a LoRA adapter into its base checkpoint, giving a plain full checkpoint.

W <- W + scaling * B @ A for every adapted Linear, modules_to_save replaced by their trained copies.
The result is an ordinary checkpoint directory (shared/checkpoint.py) that either stack loads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

STACKS = ("torch", "jax")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "merge",
        help="merge a LoRA adapter into its base checkpoint",
        description="Merge a PEFT-format LoRA adapter (adapter_config.json + adapter_model.safetensors) "
        "into a base checkpoint (config.json + model.safetensors) and write a full checkpoint.",
    )
    parser.add_argument("--base", required=True, type=Path, help="base checkpoint directory")
    parser.add_argument("--adapter", required=True, type=Path, help="adapter directory (ours or PEFT's)")
    parser.add_argument("--out", required=True, type=Path, help="directory for the merged checkpoint")
    parser.add_argument(
        "--stack", choices=STACKS, default="torch",
        help="which implementation does the arithmetic (torch: PEFT's merge_and_unload; default torch)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.out.resolve() == args.base.resolve():
        raise ValueError(f"--out {args.out} is the base checkpoint itself; choose another directory")
    merge = _merge_torch if args.stack == "torch" else _merge_jax
    num_layers, saved = merge(args.base, args.adapter, args.out)
    extra = f" and replaced {len(saved)} module(s) ({', '.join(saved)})" if saved else ""
    print(f"merged {num_layers} adapted layer(s){extra} from {args.adapter} into {args.base} -> {args.out}")
    return 0


def _merge_torch(base: Path, adapter: Path, out: Path) -> tuple[int, list[str]]:
    import torch_impl
    from shared.lora_config import resolve_modules_to_save, resolve_targets
    from torch_impl import lora

    model = torch_impl.load(base)
    peft_model = lora.load_adapter(model, adapter)
    lora_config = lora.lora_config_of(peft_model)
    merged = lora.merged_model(peft_model)
    torch_impl.save(merged, out)
    return len(resolve_targets(model.config, lora_config)), resolve_modules_to_save(model.config, lora_config)


def _merge_jax(base: Path, adapter: Path, out: Path) -> tuple[int, list[str]]:
    import jax

    import jax_impl
    from jax_impl import lora
    from shared.lora_config import resolve_modules_to_save, resolve_targets

    model, params = jax_impl.load(base)
    lora_config, adapters = lora.load_adapter(adapter, model.config)
    merged = lora.merge(params, adapters, lora_config)
    # The merged checkpoint keeps the base's dtype (adapters are often float32 on a bf16 base).
    merged = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), merged, params)
    jax_impl.save(model.config, merged, out)
    return len(resolve_targets(model.config, lora_config)), resolve_modules_to_save(model.config, lora_config)
