"""T5's tokenizer as transformers ships it: `tokenizer.json` (HF `tokenizers`) or `spiece.model`
(SentencePiece), whichever the model directory holds (tokenizer.json first).

Encoding appends the end id (T5's `</s>`, 1) as transformers' T5 tokenizers do; decoding stops at
it and drops the special ids. The ids are the model's own (pad 0, eos 1, decoder start = pad), not
the project's translation tokenizer's (shared/data/special_tokens.py).

For training, the same object speaks the translation tokenizer's interface (encode_source,
encode_target, encode_pairs, decode_target, save, sequence_ids), so the shared training loop and
batcher run T5 unchanged: a target is decoder start + pieces + end, shifted by the batcher.
`train_t5_tokenizer` makes a small T5-style Unigram tokenizer from a corpus (for a T5 trained here).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from shared.data.batching import SequenceIds

JSON_FILE = "tokenizer.json"
SENTENCEPIECE_FILE = "spiece.model"
T5_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in google/t5-* and google/flan-t5-*


class T5Tokenizer:
    def __init__(self, encode_fn, decode_fn, vocab_size: int, ids: SequenceIds, save_fn):
        self._encode, self._decode, self._save = encode_fn, decode_fn, save_fn
        self.vocab_size = vocab_size
        self.sequence_ids = ids
        self.eos_id, self.special_ids = ids.end, {ids.pad, ids.end, ids.start}

    @classmethod
    def from_hf(cls, tok, ids: SequenceIds) -> "T5Tokenizer":
        """Wrap a `tokenizers.Tokenizer` (read from tokenizer.json or trained here)."""
        tok.no_truncation()
        tok.no_padding()
        # without the template's </s>: `encode` adds it, the same way for both file kinds
        return cls(lambda text: tok.encode(text, add_special_tokens=False).ids,
                   lambda ids_: tok.decode(list(ids_), skip_special_tokens=True), tok.get_vocab_size(), ids,
                   lambda directory: tok.save(str(directory / JSON_FILE)))  # fmt: skip

    @classmethod
    def load(cls, directory: str | Path, eos_id: int = 1, pad_id: int = 0, start_id: int | None = None) -> "T5Tokenizer":
        """The tokenizer of a T5 directory; start_id (the decoder start) defaults to pad_id, as T5's."""
        directory = Path(directory)
        ids = SequenceIds(start=pad_id if start_id is None else start_id, end=eos_id, pad=pad_id)
        if (directory / JSON_FILE).is_file():
            from tokenizers import Tokenizer

            return cls.from_hf(Tokenizer.from_file(str(directory / JSON_FILE)), ids)
        if (directory / SENTENCEPIECE_FILE).is_file():
            import sentencepiece

            source = directory / SENTENCEPIECE_FILE
            sp = sentencepiece.SentencePieceProcessor(model_file=str(source))
            return cls(lambda text: sp.encode(text), lambda ids_: sp.decode([i for i in ids_ if i < sp.get_piece_size()]),
                       sp.get_piece_size(), ids, lambda d: _copy(source, d / SENTENCEPIECE_FILE))  # fmt: skip
        raise FileNotFoundError(f"{directory} holds no T5 tokenizer ({JSON_FILE} or {SENTENCEPIECE_FILE})")

    @staticmethod
    def present(directory: str | Path) -> bool:
        return any((Path(directory) / name).is_file() for name in (JSON_FILE, SENTENCEPIECE_FILE))

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        """text -> ids ending with the end id (cut to max_len, the end id kept)."""
        ids = list(self._encode(text))
        if max_len is not None:
            ids = ids[: max_len - 1]
        return ids + [self.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        """ids -> text, up to the first end id, special ids dropped."""
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self._decode([i for i in ids if i not in self.special_ids])

    # -- the training loop's tokenizer interface (shared/training/loop.py) -----------------------
    @property
    def src_vocab_size(self) -> int:
        return self.vocab_size

    @property
    def tgt_vocab_size(self) -> int:
        return self.vocab_size

    def encode_source(self, text: str) -> list[int]:
        return self.encode(text)

    def encode_target(self, text: str) -> list[int]:
        """Decoder start, pieces, end: the batcher shifts it into decoder input and labels."""
        return [self.sequence_ids.start] + self.encode(text)

    def encode_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        return [(self.encode_source(s), self.encode_target(t)) for s, t in pairs]

    def decode_target(self, ids: Sequence[int]) -> str:
        return self.decode(ids)

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer into `directory` (tokenizer.json, or the spiece.model read, copied)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save(directory)


def _copy(source: Path, destination: Path) -> None:
    if source.resolve() != destination.resolve():
        shutil.copyfile(source, destination)


def train_t5_tokenizer(texts: Sequence[str], vocab_size: int) -> T5Tokenizer:
    """A T5-style Unigram tokenizer (Metaspace pieces, <pad> 0, </s> 1, <unk> 2) trained on `texts`,
    for a T5 trained from scratch here (decoder start = pad, as T5's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if not texts:
        raise ValueError("cannot train a tokenizer on an empty corpus")
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(T5_SPECIAL_TOKENS), unk_token="<unk>",
                                      show_progress=False)  # fmt: skip
    tok.train_from_iterator(list(texts), trainer)
    return T5Tokenizer.from_hf(tok, SequenceIds(start=0, end=1, pad=0))
