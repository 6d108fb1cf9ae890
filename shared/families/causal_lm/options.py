"""The causal_lm family's options: the values it allows, the checks on its sizes, and the helpers
both stacks read (key/value heads, tied head, MLP leaves, attention shapes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.families.family import rejected_options

if TYPE_CHECKING:
    from shared.config.model_config import ModelConfig

_FIXED = {
    "norm_kind": ("layernorm", "rms"),
    "norm_placement": ("pre",),
    "positional": ("learned", "rotary"),
    "tie_embeddings": ("none", "tgt_out"),
    "final_norms": (True,),
    "num_encoder_layers": (0,),
}


def kv_heads(config: "ModelConfig") -> int:
    """G: key/value heads (num_heads unless grouped-query attention)."""
    return config.num_heads if config.num_kv_heads is None else config.num_kv_heads


def is_tied(config: "ModelConfig") -> bool:
    return config.tie_embeddings == "tgt_out"


def _variant_problems(config: "ModelConfig") -> list[str]:
    """The Mistral / Qwen2 / Gemma options: their types and the combinations they need."""
    found = []
    window = config.sliding_window
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window <= 0):
        found.append(f"sliding_window must be a positive integer or null, got {window!r}")
    for name in ("qkv_bias", "norm_one_plus_weight"):
        if not isinstance(getattr(config, name), bool):
            found.append(f"{name} must be a bool, got {getattr(config, name)!r}")
    if config.qkv_bias is True and config.bias is True:
        found.append("qkv_bias adds biases to q/k/v only; with bias true every projection has one already: "
                     "set qkv_bias false")
    if config.qkv_bias is True and config.fused_qkv is True:
        found.append("qkv_bias needs separate q_proj/k_proj/v_proj: set fused_qkv false")
    if config.norm_one_plus_weight is True and config.norm_kind != "rms":
        found.append(f"norm_one_plus_weight is Gemma's RMS norm; norm_kind is {config.norm_kind!r}: set it to 'rms'")
    return found


def problems(config: "ModelConfig", sizes_ok: bool) -> list[str]:
    found = rejected_options(config, "causal_lm", _FIXED) + _variant_problems(config)
    if config.src_vocab_size != config.tgt_vocab_size:
        found.append(
            f"the causal_lm family has one vocabulary: src_vocab_size ({config.src_vocab_size}) must equal "
            f"tgt_vocab_size ({config.tgt_vocab_size})"
        )
    if not sizes_ok:
        return found
    if config.head_size is None and config.d_model % config.num_heads:
        found.append(
            f"d_model ({config.d_model}) must be divisible by num_heads ({config.num_heads}) unless head_size is set"
        )
    if isinstance(config.num_kv_heads, int) and config.num_kv_heads > 0 and config.num_heads % config.num_kv_heads:
        found.append(f"num_heads ({config.num_heads}) must be a multiple of num_kv_heads ({config.num_kv_heads})")
    if config.positional == "rotary" and config.head_dim % 2:
        found.append(f"rotary embeddings rotate pairs of dims: the head size must be even, got {config.head_dim}")
    if config.rope_scaling is not None:
        if config.positional != "rotary":
            found.append(f"rope_scaling scales rotary embeddings; positional is {config.positional!r}")
        found += config.rope_scaling.problems(config.max_len)
    if config.num_decoder_layers < 1:
        found.append("the causal_lm family needs num_decoder_layers >= 1")
    return found


def has_bias(config: "ModelConfig", projection: str) -> bool:
    """Whether an attention projection or MLP leaf has a bias: `bias` for all, or (Qwen2) q/k/v only."""
    return config.bias or (config.qkv_bias and projection in ("q_proj", "k_proj", "v_proj"))


def mlp_leaves(config: "ModelConfig") -> tuple[str, ...]:
    return ("gate_proj", "up_proj", "down_proj") if config.gated_ffn else ("up_proj", "down_proj")


def attention_shapes(config: "ModelConfig") -> dict[str, tuple[int, int]]:
    """{projection: (in, out)} of one attention block."""
    D, K, H, G = config.d_model, config.head_dim, config.num_heads, kv_heads(config)
    if config.fused_qkv:
        projections = {"c_attn": (D, (H + 2 * G) * K)}
    else:
        projections = {"q_proj": (D, H * K), "k_proj": (D, G * K), "v_proj": (D, G * K)}
    return {**projections, "o_proj": (H * K, D)}
