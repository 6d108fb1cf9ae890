"""The model families: one package per family for its config rules, weight table, traits and HF mapping.

A family is one concept across the project:
  * shared/families/<family>/: which ModelConfig options it allows (`options.py`), every parameter
    module with its kind and shapes (`weights.py`, read by shared/checkpoints/weight_table.py), its presets, and,
    when the family has Hugging Face checkpoints, their key table and config translation (`hf.py`);
    its `FAMILY` (shared/families/family.py) declares the traits callers ask for;
  * shared/families/registry.py lists the families once;
  * torch_impl/ and jax_impl/ hold its modules, registered in each stack's `build_model`.
ModelConfig.family picks the entry; "transformer" (the book's encoder-decoder) is the default, so
config files written before families existed load unchanged.
"""

from shared.families.family import BPE_TOKENIZER, T5_TOKENIZER, TOKENIZERS, Family, ModuleSpec, rejected_options
from shared.families.registry import FAMILIES, PRESET_FIELDS, family_of, hf_family

__all__ = [
    "BPE_TOKENIZER", "FAMILIES", "PRESET_FIELDS", "T5_TOKENIZER", "TOKENIZERS", "Family", "ModuleSpec", "family_of",
    "hf_family", "rejected_options",
]
