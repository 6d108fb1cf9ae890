"""Save and load jax_impl params as checkpoint directories (shared/checkpoints/checkpoint.py format)."""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax.numpy as jnp

from jax_impl.convert import params_from_state_dict, state_dict_from_params
from jax_impl.registry import build_model
from shared.checkpoints.checkpoint import load_checkpoint_lazy, save_checkpoint
from shared.config.model_config import ModelConfig


def save(config: ModelConfig, params: dict, directory: str | Path) -> Path:
    """Write `config.json` + `model.safetensors` in the canonical (PyTorch) layout."""
    return save_checkpoint(directory, config, state_dict_from_params(config, params))


def load(directory: str | Path, dtype: jnp.dtype | None = None, sharding=None) -> tuple[nn.Module, dict]:
    """Load a checkpoint directory: (its family's module (Transformer, T5), params) in the file's dtype unless given.

    Lazy: tensors are read and placed one at a time (`sharding`: a jax Sharding for every param, or
    a function of the Flax path; default: jax's default device).
    """
    config, tensors = load_checkpoint_lazy(directory)
    return build_model(config), params_from_state_dict(config, tensors, dtype, sharding)
