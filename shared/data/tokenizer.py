"""Subword (BPE) tokenization via HF `tokenizers`: one joint vocabulary, or one per language.

Every tokenizer has the fixed special ids of `shared.data.special_tokens` (pad 0, bos 1, eos 2,
unk 3). Text is NFKC-normalised and split on spaces with the Metaspace pre-tokenizer, whose
decoder restores the spaces, so decoding an encoding gives back the normalised text.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from shared.data.batching import TRANSLATION_IDS
from shared.data.special_tokens import BOS_ID, EOS_ID, SPECIAL_IDS, SPECIAL_TOKENS, UNK_TOKEN

JOINT_FILE = "tokenizer.json"  # the joint tokenizer, or the target one when per-language
SOURCE_FILE = "source_tokenizer.json"  # present only for per-language tokenizers


class TokenizerError(ValueError):
    """A tokenizer file that does not follow the project's conventions (e.g. special ids)."""


def _new_bpe() -> HFTokenizer:
    """An untrained BPE tokenizer with the project's normaliser, pre-tokenizer and decoder."""
    tok = HFTokenizer(models.BPE(unk_token=UNK_TOKEN))
    tok.normalizer = normalizers.NFKC()
    # Metaspace marks word starts with "▁" and its decoder turns them back into spaces, so
    # punctuation and spacing survive a round trip (unlike Whitespace + a joining decoder).
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tok


def _train_one(texts: Sequence[str], vocab_size: int, min_frequency: int) -> HFTokenizer:
    """Train one BPE tokenizer; special tokens are listed first so they get ids 0..3."""
    tok = _new_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    _check_specials(tok, "trained tokenizer")
    return tok


def _check_specials(tok: HFTokenizer, where: str) -> None:
    """Raise TokenizerError unless every special token has its fixed id."""
    wrong = {t: tok.token_to_id(t) for t, i in SPECIAL_IDS.items() if tok.token_to_id(t) != i}
    if wrong:
        raise TokenizerError(
            f"{where}: special tokens must have ids {SPECIAL_IDS}, found {wrong}; "
            f"retrain it with shared.data.tokenizer.train_tokenizer"
        )


def _to_int_list(ids: Iterable[int]) -> list[int]:
    # Accepts numpy rows / torch-free arrays too: the HF decoder needs plain Python ints.
    return [int(i) for i in ids]


class Tokenizer:
    """Source and target tokenization of a language pair: one joint or two per-language BPEs."""

    sequence_ids = TRANSLATION_IDS  # the fixed start/end/pad ids (shared/data/special_tokens.py)

    def __init__(self, target: HFTokenizer, source: HFTokenizer | None = None) -> None:
        """Wrap trained HF tokenizers; `source=None` shares the target tokenizer (joint)."""
        _check_specials(target, "target tokenizer")
        if source is not None:
            _check_specials(source, "source tokenizer")
        self._tgt = target
        self._src = source if source is not None else target
        # Text that happens to read "<eos>" is text: only this wrapper places special ids. (The flag
        # is not saved in tokenizer.json, so it is set here, on every construction and load.)
        self._tgt.encode_special_tokens = True
        self._src.encode_special_tokens = True

    # ------------------------------------------------------------------------------------------
    @property
    def joint(self) -> bool:
        """True when source and target share one vocabulary."""
        return self._src is self._tgt

    @property
    def src_vocab_size(self) -> int:
        """V_src, special tokens included (may be below the requested size on small corpora)."""
        return self._src.get_vocab_size()

    @property
    def tgt_vocab_size(self) -> int:
        """V, including the special tokens."""
        return self._tgt.get_vocab_size()

    # ------------------------------------------------------------------------------------------
    def encode_source(self, text: str) -> list[int]:
        """Source ids: subwords then EOS (no BOS: the encoder needs no start marker)."""
        return self._src.encode(text, add_special_tokens=False).ids + [EOS_ID]

    def encode_target(self, text: str) -> list[int]:
        """Target ids: BOS, subwords, EOS; the batcher shifts them into decoder input and output."""
        return [BOS_ID] + self._tgt.encode(text, add_special_tokens=False).ids + [EOS_ID]

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """Encode many (source, target) pairs at once (batched in Rust; same ids as one by one)."""
        src = self._src.encode_batch([s for s, _ in pairs], add_special_tokens=False)
        tgt = self._tgt.encode_batch([t for _, t in pairs], add_special_tokens=False)
        return [
            (s.ids + [EOS_ID], [BOS_ID] + t.ids + [EOS_ID]) for s, t in zip(src, tgt, strict=True)
        ]

    def decode_target(self, ids: Iterable[int]) -> str:
        """Text of target ids, up to the first EOS, with special tokens (BOS, PAD, UNK) dropped."""
        return self._decode(self._tgt, ids)

    def decode_source(self, ids: Iterable[int]) -> str:
        """Text of source ids, up to the first EOS, with special tokens dropped."""
        return self._decode(self._src, ids)

    @staticmethod
    def _decode(tok: HFTokenizer, ids: Iterable[int]) -> str:
        ids = _to_int_list(ids)
        if EOS_ID in ids:
            ids = ids[: ids.index(EOS_ID)]  # whatever a decoder emits after EOS is not output
        return tok.decode(ids, skip_special_tokens=True)

    # ------------------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write `tokenizer.json` (joint or target); per-language adds `source_tokenizer.json`."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / JOINT_FILE).write_text(self._tgt.to_str(pretty=True), encoding="utf-8")
        src_path = d / SOURCE_FILE
        if self.joint:
            # A stale source file from an earlier per-language save would make load() per-language.
            src_path.unlink(missing_ok=True)
        else:
            src_path.write_text(self._src.to_str(pretty=True), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Tokenizer:
        """Read a tokenizer written by `save`; per-language if `source_tokenizer.json` exists."""
        d = Path(directory)
        if not (d / JOINT_FILE).is_file():
            raise FileNotFoundError(
                f"no {JOINT_FILE} in {d}; train one with shared.data.tokenizer.train_tokenizer "
                f"and save it there"
            )
        target = HFTokenizer.from_file(str(d / JOINT_FILE))
        source = (
            HFTokenizer.from_file(str(d / SOURCE_FILE)) if (d / SOURCE_FILE).is_file() else None
        )
        return cls(target, source)


def train_tokenizer(
    pairs: Sequence[tuple[str, str]],
    vocab_size: int,
    joint: bool = True,
    min_frequency: int = 2,
) -> Tokenizer:
    """Train BPE on (source, target) pairs: one vocabulary over both sides, or one per side.

    Deterministic: the same pairs and settings give an identical `tokenizer.json`.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}"
        )
    if not pairs:
        raise ValueError("cannot train a tokenizer on an empty corpus")
    sources = [s for s, _ in pairs]
    targets = [t for _, t in pairs]
    if joint:
        return Tokenizer(_train_one(sources + targets, vocab_size, min_frequency))
    return Tokenizer(
        target=_train_one(targets, vocab_size, min_frequency),
        source=_train_one(sources, vocab_size, min_frequency),
    )
