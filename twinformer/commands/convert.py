"""`twinformer convert`: turn one of the book's own state dicts, or a Hugging Face model directory, into a checkpoint directory."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from shared.checkpoints.checkpoint import FLOAT_DTYPES
from twinformer.arg_types import positive_float, positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    from shared.checkpoints.book_import import BOOK_IMPORTERS

    parser = subparsers.add_parser(
        "convert",
        help="import a checkpoint of the book's models (book-ch3, book-ch4) or a Hugging Face model (hf)",
        description=(
            "book-ch3/book-ch4: read the book's state dict (a torch.save file, read with "
            "weights_only=True, or a safetensors file), map its keys to twinformer's and write "
            "OUT_DIR/config.json + OUT_DIR/model.safetensors. Sizes are read from the tensors; the "
            "number of heads and the norm epsilon cannot be, so they come from the preset unless "
            "given here. hf: SOURCE is a local transformers model directory (config.json + "
            "model.safetensors, sharded safetensors with their index, or pytorch_model.bin); its "
            "tokenizer files are copied along."
        ),
    )
    parser.add_argument("--from", dest="source_format", required=True, choices=sorted([*BOOK_IMPORTERS, "hf"]),
                        help="which of the book's models the state dict belongs to, or hf")
    parser.add_argument("state_dict", type=Path, metavar="SOURCE",
                        help="the book's saved state dict, or (hf) a Hugging Face model directory")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="checkpoint directory to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty OUT_DIR (the old one is removed only once the new one is complete)")
    parser.add_argument("--num-heads", type=positive_int, default=None, help="attention heads (default: the preset's)")
    parser.add_argument("--norm-eps", type=positive_float, default=None, help="norm epsilon (default: the preset's, 1e-5)")
    parser.add_argument("--dtype", choices=sorted(FLOAT_DTYPES), default=None,
                        help="store the weights in this dtype (default: the file's)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from shared.checkpoints.book_import import BOOK_IMPORTERS, read_state_dict
    from shared.checkpoints.atomic_output import atomic_output_dir
    from shared.checkpoints.checkpoint import save_checkpoint

    overrides = {name: value for name, value in (("num_heads", args.num_heads), ("norm_eps", args.norm_eps))
                 if value is not None}
    if args.source_format == "hf":
        from shared.checkpoints.hf_checkpoint import copy_tokenizer, load_hf_lazy

        if overrides:
            raise ValueError("--num-heads / --norm-eps apply to the book's models; an HF config has them")
        cast = None if args.dtype is None else (lambda hf_tensors: _cast(hf_tensors, args.dtype))
        config, tensors = load_hf_lazy(args.state_dict, cast)  # checked, unread: streamed into the checkpoint
    else:
        config, tensors = BOOK_IMPORTERS[args.source_format](read_state_dict(args.state_dict), **overrides)
    if args.dtype is not None and args.source_format != "hf":  # hf: cast above, before the one-dtype check
        tensors = _cast(tensors, args.dtype)
    # Nothing lost: a non-empty OUT_DIR (a checkpoint, a run) is refused unless --overwrite, and a failed
    # conversion leaves it untouched.
    with atomic_output_dir(args.out_dir, overwrite=args.overwrite) as out:
        save_checkpoint(out, config, tensors)
        copied = copy_tokenizer(args.state_dict, out) if args.source_format == "hf" else []
    if copied:
        print(f"tokenizer files copied: {', '.join(copied)}")
    count = sum(math.prod(value.shape) for value in tensors.values())
    dtype = next(iter(tensors.values())).dtype
    print(
        f"converted {args.state_dict} as {args.source_format}: {count:,} parameters ({dtype}, "
        f"d_model {config.d_model}, {config.num_heads} heads, {config.num_encoder_layers}+"
        f"{config.num_decoder_layers} layers) -> {args.out_dir}"
    )
    return 0


def _cast(tensors: dict, dtype_name: str) -> dict:
    """Lazy casts to dtype_name, after one streaming pass that lists every tensor the cast would overflow."""
    from shared.checkpoints.safetensors_stream import lazy

    dtype = FLOAT_DTYPES[dtype_name]

    def cast(array: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # overflow is checked, and reported by key, below
            return array.astype(dtype)

    tensors = {key: lazy(value) for key, value in tensors.items()}
    overflowed = [key for key, value in tensors.items() if _finite(array := value.load()) and not _finite(cast(array))]
    if overflowed:  # e.g. float32 weights beyond float16's range (65504)
        raise ValueError(
            f"casting to {dtype_name} gives non-finite values in: {', '.join(overflowed)}; keep a wider dtype"
        )
    return {key: value.map(cast, dtype=dtype) for key, value in tensors.items()}


def _finite(array: np.ndarray) -> bool:
    return bool(np.isfinite(array.astype(np.float32)).all())
