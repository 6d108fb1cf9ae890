"""The model families: one place per family for its config rules, weight table and HF mapping.

A family is one concept across the project:
  * shared/families/<family>.py: which ModelConfig options it allows (`problems`), every parameter
    module with its kind and shapes (`module_specs`, read by shared/weight_table.py), and, when the
    family has Hugging Face checkpoints, their key table and config translation (`hf`);
  * torch_impl/<family>.py and jax_impl/<family>.py: its modules, registered in each stack's
    `build_model` (torch_impl/registry.py, jax_impl/registry.py).
ModelConfig.family picks the entry; "transformer" (the book's encoder-decoder) is the default, so
config files written before families existed load unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.config import ModelConfig
    from shared.families.hf_mapping import HFMapping

# (torch module path, module kind (weight_table.LEAF_RULES), {torch leaf: torch shape})
ModuleSpec = tuple[str, str, dict[str, tuple[int, ...]]]


@dataclass(frozen=True)
class Family:
    name: str
    # (config, sizes_ok) -> every reason this family cannot build the config; sizes_ok says the
    # generic checks found the sizes to be positive integers, so arithmetic on them is safe
    problems: Callable[["ModelConfig", bool], list[str]]
    module_specs: Callable[["ModelConfig"], list[ModuleSpec]]
    hf: "HFMapping | None" = None  # Hugging Face config/key translation, if the family has one


def rejected_options(config: "ModelConfig", family: str, allowed: dict[str, tuple]) -> list[str]:
    """One problem per field whose value the family does not allow ({field: allowed values})."""
    return [
        f"the {family} family needs {name} in {allowed_values!r}, got {getattr(config, name)!r}"
        for name, allowed_values in allowed.items()
        if getattr(config, name) not in allowed_values
    ]


# The family modules import Family and rejected_options from here, so they come after them.
from shared.families import causal_lm, t5, transformer  # noqa: E402

FAMILIES: dict[str, Family] = {family.name: family for family in (transformer.FAMILY, t5.FAMILY, causal_lm.FAMILY)}


def family_of(config: "ModelConfig") -> Family:
    return FAMILIES[config.family]


def hf_family(model_type: str) -> Family:
    """The family whose Hugging Face `model_type` this is, or ValueError naming those supported."""
    for family in FAMILIES.values():
        if family.hf is not None and model_type in family.hf.model_types:
            return family
    known = sorted(t for f in FAMILIES.values() if f.hf is not None for t in f.hf.model_types)
    raise ValueError(f"Hugging Face model_type {model_type!r} is not supported; supported: {', '.join(known)}")
