"""Data side of twinformer: corpora, tokenizer, batching; numpy only, no torch or jax.

`load_corpus(name, split)` is the one entry point to a corpus: "toy" (generated in code),
"multi30k" (gzip files, downloaded once) or "tweetsum" (the book's chapter-5 dialogue summaries:
"Summarize: " + dialogue -> summary, shared/data/tweetsum.py). All give (source, target) strings.
"""

from __future__ import annotations

import os

from shared.data.batching import Batch, BatchSampler, make_batch
from shared.data.multi30k import load_multi30k
from shared.data.special_tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from shared.data.tokenizer import Tokenizer, train_tokenizer
from shared.data.toy_task import load_toy
from shared.data.tweetsum import load_tweetsum_pairs

CORPORA = ("toy", "multi30k", "tweetsum", "text")  # text: plain lines, causal-LM training only (shared/data/text_lines.py)
# Each corpus's direction when none is given: the book's en→de for Multi30k.
DEFAULT_LANGS = {"toy": ("xa", "xb"), "multi30k": ("en", "de"), "tweetsum": (None, None)}


def load_corpus(
    name: str,
    split: str,
    src_lang: str | None = None,
    tgt_lang: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[tuple[str, str]]:
    """(source, target) pairs of one split of a named corpus; languages default per corpus.

    Splits: toy has train/val/test; multi30k has train/val/test_2016_flickr/... (see
    shared.data.multi30k.SPLITS); tweetsum has train/valid (alias val)/test. data_dir applies to
    multi30k and tweetsum (the toy task has no files).
    """
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")
    default_src, default_tgt = DEFAULT_LANGS[name]
    src_lang = src_lang or default_src
    tgt_lang = tgt_lang or default_tgt
    if name == "text":
        raise ValueError("the text corpus has no translation pairs: it trains causal_lm models only")
    if name == "toy":
        return load_toy(split, src_lang, tgt_lang)
    if name == "tweetsum":  # one language; data_dir defaults to ../shared/data/book-ch5
        return load_tweetsum_pairs(split, data_dir)
    return load_multi30k(split, src_lang, tgt_lang, data_dir)


__all__ = [
    "BOS_ID",
    "CORPORA",
    "EOS_ID",
    "PAD_ID",
    "UNK_ID",
    "Batch",
    "BatchSampler",
    "Tokenizer",
    "load_corpus",
    "load_multi30k",
    "load_toy",
    "make_batch",
    "train_tokenizer",
]
