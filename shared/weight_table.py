"""The declarative name/layout table between the PyTorch state dict and the Flax params pytree.

Both stacks use the same module tree and attribute names, so a parameter's PyTorch key and Flax
path differ only in (a) list indices (`layers.3` in torch, `layers_3` in Flax Linen) and (b) the
leaf name and layout, which depend on the kind of module alone (LEAF_RULES). `param_specs(config)`
lists every parameter the config implies, with its PyTorch shape: the single source of truth for
conversion and for checking that a checkpoint holds exactly the right tensors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.config import ModelConfig

SAME = "same"
TRANSPOSE = "transpose"  # torch Linear.weight is (out, in); Flax Dense.kernel is (in, out)

# module kind -> {torch leaf: (flax leaf, layout)}
LEAF_RULES: dict[str, dict[str, tuple[str, str]]] = {
    "linear": {"weight": ("kernel", TRANSPOSE), "bias": ("bias", SAME)},
    "linear_no_bias": {"weight": ("kernel", TRANSPOSE)},
    "embedding": {"weight": ("embedding", SAME)},
    "norm": {"weight": ("scale", SAME), "bias": ("bias", SAME)},
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
    """Every parameter-holding module as (torch module path, kind, {torch leaf: shape})."""
    D, F = config.d_model, config.d_ff
    linear = "linear" if config.bias else "linear_no_bias"

    def dense(n_in: int, n_out: int) -> tuple[str, dict[str, tuple[int, ...]]]:
        shapes = {"weight": (n_out, n_in)}
        if config.bias:
            shapes["bias"] = (n_out,)
        return linear, shapes

    norm = ("norm", {"weight": (D,), "bias": (D,)})
    modules: list[tuple[str, str, dict[str, tuple[int, ...]]]] = []

    def add(path: str, kind_and_shapes: tuple[str, dict[str, tuple[int, ...]]]) -> None:
        modules.append((path, *kind_and_shapes))

    if config.tie_embeddings == "all":
        add("shared_embed", ("embedding", {"weight": (config.tgt_vocab_size, D)}))
    else:
        add("src_embed", ("embedding", {"weight": (config.src_vocab_size, D)}))
        add("tgt_embed", ("embedding", {"weight": (config.tgt_vocab_size, D)}))
    if config.positional == "learned":
        add("pos_embed", ("embedding", {"weight": (config.max_len, D)}))

    def attention(prefix: str) -> None:
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            add(f"{prefix}.{proj}", dense(D, D))

    def feed_forward(prefix: str) -> None:
        add(f"{prefix}.fc1", dense(D, F))
        add(f"{prefix}.fc2", dense(F, D))

    for i in range(config.num_encoder_layers):
        layer = f"encoder.layers.{i}"
        attention(f"{layer}.self_attn")
        add(f"{layer}.self_attn_norm", norm)
        feed_forward(f"{layer}.ffn")
        add(f"{layer}.ffn_norm", norm)
    if config.final_norms:
        add("encoder.final_norm", norm)
    for i in range(config.num_decoder_layers):
        layer = f"decoder.layers.{i}"
        attention(f"{layer}.self_attn")
        add(f"{layer}.self_attn_norm", norm)
        attention(f"{layer}.cross_attn")
        add(f"{layer}.cross_attn_norm", norm)
        feed_forward(f"{layer}.ffn")
        add(f"{layer}.ffn_norm", norm)
    if config.final_norms:
        add("decoder.final_norm", norm)

    if config.tie_embeddings == "none":
        add("output_proj", dense(D, config.tgt_vocab_size))
    elif config.bias:
        add("output_proj", ("bias", {"bias": (config.tgt_vocab_size,)}))
    return modules


def param_specs(config: ModelConfig) -> list[ParamSpec]:
    """Every parameter of the model `config` describes, in state-dict order."""
    specs = []
    for module, kind, shapes in module_specs(config):
        flax_module = torch_module_to_flax_path(module)
        for torch_leaf, shape in shapes.items():
            flax_leaf, layout = LEAF_RULES[kind][torch_leaf]
            specs.append(ParamSpec(f"{module}.{torch_leaf}", (*flax_module, flax_leaf), shape, layout))
    return specs
