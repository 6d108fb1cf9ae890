"""What a family declares: its option rules, weight table, traits, presets and HF mapping.

A family is one unit (shared/families/<name>/) and callers outside the families never branch on its
name: they ask `family_of(config)` (shared/families/registry.py) for the trait they need. Nothing
here imports ModelConfig at run time: the families sit below the config, which checks every config
against its family's rules when it is built (shared/config/model_config.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.config.model_config import ModelConfig
    from shared.families.hf_mapping import HFMapping

# (torch module path, module kind (weight_table.LEAF_RULES), {torch leaf: torch shape})
ModuleSpec = tuple[str, str, dict[str, tuple[int, ...]]]

# Tokenizer rules (shared/data/model_tokenizer.py maps each to its class):
BPE_TOKENIZER = "bpe"  # the project's BPE (shared/data/tokenizer.py), fixed special ids
T5_TOKENIZER = "t5"  # a T5-style Unigram / SentencePiece (shared/data/t5_tokenizer.py), ids from the config
TOKENIZERS = (BPE_TOKENIZER, T5_TOKENIZER)


@dataclass(frozen=True)
class Family:
    name: str
    # (config, sizes_ok) -> every reason this family cannot build the config; sizes_ok says the
    # generic checks found the sizes to be positive integers, so arithmetic on them is safe
    problems: Callable[["ModelConfig", bool], list[str]]
    module_specs: Callable[["ModelConfig"], list[ModuleSpec]]
    # Decoder-only: the model reads the target side only (BOS + text, its padding mask), so its data
    # are texts, not pairs, and the loss inputs are (tgt_in, tgt_in != pad) instead of (src, tgt_in).
    decoder_only: bool
    tokenizer: str  # one of TOKENIZERS: the tokenizer a run trains and a checkpoint carries
    # ModelConfig fields only this family sets, with the value every other family must keep
    own_options: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # {preset name: ModelConfig fields}
    hf: "HFMapping | None" = None  # Hugging Face config/key translation, if the family has one

    def __post_init__(self) -> None:
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"family {self.name!r}: unknown tokenizer rule {self.tokenizer!r}")


def rejected_options(config: "ModelConfig", family: str, allowed: dict[str, tuple]) -> list[str]:
    """One problem per field whose value the family does not allow ({field: allowed values})."""
    return [
        f"the {family} family needs {name} in {allowed_values!r}, got {getattr(config, name)!r}"
        for name, allowed_values in allowed.items()
        if getattr(config, name) not in allowed_values
    ]
