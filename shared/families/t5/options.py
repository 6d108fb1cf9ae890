"""The t5 family's options: the values it allows, the checks on its sizes, and the helpers both
stacks read (tied output, FFN leaves)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.families.family import rejected_options

if TYPE_CHECKING:
    from shared.config.model_config import ModelConfig

_FIXED = {
    "norm_kind": ("rms",),
    "norm_placement": ("pre",),
    "positional": ("relative",),
    "final_norms": (True,),
    "bias": (False,),
    "scale_embeddings": (False,),
    "tie_embeddings": ("all", "src_tgt"),
}


def problems(config: "ModelConfig", sizes_ok: bool) -> list[str]:
    found = rejected_options(config, "t5", _FIXED)
    if sizes_ok and config.head_size is None and config.d_model % config.num_heads:
        found.append(
            f"d_model ({config.d_model}) must be divisible by num_heads ({config.num_heads}) unless head_size is set"
        )
    buckets, distance = config.relative_attention_num_buckets, config.relative_attention_max_distance
    if isinstance(buckets, int) and isinstance(distance, int) and (buckets < 4 or distance <= buckets // 2):
        # fewer buckets leave no exact bucket per direction; a max_distance at the exact range makes
        # the log step divide by log(1) = 0 (HF's T5 fails there too)
        found.append(
            "the t5 family needs relative_attention_num_buckets >= 4 and relative_attention_max_distance > "
            f"num_buckets // 2, got {buckets} and {distance}"
        )
    return found


def is_tied(config: "ModelConfig") -> bool:
    """T5 v1.0: the output layer is the embedding table, applied after a d_model**-0.5 rescale."""
    return config.tie_embeddings == "all"


def feed_forward_leaves(config: "ModelConfig") -> tuple[str, ...]:
    return ("wi_0", "wi_1", "wo") if config.gated_ffn else ("wi", "wo")

