"""The t5 family's weight table: every parameter module, its kind and shapes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.families.family import ModuleSpec
from shared.families.t5.options import feed_forward_leaves, is_tied

if TYPE_CHECKING:
    from shared.config.model_config import ModelConfig


def module_specs(config: "ModelConfig") -> list[ModuleSpec]:
    """Every parameter-holding module as (torch module path, kind, {torch leaf: shape})."""
    D, F, V = config.d_model, config.d_ff, config.tgt_vocab_size
    inner = config.num_heads * config.head_dim  # H * K
    modules: list[ModuleSpec] = [("shared_embed", "embedding", {"weight": (V, D)})]

    def linear(path: str, n_in: int, n_out: int) -> None:
        modules.append((path, "linear_no_bias", {"weight": (n_out, n_in)}))

    def attention(prefix: str, relative_bias: bool) -> None:
        linear(f"{prefix}.q_proj", D, inner)
        linear(f"{prefix}.k_proj", D, inner)
        linear(f"{prefix}.v_proj", D, inner)
        linear(f"{prefix}.out_proj", inner, D)
        if relative_bias:  # (buckets, H), held by the first layer and used by all
            modules.append(
                (f"{prefix}.relative_attention_bias", "embedding",
                 {"weight": (config.relative_attention_num_buckets, config.num_heads)})
            )

    def norm(path: str) -> None:
        modules.append((path, "rms_norm", {"weight": (D,)}))

    def feed_forward(prefix: str) -> None:
        for leaf in feed_forward_leaves(config):
            linear(f"{prefix}.{leaf}", F, D) if leaf == "wo" else linear(f"{prefix}.{leaf}", D, F)

    for i in range(config.num_encoder_layers):
        layer = f"encoder.layers.{i}"
        attention(f"{layer}.self_attn", i == 0)
        norm(f"{layer}.self_attn_norm")
        feed_forward(f"{layer}.ffn")
        norm(f"{layer}.ffn_norm")
    norm("encoder.final_norm")
    for i in range(config.num_decoder_layers):
        layer = f"decoder.layers.{i}"
        attention(f"{layer}.self_attn", i == 0)
        norm(f"{layer}.self_attn_norm")
        attention(f"{layer}.cross_attn", False)
        norm(f"{layer}.cross_attn_norm")
        feed_forward(f"{layer}.ffn")
        norm(f"{layer}.ffn_norm")
    norm("decoder.final_norm")
    if not is_tied(config):
        linear("output_proj", D, V)
    return modules

