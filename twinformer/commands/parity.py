"""`twinformer parity`: run both stacks on the same inputs, report per-module differences."""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.config.presets import PRESETS
from shared.parity.tolerances import DEVICES
from twinformer.arg_types import non_negative_int, positive_int

DEFAULT_SRC_LEN, DEFAULT_TGT_LEN = 12, 10


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "parity",
        help="compare PyTorch and JAX outputs module by module",
        description=(
            "Builds the same model in both stacks (from a preset with seeded random weights, or "
            "from a checkpoint), runs one batch through each, in the dtype asked for and once more "
            "in float64 to measure each stack's own rounding error, and prints per module: max "
            "|torch - jax|, that own error, the bound it implies (shared/parity/tolerances.py), the ratio, "
            "and the first module where the two part beyond their bound. Exit status 1 if any does."
        ),
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", default=None, choices=sorted(PRESETS), help="model preset (default: tiny)")
    source.add_argument("--checkpoint", default=None, type=Path, metavar="DIR",
                        help="a run directory (its latest checkpoint) or a checkpoint directory to compare")
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="parameter and activation dtype in both stacks")
    parser.add_argument("--precision", choices=("float32", "tf32"), default="float32",
                        help="float32 matmul precision (tf32 only matters on GPU)")
    parser.add_argument("--batch", type=positive_int, default=4, metavar="N", help="sentences in the batch")
    parser.add_argument("--src-len", type=positive_int, metavar="N", help="source length, at most the model's max_len (default 12, "
                                                                 "or max_len if smaller)")
    parser.add_argument("--tgt-len", type=positive_int, metavar="N", help="target length, at most the model's max_len (default 10, "
                                                                 "or max_len if smaller)")
    parser.add_argument("--seed", type=non_negative_int, default=0, metavar="S")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the per-module rows to this JSON file")
    parser.add_argument("--against", nargs=2, default=None, metavar=("hf", "HF_DIR"),
                        help="compare both stacks with transformers' own model in HF_DIR instead (causal LMs): "
                             "HF_DIR converted, or --checkpoint DIR as the port to check; per module, the first "
                             "one that parts, next-token KL and top-1 agreement (twinformer/hf_parity.py)")
    parser.add_argument("--prompt-len", type=positive_int, default=512, metavar="N",
                        help="--against: prompt tokens (default 512, at most max_len), batch 2, one row left-padded")
    parser.set_defaults(run=run)


def run_against_hf(args: argparse.Namespace) -> int:
    from shared.checkpoints.checkpoint import load_checkpoint
    from shared.checkpoints.paths import resolve
    from shared.checkpoints.hf_checkpoint import load_hf
    from twinformer.devices import pin_precision
    from twinformer.hf_parity import compare_with_hf, format_hf_report

    kind, hf_dir = args.against
    if kind != "hf":
        raise ValueError(f"--against takes hf HF_DIR, got {kind!r}")
    if args.preset or args.dtype != "float32" or args.device != "cpu":
        raise ValueError("--against hf runs float32 and float64 on the CPU from HF_DIR (or --checkpoint); "
                         "drop --preset/--dtype/--device")
    if args.checkpoint:
        config, tensors = load_checkpoint(resolve(args.checkpoint, "model"))
        source = f"checkpoint {args.checkpoint}"
    else:
        config, tensors = load_hf(hf_dir)
        source = f"{hf_dir} converted"
    pin_precision("float32")
    print(f"twinformer parity: {source} in both stacks against transformers' model in {hf_dir} "
          f"(prompt {min(args.prompt_len, config.max_len)} tokens, seed {args.seed})")
    result = compare_with_hf(hf_dir, config, tensors, args.prompt_len, args.seed)
    print(format_hf_report(result))
    if args.json:
        write_json(args.json, result.diffs, "float32")
    return 0 if all(d.ok for d in result.diffs) else 1


def run(args: argparse.Namespace) -> int:
    if args.against is not None:
        return run_against_hf(args)
    from shared.checkpoints.checkpoint import FLOAT_DTYPES, load_checkpoint
    from shared.checkpoints.paths import resolve
    from shared.config.model_config import ModelConfig
    from twinformer.devices import pin_precision
    from twinformer.parity_report import compare, first_parting, format_report, initial_tensors, random_inputs

    if args.checkpoint:
        directory = resolve(args.checkpoint, "model")
        config, tensors = load_checkpoint(directory)
        source = f"checkpoint {directory}"
    else:
        preset = args.preset or "tiny"
        config = ModelConfig.from_preset(preset)
        tensors = initial_tensors(config, args.seed)
        source = f"preset {preset} (seeded random weights, seed {args.seed})"
    from twinformer.cli_common import require_encoder_decoder

    require_encoder_decoder(config, "parity --checkpoint/--preset", source,
                            "`twinformer parity --against hf HF_DIR [--checkpoint DIR]` (layer by layer against transformers)")
    for flag, value in (("--src-len", args.src_len), ("--tgt-len", args.tgt_len)):
        if value is not None and value > config.max_len:
            raise ValueError(f"{flag} {value} exceeds the model's max_len {config.max_len}")
    src_len = args.src_len or min(DEFAULT_SRC_LEN, config.max_len)
    tgt_len = args.tgt_len or min(DEFAULT_TGT_LEN, config.max_len)
    if args.dtype != "float32" and args.precision == "tf32":
        raise ValueError("--precision tf32 applies to float32 only")
    tensors = {key: value.astype(FLOAT_DTYPES[args.dtype]) for key, value in tensors.items()}
    # how values are stored between ops: picks the unit roundoff of the bound's floor
    storage = args.dtype if args.dtype != "float32" else args.precision
    pin_precision(args.precision)
    src, tgt = random_inputs(config, args.batch, src_len, tgt_len, args.seed)
    print(f"twinformer parity: {source}, device {args.device}, dtype {args.dtype}, precision {args.precision}")
    diffs = compare(config, tensors, src, tgt, storage, args.device)
    print(format_report(diffs, storage))
    if args.json:
        write_json(args.json, diffs, storage)
    return 0 if first_parting(diffs) is None else 1


def write_json(path: str, diffs, storage: str) -> None:
    import json
    from pathlib import Path

    from twinformer.parity_report import first_parting

    rows = [
        {"module": d.name, "max_abs": d.comparison.max_abs, "own_error": d.comparison.own_error,
         "bound": d.comparison.limit, "ratio": d.comparison.ratio, "float64_rel": d.float64_rel}
        for d in diffs
    ]  # fmt: skip
    parting = first_parting(diffs)
    summary = {"storage": storage, "first_parting": parting.name if parting else None, "modules": rows}
    Path(path).write_text(json.dumps(summary, indent=1))
