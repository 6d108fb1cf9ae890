"""One Flax module class per family (shared/families/): `build_model(config)` picks it."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

from jax_impl.attention import check_kernel
from jax_impl.families.causal_lm import CausalLM
from jax_impl.families.t5 import T5
from jax_impl.families.transformer import Transformer
from shared.config.model_config import ModelConfig

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "transformer": Transformer,
    "t5": T5,
    "causal_lm": CausalLM,
}


def build_model(config: ModelConfig, *, dtype=None, attention: str = "math") -> nn.Module:
    """The (parameter-free) Flax module of config's family; params travel separately.

    dtype: the compute dtype of bf16-mixed training (shared/parity/mixed_precision.py; None computes in the
    params' dtype). attention: "math" or "fused" (jax_impl/attention.py). Every family has both.
    """
    if config.family not in MODEL_CLASSES:
        raise ValueError(f"jax_impl has no model for family {config.family!r}; known: {', '.join(MODEL_CLASSES)}")
    return MODEL_CLASSES[config.family](config, dtype=dtype, attention=check_kernel(attention))


def init_params(config: ModelConfig, rng: jax.Array, batch: int = 1, length: int = 1) -> dict:
    """Fresh parameters for the book's encoder-decoder `config` (a tiny dummy batch traces the shapes)."""
    ids = np.ones((batch, length), dtype=np.int32)
    return build_model(config).init(rng, ids, ids, deterministic=True)["params"]
