"""One Flax module class per family (shared/families/): `build_model(config)` picks it."""

from __future__ import annotations

import flax.linen as nn

from jax_impl.causal_lm import CausalLM
from jax_impl.model import Transformer
from jax_impl.t5 import T5
from shared.config import ModelConfig

MODEL_CLASSES: dict[str, type[nn.Module]] = {"transformer": Transformer, "t5": T5, "causal_lm": CausalLM}


def build_model(config: ModelConfig) -> nn.Module:
    """The (parameter-free) Flax module of config's family; params travel separately."""
    if config.family not in MODEL_CLASSES:
        raise ValueError(f"jax_impl has no model for family {config.family!r}; known: {', '.join(MODEL_CLASSES)}")
    return MODEL_CLASSES[config.family](config)
