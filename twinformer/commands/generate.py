"""`twinformer generate`: continue prompts with a decoder-only checkpoint (GPT-2, Llama-style), in either stack.

Prompts come from the command line, from `--input FILE` (one per line), or one per line from stdin.
Each prompt's continuation is printed on its own line(s), in input order, and streamed to stdout
token by token as it is produced when prompts are decoded one at a time (--batch-size 1, the
default). Greedy search by default; --do-sample with --temperature/--top-k/--top-p samples (the
same tokens in both stacks for the same --seed); --num-beams K searches K beams. The engine is the
one generation loop `translate` and `summarize` use (shared/decoding/generation.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from twinformer.arg_types import finite_float, non_negative_int, positive_float, positive_int, unit_interval
from twinformer.cli_common import add_force_argument, add_threads_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="continue prompts with a decoder-only checkpoint (greedy, sampling or beam search), streamed",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("prompts", nargs="*", metavar="PROMPT",
                        help="prompts to continue (default: one per line from --input or stdin)")
    parser.add_argument("--checkpoint", required=True, type=Path, metavar="DIR",
                        help="a causal-LM run directory (its latest checkpoint) or checkpoint directory "
                             "(written by train, or by convert --from hf)")
    parser.add_argument("--framework", choices=("torch", "jax"), default="torch")
    parser.add_argument("--adapter", type=Path, metavar="DIR", help="a LoRA adapter directory or LoRA run")
    add_force_argument(parser)
    parser.add_argument("--input", type=Path, metavar="FILE", help="read prompts from FILE, one per line")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, metavar="N",
                        help="tokens to generate at most per prompt (default 64)")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of searching")
    parser.add_argument("--temperature", type=positive_float, default=1.0, help="sampling temperature")
    parser.add_argument("--top-k", type=non_negative_int, default=0, help="sample among the k most probable (0: off)")
    parser.add_argument("--top-p", type=unit_interval, default=1.0, help="nucleus sampling mass (1: off)")
    parser.add_argument("--num-beams", type=positive_int, default=1, metavar="K", help="beam search over K beams")
    parser.add_argument("--length-penalty", type=finite_float, default=1.0, help="beam search: score / length ** this")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (the same tokens in both stacks)")
    parser.add_argument("--batch-size", type=positive_int, default=1,
                        help="prompts decoded together (1: each streamed as it is produced)")
    parser.add_argument("--no-cache", action="store_true",
                        help="re-run the whole prefix each step instead of the KV cache (same tokens, slower)")
    add_threads_argument(parser)
    parser.set_defaults(run=run)


def read_prompts(args: argparse.Namespace) -> list[str]:
    """Prompts from the command line, --input, or stdin (exactly one source)."""
    from twinformer.cli_common import read_lines

    return read_lines(args.prompts, args.input, "prompts")


def generation_config_of(args: argparse.Namespace):
    from shared.decoding.generation import GenerationConfig

    return GenerationConfig(
        max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, num_beams=args.num_beams, length_penalty=args.length_penalty,
        use_cache=not args.no_cache,
    )  # fmt: skip


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (ids (B, L), mask (B, L)), left-padded as decoder-only prompts are."""
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):], mask[row, width - len(prompt):] = prompt, True
    return ids, mask


def run(args: argparse.Namespace) -> int:
    from shared.checkpoints.checkpoint import read_config
    from shared.data.prompt_codec import PromptCodec, TextStream
    from shared.decoding.batching import trim_at_eos
    from shared.families import family_of
    from twinformer.cli_common import model_and_adapter
    from twinformer.decoding_model import load_decoding_model
    from twinformer.threads import apply_threads

    apply_threads(args.threads)  # before torch / jax are imported
    gen_config = generation_config_of(args)
    checkpoint, adapter = model_and_adapter(args.checkpoint, args.adapter)
    model_config = read_config(checkpoint)
    if not family_of(model_config).decoder_only:
        raise ValueError(f"generate continues prompts with a decoder-only model; {checkpoint} is an encoder-decoder "
                         f"({model_config.family}): use `twinformer translate` (or `summarize` for T5)")
    codec = PromptCodec.load(checkpoint)  # before the model loads: a missing tokenizer fails fast
    prompts = read_prompts(args)
    if not prompts:
        print("twinformer generate: no prompts (give them as arguments, with --input FILE, or on stdin)", file=sys.stderr)
        return 0
    encoded = [codec.encode(p) for p in prompts]
    empty = [f"line {i + 1}" for i, e in enumerate(encoded) if not e]
    if empty:
        raise ValueError("prompts without a token (the tokenizer adds no BOS): " + ", ".join(empty))
    too_long = [f"line {i + 1}: {len(e)} tokens" for i, e in enumerate(encoded) if len(e) + args.max_new_tokens > model_config.max_len]
    if too_long:
        raise ValueError(f"prompt + --max-new-tokens {args.max_new_tokens} exceed the model's max_len "
                         f"{model_config.max_len}:\n  - " + "\n  - ".join(too_long))
    _, generate = load_decoding_model(args.framework, checkpoint, adapter, force=args.force)
    out = sys.stdout
    for start in range(0, len(encoded), args.batch_size):
        batch = encoded[start : start + args.batch_size]
        ids, mask = left_pad(batch, model_config.pad_id)
        if len(batch) == 1 and gen_config.num_beams == 1:  # stream: each token's text as soon as it is chosen
            stream = TextStream(codec)
            generate(ids, mask, gen_config, seed=args.seed + start,
                     on_token=lambda tokens: (out.write(stream.push(tokens[0])), out.flush()))
            out.write(stream.flush() + "\n")
        else:
            generated = generate(ids, mask, gen_config, seed=args.seed + start)  # (B, T_out)
            for row in generated:
                out.write(codec.decode(trim_at_eos(row, model_config.eos_id)) + "\n")
        out.flush()
    return 0

