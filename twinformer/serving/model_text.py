"""Text <-> token ids for the served checkpoint, read as the other commands read it.

  * decoder-only (GPT-2, Llama-style): `shared/data/prompt_codec.py`, as `twinformer generate`;
  * T5: its own tokenizer (`shared/data/t5_tokenizer.py`), the source ending with </s>, as `summarize`;
  * the book's Transformer: the project's BPE (`shared/data/model_tokenizer.py`), source and target
    sides as `translate` encodes and decodes them.
Streaming goes through prompt_codec's TextStream (a character split over two tokens appears once
complete), which needs only `decode`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from shared.config.model_config import ModelConfig
from shared.families import family_of


@dataclass(frozen=True)
class ModelText:
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    encode_rendered: Callable[[str], list[int]]  # a rendered chat template: its special tokens are in the text

    @classmethod
    def load(cls, checkpoint: Path, config: ModelConfig) -> "ModelText":
        if family_of(config).decoder_only:
            from shared.data.prompt_codec import PromptCodec

            codec = PromptCodec.load(checkpoint)
            plain = lambda text: codec.tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
            return cls(codec.encode, codec.decode, plain)
        from shared.data.model_tokenizer import has_model_tokenizer, load_model_tokenizer, uses_t5_tokenizer

        if not has_model_tokenizer(checkpoint, config):
            raise FileNotFoundError(f"checkpoint {checkpoint} has no tokenizer: serving needs the model's tokenizer "
                                    "(train writes it; convert --from hf copies it)")  # fmt: skip
        tokenizer = load_model_tokenizer(checkpoint, config)
        if uses_t5_tokenizer(config):  # the family trait, not its name
            return cls(tokenizer.encode, tokenizer.decode, tokenizer.encode)
        return cls(tokenizer.encode_source, tokenizer.decode_target, tokenizer.encode_source)

    def stream(self):
        """A TextStream: push(token) -> the text it completes."""
        from shared.data.prompt_codec import TextStream

        return TextStream(self)


__all__ = ["ModelText"]
