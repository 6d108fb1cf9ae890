"""One Flax module class per family (shared/families/): `build_model(config)` picks it."""

from __future__ import annotations

import flax.linen as nn

from jax_impl.causal_lm import CausalLM
from jax_impl.model import Transformer
from jax_impl.t5 import T5
from shared.config import ModelConfig

MODEL_CLASSES: dict[str, type[nn.Module]] = {"transformer": Transformer, "t5": T5, "causal_lm": CausalLM}


def build_model(config: ModelConfig, *, dtype=None, attention: str = "math") -> nn.Module:
    """The (parameter-free) Flax module of config's family; params travel separately.

    dtype: the compute dtype of bf16-mixed training (shared/mixed_precision.py; None computes in the
    params' dtype). attention: "math" or "fused" (jax_impl/layers.py). Only families whose modules
    have these options accept values other than the defaults.
    """
    if config.family not in MODEL_CLASSES:
        raise ValueError(f"jax_impl has no model for family {config.family!r}; known: {', '.join(MODEL_CLASSES)}")
    module_class = MODEL_CLASSES[config.family]
    options = {"dtype": dtype} if dtype is not None else {}
    if attention != "math":
        options["attention"] = attention
    missing = [name for name in options if name not in module_class.__dataclass_fields__]
    if missing:
        raise ValueError(f"family {config.family!r} has no {' or '.join(missing)} option yet")
    return module_class(config, **options)
