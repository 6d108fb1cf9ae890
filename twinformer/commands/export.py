"""`twinformer export --to hf`: write a checkpoint directory as a Hugging Face transformers model."""

from __future__ import annotations

import argparse
from pathlib import Path

from twinformer.cli_common import add_force_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a checkpoint as a Hugging Face model directory (families with an HF mapping: t5, causal_lm)",
        description=(
            "Write HF_DIR/config.json + HF_DIR/model.safetensors, which transformers' "
            "from_pretrained loads (T5ForConditionalGeneration for the t5 family; for causal_lm the class "
            "its options need: GPT2LMHeadModel, GemmaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM, else "
            "LlamaForCausalLM) and which give the "
            "same logits. Tensors are renamed, never cast, and re-laid out only by exact transposes (GPT-2 Conv1D). Tokenizer files in "
            "CKPT_DIR (tokenizer.json, spiece.model, ...) are copied along."
        ),
    )
    parser.add_argument("--to", dest="target_format", required=True, choices=["hf"], help="output format")
    parser.add_argument("checkpoint", type=Path, metavar="CKPT_DIR", help="twinformer checkpoint directory")
    parser.add_argument("out_dir", type=Path, metavar="HF_DIR", help="Hugging Face directory to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty HF_DIR (the old one is removed only once the new one is complete)")
    parser.add_argument("--adapter", type=Path, default=None, metavar="ADAPTER_DIR",
                        help="also write this LoRA adapter (ours) on HF's module names to HF_DIR/adapter, "
                             "for peft.PeftModel.from_pretrained on the exported model")
    add_force_argument(parser)
    parser.add_argument("--max-shard-size", default="5GB", metavar="SIZE",
                        help="past this many bytes, write shards + model.safetensors.index.json as transformers "
                             "does (500MB, 5GB, 2GiB; default 5GB = 5e9 bytes); tensors keep their dtype")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from shared.checkpoints.atomic_output import atomic_output_dir
    from shared.checkpoints.checkpoint import load_checkpoint_lazy
    from shared.checkpoints.hf_checkpoint import parse_size, save_hf

    max_shard_size = parse_size(args.max_shard_size)  # a bad size fails before anything is read
    config, tensors = load_checkpoint_lazy(args.checkpoint)  # streamed, one tensor at a time
    # Nothing lost: a non-empty HF_DIR is refused unless --overwrite (no stale spiece.model or adapter/ beside
    # a new export), and an adapter that does not fit leaves no half-written directory behind.
    with atomic_output_dir(args.out_dir, overwrite=args.overwrite) as out:
        save_hf(out, config, tensors, tokenizer_from=args.checkpoint, max_shard_size=max_shard_size)
        if args.adapter is not None:
            from shared.checkpoints.adapter_io import load_adapter, save_adapter_hf

            # args.adapter: an adapter directory, or a LoRA run (its latest): the one path rule
            lora, adapter_tensors = load_adapter(args.adapter, config, base=args.checkpoint, force=args.force)
            save_adapter_hf(out / "adapter", config, lora, adapter_tensors)
    print(f"exported {args.checkpoint} ({config.family}) -> {args.out_dir}")
    if args.adapter is not None:
        print(f"exported adapter {args.adapter} -> {args.out_dir / 'adapter'}")
    return 0
