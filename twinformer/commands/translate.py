"""`twinformer translate`: translate sentences with a checkpoint, in either stack.

Sentences come from the command line, from `--input FILE`, or one per line from stdin; one
translation is printed per input line, in input order. Sentences are sorted by length and cut into
batches of fixed shapes (rows: a power of two up to --batch-size; length: a multiple of 8), so the
jitted JAX decoder compiles once per shape bucket rather than once per batch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.decoding.batching import length_buckets, pad_sources, trim_at_eos
from shared.decoding.generation import GenerationConfig
from twinformer.arg_types import non_negative_int, positive_float, positive_int
from twinformer.cli_common import add_force_argument, add_progress_argument, add_threads_argument, show_progress

LENGTH_MULTIPLE = 8  # source lengths are padded up to a multiple of this: few shapes, few compiles
STRATEGIES = ("greedy", "top_k", "beam")  # --strategy: how GenerationConfig picks tokens (decode_config_of)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "translate",
        help="translate sentences with a checkpoint (greedy, top-k sampling or beam search)",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("sentences", nargs="*", metavar="SENTENCE",
                        help="sentences to translate (default: one per line from --input or stdin)")
    parser.add_argument("--checkpoint", required=True, type=Path, metavar="DIR",
                        help="a run directory (its latest checkpoint) or a checkpoint directory (config.json, "
                             "model.safetensors, tokenizer.json); a LoRA run means its base with its adapter")
    parser.add_argument("--framework", choices=("torch", "jax"), default="torch")
    parser.add_argument("--adapter", type=Path, metavar="DIR",
                        help="a LoRA adapter to apply: an adapter directory or a LoRA run (its latest checkpoint)")
    add_force_argument(parser)
    parser.add_argument("--input", type=Path, metavar="FILE", help="read sentences from FILE, one per line")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None, metavar="N",
                        help="tokens to generate at most (default: the model's max_len - 1)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="greedy",
                        help="beam: beam search over --beam beams (--beam N > 1 alone implies it)")
    parser.add_argument("--k", type=positive_int, default=10, help="top_k: sample among the k most probable tokens")
    parser.add_argument("--temperature", type=positive_float, default=1.0, help="top_k: softmax temperature")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="top_k: random seed")
    parser.add_argument("--beam", type=positive_int, default=1, metavar="N",
                        help="beam search over N beams, length penalty 1 (default 1: no beam search)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="sentences decoded together")
    add_threads_argument(parser)
    add_progress_argument(parser, "no progress bar (shown on stderr for --input / stdin beyond one batch)")
    parser.add_argument("--no-cache", action="store_true",
                        help="re-run the decoder over the whole prefix each step instead of using the KV cache "
                             "(the same tokens, slower; for checking)")
    parser.set_defaults(run=run)


def read_sentences(args: argparse.Namespace) -> list[str]:
    """Sentences from the command line, --input, or stdin (exactly one source)."""
    from twinformer.cli_common import read_lines

    return read_lines(args.sentences, args.input, "sentences")


def load_tokenizer(directory: Path):
    """The tokenizer of a resolved checkpoint directory (shared/checkpoints/paths.py)."""
    from shared.data.tokenizer import JOINT_FILE, Tokenizer

    if not (directory / JOINT_FILE).is_file():
        raise FileNotFoundError(
            f"checkpoint {directory} has no tokenizer ({JOINT_FILE}): translation needs the tokenizer it "
            f"was trained with. Checkpoints written by train, finetune, average and merge carry it; "
            f"for one made otherwise, copy {JOINT_FILE} from the run it came from"
        )
    return Tokenizer.load(directory)


def check_vocabularies(tokenizer, config) -> None:
    """Every id the tokenizer can produce must exist in the model's embedding tables."""
    problems = [
        f"tokenizer {side} vocabulary ({tok_size}) is larger than the model's {side}_vocab_size ({model_size})"
        for side, tok_size, model_size in (
            ("src", tokenizer.src_vocab_size, config.src_vocab_size),
            ("tgt", tokenizer.tgt_vocab_size, config.tgt_vocab_size),
        )
        if tok_size > model_size
    ]
    if problems:
        raise ValueError("tokenizer and checkpoint do not match:\n  - " + "\n  - ".join(problems))


