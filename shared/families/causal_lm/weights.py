"""The causal_lm family's weight table: every parameter module, its kind and shapes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.families.family import ModuleSpec
from shared.families.causal_lm.options import attention_shapes, has_bias, is_tied, mlp_leaves

if TYPE_CHECKING:
    from shared.config.model_config import ModelConfig


def module_specs(config: "ModelConfig") -> list[ModuleSpec]:
    """Every parameter-holding module as (torch module path, kind, {torch leaf: shape})."""
    D, F, V = config.d_model, config.d_ff, config.tgt_vocab_size
    modules: list[ModuleSpec] = [("embed_tokens", "embedding", {"weight": (V, D)})]
    if config.positional == "learned":
        modules.append(("pos_embed", "embedding", {"weight": (config.max_len, D)}))

    def linear(path: str, n_in: int, n_out: int) -> None:
        shapes = {"weight": (n_out, n_in)}
        biased = has_bias(config, path.rsplit(".", 1)[-1])
        if biased:
            shapes["bias"] = (n_out,)
        modules.append((path, "linear" if biased else "linear_no_bias", shapes))

    def norm(path: str) -> None:
        if config.norm_kind == "rms":
            modules.append((path, "rms_norm", {"weight": (D,)}))
        else:
            modules.append((path, "norm", {"weight": (D,), "bias": (D,)}))

    for i in range(config.num_decoder_layers):
        layer = f"layers.{i}"
        norm(f"{layer}.attn_norm")
        for proj, (n_in, n_out) in attention_shapes(config).items():
            linear(f"{layer}.self_attn.{proj}", n_in, n_out)
        norm(f"{layer}.mlp_norm")
        for leaf in mlp_leaves(config):
            linear(f"{layer}.mlp.{leaf}", F, D) if leaf == "down_proj" else linear(f"{layer}.mlp.{leaf}", D, F)
    norm("final_norm")
    if not is_tied(config):
        modules.append(("lm_head", "linear_no_bias", {"weight": (V, D)}))
    return modules
