"""The declarative name/layout table between the PyTorch state dict and the Flax params pytree.

Both stacks use the same module tree and attribute names, so a parameter's PyTorch key and Flax
path differ only in (a) list indices (`layers.3` in torch, `layers_3` in Flax Linen) and (b) the
leaf name and layout, which depend on the kind of module alone (LEAF_RULES). `param_specs(config)`
lists every parameter the config implies (its family's `module_specs`, shared/families/), with its PyTorch shape: the single source of truth for
conversion and for checking that a checkpoint holds exactly the right tensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.config.model_config import ModelConfig

SAME = "same"
TRANSPOSE = "transpose"  # torch Linear.weight is (out, in); Flax Dense.kernel is (in, out)

# module kind -> {torch leaf: (flax leaf, layout)}
LEAF_RULES: dict[str, dict[str, tuple[str, str]]] = {
    "linear": {"weight": ("kernel", TRANSPOSE), "bias": ("bias", SAME)},
    "linear_no_bias": {"weight": ("kernel", TRANSPOSE)},
    "embedding": {"weight": ("embedding", SAME)},
    "norm": {"weight": ("scale", SAME), "bias": ("bias", SAME)},
    "rms_norm": {"weight": ("scale", SAME)},  # T5's norm: a scale, no bias
    "bias": {"bias": ("bias", SAME)},  # output bias when the projection is tied to an embedding
}


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its state-dict key, its Flax path, its PyTorch shape and the layout change."""

    torch_key: str
    flax_path: tuple[str, ...]
    torch_shape: tuple[int, ...]
    layout: str

    @property
    def flax_shape(self) -> tuple[int, ...]:
        return self.torch_shape[::-1] if self.layout == TRANSPOSE else self.torch_shape


def torch_module_to_flax_path(module: str) -> tuple[str, ...]:
    """`decoder.layers.1.cross_attn` -> ('decoder', 'layers_1', 'cross_attn')."""
    return tuple(re.sub(r"(\w+)\.(\d+)(?=\.|$)", r"\1_\2", module).split("."))


def flax_path_to_torch_module(path: tuple[str, ...]) -> str:
    """('decoder', 'layers_1', 'cross_attn') -> `decoder.layers.1.cross_attn`."""
    return ".".join(re.sub(r"^layers_(\d+)$", r"layers.\1", part) for part in path)


def module_specs(config: ModelConfig) -> list[tuple[str, str, dict[str, tuple[int, ...]]]]:
    """Every parameter-holding module as (torch module path, kind, {torch leaf: shape}), per family."""
    from shared.families import family_of  # local import: family modules are loaded with the config

    return family_of(config).module_specs(config)


def param_specs(config: ModelConfig) -> list[ParamSpec]:
    """Every parameter of the model `config` describes, in state-dict order."""
    specs = []
    for module, kind, shapes in module_specs(config):
        flax_module = torch_module_to_flax_path(module)
        for torch_leaf, shape in shapes.items():
            flax_leaf, layout = LEAF_RULES[kind][torch_leaf]
            specs.append(ParamSpec(f"{module}.{torch_leaf}", (*flax_module, flax_leaf), shape, layout))
    return specs
