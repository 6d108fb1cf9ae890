"""`twinformer evaluate`: validation/test loss, perplexity and corpus BLEU (ROUGE-1/2/L on TweetSum) of a
checkpoint, in either stack.

The checkpoint is a run directory (its latest checkpoint), a training checkpoint, or any checkpoint
directory holding config.json, model.safetensors and its tokenizer (T5: tokenizer.json or
spiece.model). BLEU is sacrebleu's corpus BLEU, ROUGE Google's rouge-score (stemmed F1, the book's
chapter-5 metric), over greedy decodes (beam search with --beam N) against the references.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from shared.training.train_config import FRAMEWORKS
from twinformer.arg_types import non_empty, positive_int
from twinformer.cli_common import (add_data_dir_argument, add_force_argument, add_progress_argument, add_threads_argument,
                                    show_progress)

DEFAULT_TEST_SPLIT = {"toy": "test", "multi30k": "test_2016_flickr", "tweetsum": "test"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="loss, perplexity and BLEU (ROUGE on TweetSum) of a checkpoint on a corpus split",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--checkpoint", required=True, type=Path, metavar="DIR",
                        help="a run directory (its latest checkpoint) or a checkpoint directory")
    parser.add_argument("--framework", choices=FRAMEWORKS, default="torch")
    parser.add_argument("--corpus", choices=tuple(DEFAULT_TEST_SPLIT),
                        help="default: the run's corpus (toy when the checkpoint has no train config)")
    parser.add_argument("--split", type=non_empty, help="default: toy test, multi30k test_2016_flickr, tweetsum test")
    parser.add_argument("--src-lang", type=non_empty)
    parser.add_argument("--tgt-lang", type=non_empty)
    add_data_dir_argument(parser)
    parser.add_argument("--max-sentences", type=positive_int, metavar="N",
                        help="evaluate on the first N pairs of the split (default: all)")
    parser.add_argument("--no-bleu", action="store_true", help="loss only, no decoding (no BLEU or ROUGE)")
    parser.add_argument("--max-decode-len", type=positive_int, metavar="N",
                        help="new tokens per decode (default: the run's max_decode_len)")
    parser.add_argument("--beam", type=positive_int, default=1, metavar="N",
                        help="decode for BLEU with beam search over N beams (default 1: greedy)")
    parser.add_argument("--adapter", type=Path, metavar="DIR",
                        help="a LoRA adapter to apply to the checkpoint: an adapter directory (ours or PEFT's) "
                             "or a LoRA fine-tuning run (its latest checkpoint); its run's data settings are the "
                             "defaults. A LoRA run given as --checkpoint is evaluated on its recorded base")
    add_force_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    add_threads_argument(parser)
    add_progress_argument(parser)
    parser.set_defaults(run=run)


def load_for_eval(directory: Path):
    """(checkpoint dir, model config, tensors, tokenizer, train config or None) of any checkpoint dir."""
    from shared.checkpoints.checkpoint import load_checkpoint
    from shared.checkpoints.paths import TRAIN_CONFIG_FILE, resolve
    from shared.data.model_tokenizer import has_model_tokenizer, load_model_tokenizer
    from shared.training.train_config import TrainConfig

    from shared.data.tokenizer import TokenizerError

    directory = resolve(directory, "model")
    model_config, tensors = load_checkpoint(directory)
    if not has_model_tokenizer(directory, model_config):
        raise FileNotFoundError(f"checkpoint {directory} has no tokenizer: evaluation needs the training tokenizer")
    train_config = TrainConfig.load(directory / TRAIN_CONFIG_FILE) if (directory / TRAIN_CONFIG_FILE).is_file() else None
    try:
        tokenizer = load_model_tokenizer(directory, model_config)
    except TokenizerError:
        raise ValueError(f"evaluate scores a model with the tokenizer it was trained with here; {directory} carries "
                         "another tokenizer (a Hugging Face one, copied by convert --from hf): use `twinformer generate` "
                         "to run it, or `twinformer parity --against hf` to check the port") from None
    return directory, model_config, tensors, tokenizer, train_config


def format_table(result: dict) -> str:
    """The default, human-readable output: what was scored, then loss, perplexity, speed and BLEU or ROUGE."""
    from shared.training.metrics_log import format_throughput

    decoding = "greedy" if result["num_beams"] == 1 else f"beam search, {result['num_beams']} beams"
    rows = [
        ("checkpoint", result["checkpoint"] + (f" + adapter {result['adapter']}" if "adapter" in result else "")),
        ("framework", result["framework"]),
        ("data", f"{result['corpus']} {result['split']}, {result['sentences']} sentence pairs"),
        ("loss", f"{result['loss']:.4f} nats/token over {result['tokens']} target tokens"),
        ("perplexity", f"{result['ppl']:.2f}"),
    ]
    if "tokens_per_s" in result:  # the loss pass: target tokens/s, with and without its compiles
        rows.append(("speed", format_throughput(result) + ", loss pass"))
    if "bleu" in result:
        rows.append(("BLEU", f"{result['bleu']:.2f} ({decoding}, {result['bleu_sentences']} sentences, sacreBLEU)"))
    if "rouge1" in result:
        scores = ", ".join(f"{name.upper()} {result[name]:.2f}" for name in ("rouge1", "rouge2", "rougeL"))
        rows.append(("ROUGE", f"{scores} ({decoding}, {result['rouge_texts']} texts, rouge-score)"))
    return "\n".join(f"{name:<11} {value}" for name, value in rows)


def run(args: argparse.Namespace) -> int:
    from twinformer.threads import apply_threads

    apply_threads(args.threads)  # before torch / jax are imported
    from shared.checkpoints.adapter_io import load_adapter
    from shared.training.train_config import TrainConfig
    from shared.training.loop import evaluate, load_pairs
    from twinformer.backends import make_backend, make_lora_backend
    from twinformer.cli_common import model_and_adapter

    model_dir, adapter_dir = model_and_adapter(args.checkpoint, args.adapter)
    directory, model_config, tensors, tokenizer, train_config = load_for_eval(model_dir)
    adapter = None
    if adapter_dir is not None:
        adapter = load_adapter(adapter_dir, model_config, base=model_dir, force=args.force)  # lists every misfit
        if (adapter_dir / "train_config.json").is_file():  # a fine-tuning checkpoint: its corpus/languages
            train_config = TrainConfig.load(adapter_dir / "train_config.json")
    if train_config is None:
        train_config = TrainConfig(model=model_config, max_len=model_config.max_len)
    overrides = {"model": model_config, "model_overrides": {}, "init_checkpoint": None}
    corpus = args.corpus or train_config.corpus
    if corpus != train_config.corpus:  # another corpus: its own default languages unless given
        overrides.update(corpus=corpus, src_lang=None, tgt_lang=None)
    if args.max_decode_len is not None:
        overrides["max_decode_len"] = args.max_decode_len
    for name in ("src_lang", "tgt_lang", "data_dir"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    config = train_config.replace(**overrides)
    split = args.split or DEFAULT_TEST_SPLIT[corpus]
    pairs = load_pairs(config, split)
    if args.max_sentences is not None:
        pairs = pairs[: args.max_sentences]
    if adapter is None:
        backend = make_backend(args.framework, model_config, config, 1, tensors)
    else:
        backend = make_lora_backend(args.framework, model_config, config, 1, tensors, adapter[0], adapter[1])
    from shared.families import family_of

    # BLEU scores translations: a decoder-only model has no source to translate (loss and perplexity only)
    scores_bleu = not args.no_bleu and not family_of(model_config).decoder_only
    metrics = evaluate(backend, tokenizer, pairs, config, bleu_sentences=len(pairs) if scores_bleu else 0,
                       num_beams=args.beam, progress=show_progress(args), speed=True)  # fmt: skip
    extra = {} if adapter is None else {"adapter": str(adapter_dir)}
    result = {"checkpoint": str(directory), **extra, "framework": args.framework, "corpus": corpus,
              "split": split, "sentences": len(pairs), "num_beams": args.beam, **metrics}  # fmt: skip
    print(json.dumps(result, sort_keys=True) if args.json else format_table(result))
    return 0