def _make_decoder(args: argparse.Namespace, config: GenerationConfig, checkpoint: Path, adapter: Path | None):
    """(model config, function src (B, S) -> ids (B, T_out)) for the chosen stack: the one generation loop,
    with fresh sampling draws per batch (seed --seed + batch number, the same in both stacks)."""
    from twinformer.decoding_model import load_decoding_model

    model_config, decode = load_decoding_model(args.framework, checkpoint, adapter, force=args.force)
    batches_done = [0]

    def decode_batch(src):
        batches_done[0] += 1
        return decode(src, None, config, seed=args.seed + batches_done[0] - 1)

    return model_config, decode_batch


def decode_in_buckets(sources: dict[int, list[int]], count: int, decode, detokenize, config, args, desc: str) -> list[str]:
    """Decode {line index: source ids} in length buckets of fixed shapes -> `count` texts ("" where no source).

    Rows are a power of two up to --batch-size and lengths a multiple of LENGTH_MULTIPLE, so the
    jitted JAX loop compiles once per bucket shape, not once per batch.
    """
    from tqdm import tqdm

    texts, todo = [""] * count, sorted(sources)
    show_bar = show_progress(args) and not getattr(args, "sentences", None) and len(todo) > args.batch_size
    with tqdm(total=len(todo), desc=desc, unit="line", disable=not show_bar, leave=False, dynamic_ncols=True) as bar:
        for bucket in length_buckets([len(sources[i]) for i in todo], args.batch_size):
            indices = [todo[b] for b in bucket]
            rows = min(args.batch_size, 1 << (len(indices) - 1).bit_length())  # a power of two: few shapes
            src = pad_sources([sources[i] for i in indices], config.pad_id, LENGTH_MULTIPLE, config.max_len, rows)
            generated = decode(src)  # (rows, T_out)
            for row, index in enumerate(indices):
                texts[index] = detokenize(generated[row])
            bar.update(len(indices))
    return texts


def decode_config_of(args: argparse.Namespace) -> GenerationConfig:
    """--strategy, --k, --temperature and --beam as one GenerationConfig: top_k samples among the k
    best tokens (do_sample, top_k, temperature); --beam N other than 1 asks for beam search (length
    penalty 1; --strategy beam with one beam is greedy)."""
    if args.beam != 1 and args.strategy == "top_k":
        raise ValueError("--beam searches over beams; it cannot be combined with --strategy top_k")
    sampling = args.strategy == "top_k"
    return GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=sampling, temperature=args.temperature,
                            top_k=args.k if sampling else 0, num_beams=args.beam, use_cache=not args.no_cache)


def run(args: argparse.Namespace) -> int:
    from twinformer.cli_common import model_and_adapter
    from twinformer.threads import apply_threads

    apply_threads(args.threads)  # before torch / jax are imported
    decode_config = decode_config_of(args)
    checkpoint, adapter = model_and_adapter(args.checkpoint, args.adapter)
    from shared.checkpoints.checkpoint import read_config
    from twinformer.cli_common import require_encoder_decoder

    require_encoder_decoder(read_config(checkpoint), "translate", checkpoint, "`twinformer generate` to continue a prompt")
    tokenizer = load_tokenizer(checkpoint)
    sentences = read_sentences(args)
    config, decode = _make_decoder(args, decode_config, checkpoint, adapter)
    check_vocabularies(tokenizer, config)
    decode_config.steps(config.max_len - 1)  # fail on a bad --max-new-tokens before any work (BOS takes a position)

    # An empty (or blank) line has nothing to translate: it gets an empty line, never a decode of
    # EOS alone (which is the model's guess of a sentence, not a translation).
    todo = [i for i, s in enumerate(sentences) if s.strip()]
    sources = {i: tokenizer.encode_source(sentences[i]) for i in todo}
    too_long = [f"line {i + 1}: {len(sources[i])} tokens" for i in todo if len(sources[i]) > config.max_len]
    if too_long:
        raise ValueError(f"sources longer than the model's max_len {config.max_len}:\n  - " + "\n  - ".join(too_long))

    translations = decode_in_buckets(
        sources, len(sentences), decode, lambda ids: tokenizer.decode_target(trim_at_eos(ids)), config, args, "translate"
    )
    for line in translations:
        print(line)
    return 0
