"""What a family declares to move checkpoints to and from Hugging Face transformers.

A mapping is declarative: a config translation each way and a table {our state-dict key: HF key}.
Tensors keep their layout (both sides are PyTorch state dicts); only names change, so a round trip
is byte-equal (GPT-2's Conv1D weights are the one exception: HF stores them (in, out), ours are
Linear (out, in), so `transposed_keys` are transposed each way, which is exact). HF files sometimes hold one tensor under several names (tied embeddings saved by
older versions): `aliases` lists those extra names with the key whose tensor they repeat, and
`fallbacks` names the key to copy when a file leaves one out because it was tied when saved.
The generic reader and writer are in shared/checkpoints/hf_checkpoint.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.config.model_config import ModelConfig


@dataclass(frozen=True)
class HFMapping:
    model_types: tuple[str, ...]  # config.json "model_type" values this family reads
    # HF config.json dict -> ModelConfig fields (ModelConfig.from_hf builds the config: the families
    # sit below shared/config/model_config.py); ConfigError listing every field it cannot express
    fields_from_hf: Callable[[dict[str, Any]], dict[str, Any]]
    # ModelConfig -> HF config.json dict; ConfigError listing every option HF cannot express
    config_to_hf: Callable[["ModelConfig"], dict[str, Any]]
    key_table: Callable[["ModelConfig"], dict[str, str]]  # {our state-dict key: HF key}
    aliases: Callable[["ModelConfig"], dict[str, str]] = lambda config: {}  # {extra HF key: HF key}
    fallbacks: Callable[["ModelConfig"], dict[str, str]] = lambda config: {}  # {HF key: HF key to copy}
    # HF keys whose tensor HF stores transposed relative to ours (GPT-2's Conv1D weights, (in, out))
    transposed_keys: Callable[["ModelConfig"], frozenset[str]] = lambda config: frozenset()
    ignored_keys: tuple[str, ...] = ()  # HF keys the model never uses (dropped on read, as HF does)
    # {HF Linear module leaf: ours}, to rename adapter target_modules (PEFT's "q" -> our "q_proj")
    linear_names: dict[str, str] = field(default_factory=dict)
    # {our module path: HF module path} of every parameter-holding module, for the module-by-module
    # comparison with transformers (`twinformer parity --against hf`); None = not offered
    module_table: Callable[["ModelConfig"], dict[str, str]] | None = None
