"""`twinformer summarize`: summarise texts with a T5 checkpoint (the book's chapters 5 and 6), in either stack.

Texts come from the command line, `--input FILE` (one per line), stdin, or a TweetSum split
(`--tweetsum SPLIT`: "Summarize: " + dialogue, scored against the references with ROUGE-1/2/L).
The checkpoint directory holds the T5 tokenizer (tokenizer.json or spiece.model; `twinformer
convert --from hf` copies it). Decoding is the shared greedy decoder, the same tokens in both stacks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.families import T5_TOKENIZER, family_of
from twinformer.arg_types import positive_int
from twinformer.cli_common import add_data_dir_argument, add_force_argument, add_progress_argument, add_threads_argument
from twinformer.commands.translate import _make_decoder, decode_in_buckets, read_sentences


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "summarize",
        help="summarise texts with a T5 checkpoint (TweetSum with ROUGE: --tweetsum SPLIT)",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("sentences", nargs="*", metavar="TEXT", help="texts (default: --input, --tweetsum or stdin)")
    parser.add_argument("--checkpoint", required=True, type=Path, metavar="DIR",
                        help="a T5 checkpoint directory with its tokenizer")
    parser.add_argument("--framework", choices=("torch", "jax"), default="torch")
    parser.add_argument("--adapter", type=Path, metavar="DIR", help="a LoRA adapter (ours or PEFT's on HF names)")
    add_force_argument(parser)
    parser.add_argument("--input", type=Path, metavar="FILE", help="read texts from FILE, one per line")
    parser.add_argument("--tweetsum", choices=("train", "valid", "test"), default=None, metavar="SPLIT",
                        help="summarise this TweetSum split and print ROUGE against its summaries")
    add_data_dir_argument(parser, "--tweetsum-dir")  # --tweetsum-dir: the old name, deprecated
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N", help="only the first N texts")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, metavar="N", help="summary length cap")
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="texts decoded together")
    add_threads_argument(parser)
    add_progress_argument(parser, "no progress bar (shown on stderr beyond one batch)")
    parser.set_defaults(run=run, strategy="greedy", k=1, temperature=1.0, seed=0, beam=1)


def run(args: argparse.Namespace) -> int:
    import sys

    from twinformer.cli_common import model_and_adapter
    from twinformer.threads import apply_threads

    apply_threads(args.threads)  # before torch / jax are imported
    from shared.checkpoints.checkpoint import read_config
    from shared.data.t5_tokenizer import T5Tokenizer
    from shared.decoding.generation import GenerationConfig
    from shared.training.metrics import rouge

    checkpoint, adapter = model_and_adapter(args.checkpoint, args.adapter)  # the one path rule
    # Everything that can be wrong with the input is checked before the model loads (seconds to minutes).
    model_config = read_config(checkpoint)
    family = family_of(model_config)
    if family.decoder_only or family.tokenizer != T5_TOKENIZER:  # an encoder-decoder reading T5's tokenizer
        hint = "`twinformer generate`" if family.decoder_only else "`twinformer translate`"
        raise ValueError(f"summarize needs a T5 checkpoint; {checkpoint} is a {model_config.family!r} model: use {hint}")
    if not T5Tokenizer.present(checkpoint):
        raise FileNotFoundError(
            f"checkpoint {checkpoint} has no T5 tokenizer (tokenizer.json or spiece.model): copy it from the model "
            "the checkpoint came from (`twinformer convert --from hf` copies it)"
        )
    tokenizer = T5Tokenizer.load(checkpoint, eos_id=model_config.eos_id, pad_id=model_config.pad_id)

    if args.data_dir is not None and args.tweetsum is None:
        raise ValueError("--data-dir says where TweetSum is: it goes with --tweetsum SPLIT")
    references = None
    if args.tweetsum is not None:
        if args.sentences or args.input is not None:
            raise ValueError("give --tweetsum or texts, not both")
        from shared.data.tweetsum import load_tweetsum

        texts, references = load_tweetsum(args.tweetsum, args.data_dir)
    else:
        texts = read_sentences(args)
    if args.limit is not None:
        texts, references = texts[: args.limit], None if references is None else references[: args.limit]
    if not texts:  # an empty input file or stdin: nothing to do, which is not an error, but say so
        print("twinformer summarize: no texts in the input: nothing to summarise", file=sys.stderr)
        return 0
    config, decode = _make_decoder(args, GenerationConfig(max_new_tokens=args.max_new_tokens), checkpoint, adapter)
    # A blank line has nothing to summarise: it gets an empty line, as in `translate`, never a decode
    # of </s> alone (the model's guess of a summary of nothing).
    todo = [i for i, text in enumerate(texts) if text.strip()]
    sources = {i: tokenizer.encode(texts[i], max_len=config.max_len) for i in todo}  # long dialogues are cut
    summaries = decode_in_buckets(sources, len(texts), decode, tokenizer.decode, config, args, "summarize")
    for line in summaries:
        print(line)
    if references is not None:
        scores = rouge(summaries, references)
        print(" ".join(f"{name} {value:.2f}" for name, value in scores.items()) + f" ({len(texts)} dialogues)")
    return 0
