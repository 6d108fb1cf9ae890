"""The t5 family's Hugging Face mapping: T5ForConditionalGeneration's keys and T5Config, both ways."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.families.hf_mapping import HFMapping
from shared.families.t5.options import feed_forward_leaves, is_tied
from shared.json_config import ConfigError

if TYPE_CHECKING:
    from shared.config.model_config import ModelConfig

_ATTENTION_NAMES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "o"}
LINEAR_NAMES = {**{hf: ours for ours, hf in _ATTENTION_NAMES.items()},
                "wi": "wi", "wi_0": "wi_0", "wi_1": "wi_1", "wo": "wo", "lm_head": "output_proj"}


def key_table(config: "ModelConfig") -> dict[str, str]:
    """{our state-dict key: transformers T5ForConditionalGeneration key}."""
    table = {"shared_embed.weight": "shared.weight"}
    # our sub-layer -> (HF layer index within the block, HF attention module) per stack
    sublayers = {
        "encoder": {"self_attn": (0, "SelfAttention"), "ffn": (1, None)},
        "decoder": {"self_attn": (0, "SelfAttention"), "cross_attn": (1, "EncDecAttention"), "ffn": (2, None)},
    }
    for stack, layers in (("encoder", config.num_encoder_layers), ("decoder", config.num_decoder_layers)):
        for i in range(layers):
            ours, hf = f"{stack}.layers.{i}", f"{stack}.block.{i}"
            for sub, (index, attention) in sublayers[stack].items():
                table[f"{ours}.{sub}_norm.weight"] = f"{hf}.layer.{index}.layer_norm.weight"
                if attention is None:
                    for leaf in feed_forward_leaves(config):
                        table[f"{ours}.ffn.{leaf}.weight"] = f"{hf}.layer.{index}.DenseReluDense.{leaf}.weight"
                    continue
                for proj, hf_proj in _ATTENTION_NAMES.items():
                    table[f"{ours}.{sub}.{proj}.weight"] = f"{hf}.layer.{index}.{attention}.{hf_proj}.weight"
                if i == 0 and sub == "self_attn":
                    table[f"{ours}.self_attn.relative_attention_bias.weight"] = (
                        f"{hf}.layer.0.SelfAttention.relative_attention_bias.weight"
                    )
        table[f"{stack}.final_norm.weight"] = f"{stack}.final_layer_norm.weight"
    if not is_tied(config):
        table["output_proj.weight"] = "lm_head.weight"
    return table


def aliases(config: "ModelConfig") -> dict[str, str]:
    """Names under which HF files may repeat the shared table (older versions save every tied name)."""
    extra = {"encoder.embed_tokens.weight": "shared.weight", "decoder.embed_tokens.weight": "shared.weight"}
    if is_tied(config):
        extra["lm_head.weight"] = "shared.weight"
    return extra


def fallbacks(config: "ModelConfig") -> dict[str, str]:
    # A v1.1 model saved while its lm_head was tied holds no lm_head.weight: it is the table's copy.
    return {} if is_tied(config) else {"lm_head.weight": "shared.weight"}


# HF's activation names (ACT2FN) -> ours; "gated-gelu" means gated gelu_new (T5Config.__post_init__)
_HF_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
# Fields with no effect on the model's math (bookkeeping, generation defaults, task heads).
_NEUTRAL_FIELDS = {
    "architectures", "transformers_version", "dtype", "torch_dtype", "initializer_factor", "use_cache",
    "task_specific_params", "output_past", "_name_or_path", "name_or_path", "classifier_dropout",
    "gradient_checkpointing", "model_type", "dense_act_fn", "is_gated_act", "return_dict",
    "output_hidden_states", "output_attentions", "id2label", "label2id", "tokenizer_class", "prefix",
    "bos_token_id", "sep_token_id", "max_length", "min_length", "num_beams", "early_stopping",
    "length_penalty", "no_repeat_ngram_size", "chunk_size_feed_forward", "problem_type", "finetuning_task",
}


def fields_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """A transformers T5Config dict -> ModelConfig fields; ConfigError listing every field it cannot express."""
    problems: list[str] = []
    handled = {
        "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
        "relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate",
        "layer_norm_epsilon", "feed_forward_proj", "is_encoder_decoder", "is_decoder", "pad_token_id",
        "eos_token_id", "decoder_start_token_id", "n_positions", "tie_word_embeddings", "scale_decoder_outputs",
    }
    for name in sorted(set(hf) - handled - _NEUTRAL_FIELDS):
        problems.append(f"{name}={hf[name]!r}: not a T5ForConditionalGeneration field twinformer knows")
    if hf.get("is_encoder_decoder", True) is not True:
        problems.append(f"is_encoder_decoder={hf['is_encoder_decoder']!r}: only the encoder-decoder T5 is supported")
    if hf.get("is_decoder", False) is not False:
        problems.append(f"is_decoder={hf['is_decoder']!r}: only the encoder-decoder T5 is supported")
    projection = hf.get("feed_forward_proj", "relu")
    parts = str(projection).split("-")
    gated = len(parts) == 2 and parts[0] == "gated"
    act_name = "gelu_new" if projection == "gated-gelu" else parts[-1]
    if len(parts) > 2 or (len(parts) == 2 and not gated) or act_name not in _HF_ACTIVATIONS:
        problems.append(
            f"feed_forward_proj={projection!r}: supported are relu, gelu, gelu_new and their gated- forms"
        )
    pad = hf.get("pad_token_id", 0)
    eos = hf.get("eos_token_id", 1)
    if not isinstance(eos, int):
        problems.append(f"eos_token_id={eos!r}: one end token id is supported")
    if not isinstance(pad, int):
        problems.append(f"pad_token_id={pad!r}: a pad token id is required")
    if problems:
        raise ConfigError(
            f"this T5 config cannot be expressed in twinformer ({len(problems)} unsupported field(s)):\n  - "
            + "\n  - ".join(problems)
        )
    scaled = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
    rate = hf.get("dropout_rate", 0.1)
    d_model, heads = hf.get("d_model", 512), hf.get("num_heads", 8)
    return dict(
        family="t5",
        src_vocab_size=hf.get("vocab_size", 32128),
        tgt_vocab_size=hf.get("vocab_size", 32128),
        d_model=d_model,
        num_heads=heads,
        head_size=hf.get("d_kv", 64),
        d_ff=hf.get("d_ff", 2048),
        num_encoder_layers=hf.get("num_layers", 6),
        num_decoder_layers=hf.get("num_decoder_layers") or hf.get("num_layers", 6),
        dropout=rate,
        attention_dropout=rate,
        embedding_dropout=rate,
        max_len=hf.get("n_positions", 512),
        pad_id=pad,
        bos_id=pad if hf.get("decoder_start_token_id") is None else hf["decoder_start_token_id"],  # HF's default
        eos_id=eos,
        bias=False,
        norm_placement="pre",
        norm_kind="rms",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        activation=_HF_ACTIVATIONS[act_name],
        gated_ffn=gated,
        final_norms=True,
        scale_embeddings=False,
        tie_embeddings="all" if scaled else "src_tgt",
        positional="relative",
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
    )


def config_to_hf(config: "ModelConfig") -> dict[str, Any]:
    """ModelConfig -> a T5Config dict that transformers loads (v4 and v5 field names)."""
    if config.family != "t5":
        raise ConfigError(f"a {config.family!r} config is not a T5 config")
    if config.gated_ffn:
        names = {"relu": "gated-relu", "gelu_tanh": "gated-gelu"}
    else:
        names = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new"}
    if config.activation not in names:
        raise ConfigError(
            f"activation {config.activation!r} with gated_ffn={config.gated_ffn} has no T5Config feed_forward_proj"
        )
    if not config.dropout == config.attention_dropout == config.embedding_dropout:
        raise ConfigError(
            "T5Config has one dropout_rate: dropout, attention_dropout and embedding_dropout must be equal "
            f"to export, got {config.dropout}, {config.attention_dropout}, {config.embedding_dropout}"
        )
    tied = is_tied(config)
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": config.tgt_vocab_size,
        "d_model": config.d_model,
        "d_kv": config.head_dim,
        "d_ff": config.d_ff,
        "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "num_heads": config.num_heads,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout,
        "layer_norm_epsilon": config.norm_eps,
        "feed_forward_proj": names[config.activation],
        "is_encoder_decoder": True,
        "pad_token_id": config.pad_id,
        "eos_token_id": config.eos_id,
        "decoder_start_token_id": config.bos_id,
        "n_positions": config.max_len,
        # v4 reads tie_word_embeddings; v5 ties always and reads the rescale from scale_decoder_outputs
        # (it unties lm_head by itself when the file holds a different lm_head.weight)
        "tie_word_embeddings": tied,
        "scale_decoder_outputs": tied,
    }


HF = HFMapping(
    model_types=("t5",),
    fields_from_hf=fields_from_hf,
    config_to_hf=config_to_hf,
    key_table=key_table,
    aliases=aliases,
    fallbacks=fallbacks,
    # HF's T5 ignores it too (_keys_to_ignore_on_load_unexpected): cross-attention has no position bias
    ignored_keys=("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",),
    linear_names=LINEAR_NAMES,
)
