"""One model class per family (shared/families/): `build_model(config)` picks it."""

from __future__ import annotations

from torch import nn

from shared.config.model_config import ModelConfig
from torch_impl.families.causal_lm import CausalLM
from torch_impl.families.transformer import Transformer
from torch_impl.families.t5 import T5

MODEL_CLASSES: dict[str, type[nn.Module]] = {"transformer": Transformer, "t5": T5, "causal_lm": CausalLM}


def build_model(config: ModelConfig, attention: str = "math") -> nn.Module:
    """A fresh model of config's family (framework-default init; training uses shared/checkpoints/init.py).

    attention: the kernel of every attention module, "math" or "fused" (torch_impl/attention.py);
    it changes neither the parameters nor the checkpoint.
    """
    if config.family not in MODEL_CLASSES:
        raise ValueError(f"torch_impl has no model for family {config.family!r}; known: {', '.join(MODEL_CLASSES)}")
    return MODEL_CLASSES[config.family](config, attention)
