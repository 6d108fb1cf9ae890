"""The transformer family's options: the values it allows and the checks on its sizes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.families.family import rejected_options

if TYPE_CHECKING:
    from shared.config.model_config import ModelConfig

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

