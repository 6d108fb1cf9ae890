"""The "transformer" family: the book's and the original paper's encoder-decoder (the default).

Options: every ModelConfig field except the T5-only ones (relative positions, rms norm, gated FFN,
a head size other than d_model / num_heads). Weight table: see module_specs below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.families import Family, ModuleSpec, rejected_options

if TYPE_CHECKING:
    from shared.config import ModelConfig

# The values this family allows where ModelConfig knows more (the other values belong to t5).
OPTIONS: dict[str, tuple] = {
    "norm_kind": ("layernorm", "book"),
    "positional": ("sinusoid", "learned"),
    "tie_embeddings": ("none", "tgt_out", "all"),
    "gated_ffn": (False,),
    # the data pipeline (shared/data/special_tokens.py) hard-wires these ids
    "bos_id": (1,),
    "eos_id": (2,),
}


def problems(config: "ModelConfig", sizes_ok: bool) -> list[str]:
    found = rejected_options(config, "transformer", OPTIONS)
    if sizes_ok and config.d_model % config.num_heads:
        found.insert(0, f"d_model ({config.d_model}) must be divisible by num_heads ({config.num_heads})")
    elif sizes_ok and config.positional == "sinusoid" and config.d_model % 2:
        found.insert(0, f"the interleaved sinusoid needs an even d_model, got {config.d_model}")
    if config.head_size is not None and sizes_ok and config.head_size != config.d_model // config.num_heads:
        found.append(f"the transformer family needs head_size null or d_model // num_heads, got {config.head_size!r}")
    return found


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


FAMILY = Family(name="transformer", problems=problems, module_specs=module_specs)
