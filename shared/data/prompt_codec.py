"""Text <-> ids for a decoder-only model's prompts and completions (`twinformer generate`).

A causal-LM checkpoint carries one `tokenizer.json`, of one of two kinds:
  * the project's BPE (shared/data/tokenizer.py: fixed special ids pad 0, bos 1, eos 2, unk 3),
    as `train` writes it: a prompt is BOS + its subwords, as the training sequences begin;
  * a Hugging Face tokenizer copied by `convert --from hf`: a prompt is what transformers'
    tokenizer gives for it (its post-processor adds the BOS where the model expects one:
    Llama's does, GPT-2's adds nothing).
Completions are decoded without special tokens. Streaming decodes the whole completion so far
and prints what was added: a multi-byte character split over two tokens appears once complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from shared.data.special_tokens import BOS_ID, SPECIAL_IDS

TOKENIZER_FILE = "tokenizer.json"
REPLACEMENT_CHARACTER = "\ufffd"  # what a byte-level decoder shows for an incomplete character


@dataclass
class PromptCodec:
    tokenizer: HFTokenizer
    project_bos: bool  # the project's BPE: prompts start with BOS (HF tokenizers add their own)

    @classmethod
    def load(cls, directory: str | Path) -> "PromptCodec":
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"checkpoint {directory} has no {TOKENIZER_FILE}: generation needs the model's tokenizer "
                f"(train writes it; convert --from hf copies it from the HF directory)"
            )
        tokenizer = HFTokenizer.from_file(str(path))
        project = all(tokenizer.token_to_id(token) == i for token, i in SPECIAL_IDS.items())
        return cls(tokenizer, project)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        if self.project_bos:
            return [BOS_ID] + self.tokenizer.encode(text, add_special_tokens=False).ids
        return self.tokenizer.encode(text, add_special_tokens=True).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


class TextStream:
    """Turns a growing list of ids into the text added since the last call (for streaming)."""

    def __init__(self, codec: PromptCodec):
        self.codec, self.ids, self.shown = codec, [], ""

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.codec.decode(self.ids)
        if text.endswith(REPLACEMENT_CHARACTER) or not text.startswith(self.shown):
            return ""  # an incomplete character (or a re-spelled prefix): wait for more tokens
        added, self.shown = text[len(self.shown):], text
        return added

    def flush(self) -> str:
        text = self.codec.decode(self.ids)
        added = text[len(self.shown):] if text.startswith(self.shown) else ""
        self.shown = text
        return added


__all__ = ["PromptCodec", "TextStream"]
