"""The tokenizer a checkpoint carries, chosen by its model's family.

Each family names its tokenizer rule (`Family.tokenizer`, shared/families/family.py); this module
maps the rule to its class: the project's BPE tokenizer (shared/data/tokenizer.py, fixed special
ids), or the T5-style one (shared/data/t5_tokenizer.py) with the ids its config names. Training,
fine-tuning and evaluation read a checkpoint's tokenizer only through here.
"""

from __future__ import annotations

from pathlib import Path

from shared.config.model_config import ModelConfig
from shared.data.t5_tokenizer import T5Tokenizer
from shared.data.tokenizer import JOINT_FILE, Tokenizer
from shared.families import T5_TOKENIZER, family_of


def uses_t5_tokenizer(model_config: ModelConfig) -> bool:
    """Whether the model's family reads T5-style tokenizer files (else the project's BPE)."""
    return family_of(model_config).tokenizer == T5_TOKENIZER


def has_model_tokenizer(directory: str | Path, model_config: ModelConfig) -> bool:
    if uses_t5_tokenizer(model_config):
        return T5Tokenizer.present(directory)
    return (Path(directory) / JOINT_FILE).is_file()


def load_model_tokenizer(directory: str | Path, model_config: ModelConfig) -> Tokenizer | T5Tokenizer:
    """The tokenizer saved in `directory` for a model of `model_config`'s family."""
    if uses_t5_tokenizer(model_config):
        return T5Tokenizer.load(directory, eos_id=model_config.eos_id, pad_id=model_config.pad_id,
                                start_id=model_config.bos_id)  # fmt: skip
    return Tokenizer.load(directory)
