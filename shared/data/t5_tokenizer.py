"""T5's tokenizer as transformers ships it: `tokenizer.json` (HF `tokenizers`) or `spiece.model`
(SentencePiece), whichever the model directory holds (tokenizer.json first).

Encoding appends the end id (T5's `</s>`, 1) as transformers' T5 tokenizers do; decoding stops at
it and drops the special ids. The ids are the model's own (pad 0, eos 1), not the project's
translation tokenizer's (shared/data/special_tokens.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

JSON_FILE = "tokenizer.json"
SENTENCEPIECE_FILE = "spiece.model"


class T5Tokenizer:
    def __init__(self, encode_fn, decode_fn, eos_id: int, special_ids: set[int]):
        self._encode, self._decode = encode_fn, decode_fn
        self.eos_id, self.special_ids = eos_id, special_ids

    @classmethod
    def load(cls, directory: str | Path, eos_id: int = 1, pad_id: int = 0) -> "T5Tokenizer":
        directory = Path(directory)
        if (directory / JSON_FILE).is_file():
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(directory / JSON_FILE))
            tok.no_truncation()
            tok.no_padding()
            # without the template's </s>: added below, the same way for both file kinds
            return cls(lambda text: tok.encode(text, add_special_tokens=False).ids,
                       lambda ids: tok.decode(list(ids), skip_special_tokens=True), eos_id, {pad_id, eos_id})
        if (directory / SENTENCEPIECE_FILE).is_file():
            import sentencepiece

            sp = sentencepiece.SentencePieceProcessor(model_file=str(directory / SENTENCEPIECE_FILE))
            return cls(lambda text: sp.encode(text), lambda ids: sp.decode([i for i in ids if i < sp.get_piece_size()]),
                       eos_id, {pad_id, eos_id})
        raise FileNotFoundError(f"{directory} holds no T5 tokenizer ({JSON_FILE} or {SENTENCEPIECE_FILE})")

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
