"""The transformer family's weight table: every parameter module, its kind and shapes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.families.family import ModuleSpec

if TYPE_CHECKING:
    from shared.config.model_config import ModelConfig


def module_specs(config: "ModelConfig") -> list[ModuleSpec]:
    """Every parameter-holding module as (torch module path, kind, {torch leaf: shape})."""
    D, F = config.d_model, config.d_ff
    linear = "linear" if config.bias else "linear_no_bias"

    def dense(n_in: int, n_out: int) -> tuple[str, dict[str, tuple[int, ...]]]:
        shapes = {"weight": (n_out, n_in)}
        if config.bias:
            shapes["bias"] = (n_out,)
        return linear, shapes

    norm = ("norm", {"weight": (D,), "bias": (D,)})
    modules: list[ModuleSpec] = []

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

