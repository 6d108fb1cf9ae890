"""The one list of model families: one line per family, and the lookups every caller uses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.families.causal_lm import FAMILY as CAUSAL_LM
from shared.families.family import Family
from shared.families.t5 import FAMILY as T5
from shared.families.transformer import FAMILY as TRANSFORMER

if TYPE_CHECKING:
    from shared.config.model_config import ModelConfig

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        TRANSFORMER,  # the book's encoder-decoder (the default)
        T5,  # T5 v1.0 / v1.1 / FLAN-T5
        CAUSAL_LM,  # GPT-2 and Llama-style decoder-only LMs
    )
}

# {preset name: ModelConfig fields}, every family's presets, each naming its family
PRESET_FIELDS: dict[str, dict[str, Any]] = {
    name: {**fields, "family": family.name} for family in FAMILIES.values() for name, fields in family.presets.items()
}


def family_of(config: "ModelConfig") -> Family:
    return FAMILIES[config.family]


def hf_family(model_type: str) -> Family:
    """The family whose Hugging Face `model_type` this is, or ValueError naming those supported."""
    for family in FAMILIES.values():
        if family.hf is not None and model_type in family.hf.model_types:
            return family
    known = sorted(t for f in FAMILIES.values() if f.hf is not None for t in f.hf.model_types)
    raise ValueError(f"Hugging Face model_type {model_type!r} is not supported; supported: {', '.join(known)}")
