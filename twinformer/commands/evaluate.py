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

from shared.train_config import FRAMEWORKS
DEFAULT_TEST_SPLIT = {"toy": "test", "multi30k": "test_2016_flickr", "tweetsum": "test"}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="loss, perplexity and BLEU (ROUGE on TweetSum) of a checkpoint on a corpus split",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--checkpoint", required=True, type=Path, metavar="DIR")
    parser.add_argument("--framework", choices=FRAMEWORKS, default="torch")
    parser.add_argument("--corpus", choices=tuple(DEFAULT_TEST_SPLIT),
                        help="default: the run's corpus (toy when the checkpoint has no train config)")
    parser.add_argument("--split", help="default: toy test, multi30k test_2016_flickr, tweetsum test")
    parser.add_argument("--src-lang")
    parser.add_argument("--tgt-lang")
    parser.add_argument("--data-dir", help="directory holding the Multi30k .gz files (TweetSum: its .csv.gz files)")
    parser.add_argument("--max-sentences", type=int, metavar="N",
                        help="evaluate on the first N pairs of the split (default: all)")
    parser.add_argument("--no-bleu", action="store_true", help="loss only, no decoding (no BLEU or ROUGE)")
    parser.add_argument("--max-decode-len", type=int, metavar="N",
                        help="new tokens per decode (default: the run's max_decode_len)")
    parser.add_argument("--beam", type=int, default=1, metavar="N",
                        help="decode for BLEU with beam search over N beams (default 1: greedy)")
    parser.add_argument("--adapter", type=Path, metavar="DIR",
                        help="a LoRA adapter to apply to the checkpoint: an adapter directory (ours or PEFT's) "
                             "or a LoRA fine-tuning run (its latest checkpoint); its run's data settings are the "
                             "defaults. A LoRA run given as --checkpoint is evaluated on its recorded base")
    parser.set_defaults(run=run)


def load_for_eval(directory: Path):
    """(checkpoint dir, model config, tensors, tokenizer, train config or None) of any checkpoint dir."""
    from shared.checkpoint import load_checkpoint
    from shared.data.model_tokenizer import has_model_tokenizer, load_model_tokenizer
    from shared.run_checkpoint import TRAIN_CONFIG_FILE, resolve_checkpoint
    from shared.train_config import TrainConfig

    try:
        directory = resolve_checkpoint(directory)
    except ValueError:
        pass  # not a training checkpoint: a plain weights checkpoint is fine too
    model_config, tensors = load_checkpoint(directory)
    if not has_model_tokenizer(directory, model_config):
        raise FileNotFoundError(f"checkpoint {directory} has no tokenizer: evaluation needs the training tokenizer")
    train_config = TrainConfig.load(directory / TRAIN_CONFIG_FILE) if (directory / TRAIN_CONFIG_FILE).is_file() else None
    return directory, model_config, tensors, load_model_tokenizer(directory, model_config), train_config


def run(args: argparse.Namespace) -> int:
    from shared.adapter_io import load_adapter
    from shared.finetune import base_of_lora_run, make_lora_backend, resolve_adapter
    from shared.train_config import TrainConfig
    from shared.training_loop import evaluate, load_pairs, make_backend

    if args.max_sentences is not None and args.max_sentences < 1:
        raise ValueError(f"--max-sentences must be a positive integer, got {args.max_sentences}")
    if args.max_decode_len is not None and args.max_decode_len < 1:
        raise ValueError(f"--max-decode-len must be a positive integer, got {args.max_decode_len}")
    if args.beam < 1:
        raise ValueError(f"--beam must be a positive integer, got {args.beam}")
    checkpoint, adapter_arg = args.checkpoint, args.adapter
    if adapter_arg is None and (lora_base := base_of_lora_run(checkpoint)) is not None:
        checkpoint, adapter_arg = lora_base, checkpoint  # a LoRA run: its base, with its adapter
    directory, model_config, tensors, tokenizer, train_config = load_for_eval(checkpoint)
    adapter = None
    if adapter_arg is not None:
        adapter_dir = resolve_adapter(adapter_arg)
        adapter = load_adapter(adapter_dir, model_config)  # (LoRAConfig, tensors); lists every misfit
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
    metrics = evaluate(backend, tokenizer, pairs, config, bleu_sentences=0 if args.no_bleu else len(pairs),
                       num_beams=args.beam)
    extra = {} if adapter is None else {"adapter": str(adapter_dir)}
    print(json.dumps({"checkpoint": str(directory), **extra, "framework": args.framework, "corpus": corpus,
                      "split": split, "sentences": len(pairs), "num_beams": args.beam, **metrics}, sort_keys=True))
    return 0
