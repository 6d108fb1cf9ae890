"""The causal_lm family's Hugging Face mapping: GPT2LMHeadModel / LlamaForCausalLM and Llama's variants
(MistralForCausalLM, Qwen2ForCausalLM, GemmaForCausalLM: the same module names) keys and configs, both ways."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from shared.families.causal_lm.options import is_tied, kv_heads
from shared.families.causal_lm.weights import module_specs
from shared.families.hf_mapping import HFMapping
from shared.json_config import ConfigError
from shared.families.causal_lm.rope_scaling import RopeScaling

if TYPE_CHECKING:
    from shared.config.model_config import ModelConfig


def is_gpt2(config: "ModelConfig") -> bool:
    """Which HF architecture the config exports to: GPT-2 (learned positions) or Llama (rotary)."""
    return config.positional == "learned"


_GPT2_NAMES = {"attn_norm": "ln_1", "mlp_norm": "ln_2", "self_attn.c_attn": "attn.c_attn",
               "self_attn.o_proj": "attn.c_proj", "mlp.up_proj": "mlp.c_fc", "mlp.down_proj": "mlp.c_proj"}
_LLAMA_NAMES = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
                **{f"self_attn.{p}": f"self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")},
                **{f"mlp.{p}": f"mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")}}


def module_table(config: "ModelConfig") -> dict[str, str]:
    """{our module path: HF module path} of every parameter-holding module (adapters use it too)."""
    if is_gpt2(config):
        table = {"embed_tokens": "transformer.wte", "pos_embed": "transformer.wpe", "final_norm": "transformer.ln_f"}
        layer_prefix, names = "transformer.h", _GPT2_NAMES
    else:
        table = {"embed_tokens": "model.embed_tokens", "final_norm": "model.norm"}
        layer_prefix, names = "model.layers", _LLAMA_NAMES
    table["lm_head"] = "lm_head"
    for i in range(config.num_decoder_layers):
        for ours, hf in names.items():
            table[f"layers.{i}.{ours}"] = f"{layer_prefix}.{i}.{hf}"
    return table


def key_table(config: "ModelConfig") -> dict[str, str]:
    """{our state-dict key: HF key}."""
    modules = module_table(config)
    table = {}
    for module, _, shapes in module_specs(config):
        for leaf in shapes:
            table[f"{module}.{leaf}"] = f"{modules[module]}.{leaf}"
    return table


def transposed_keys(config: "ModelConfig") -> frozenset[str]:
    """HF keys stored (in, out): GPT-2's Conv1D weights."""
    if not is_gpt2(config):
        return frozenset()
    return frozenset(
        hf for ours, hf in key_table(config).items()
        if hf.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight"))
    )


def aliases(config: "ModelConfig") -> dict[str, str]:
    if is_tied(config):
        return {"lm_head.weight": module_table(config)["embed_tokens"] + ".weight"}
    return {}


def fallbacks(config: "ModelConfig") -> dict[str, str]:
    # An untied model saved while tied holds no lm_head.weight: it is the embedding's copy.
    return {} if is_tied(config) else {"lm_head.weight": module_table(config)["embed_tokens"] + ".weight"}


# HF's activation names (ACT2FN) -> ours
_HF_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                   "silu": "silu", "swish": "silu"}
_OUR_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu"}
# Fields with no effect on the model's math (bookkeeping, generation defaults, task heads).
_NEUTRAL_FIELDS = {
    "architectures", "transformers_version", "dtype", "torch_dtype", "initializer_range", "use_cache",
    "_name_or_path", "name_or_path", "model_type", "return_dict", "output_hidden_states", "output_attentions",
    "id2label", "label2id", "tokenizer_class", "problem_type", "chunk_size_feed_forward", "task_specific_params",
    "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
    "max_length", "min_length", "do_sample", "num_beams", "temperature", "top_k", "top_p", "finetuning_task",
    "gradient_checkpointing", "sep_token_id", "n_ctx", "is_encoder_decoder",
}
# {field: value the math needs}: any other value is a model twinformer cannot express
_GPT2_REQUIRED = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                  "reorder_and_upcast_attn": False, "add_cross_attention": False}
_LLAMA_REQUIRED = {"pretraining_tp": 1}


def _raise(kind: str, problems: list[str]) -> None:
    raise ConfigError(
        f"this {kind} config cannot be expressed in twinformer ({len(problems)} unsupported field(s)):\n  - "
        + "\n  - ".join(problems)
    )


def _ids(hf: dict[str, Any], problems: list[str], bos_default: int, eos_default: int) -> tuple[int, int, int]:
    bos, eos = hf.get("bos_token_id", bos_default), hf.get("eos_token_id", eos_default)
    if isinstance(eos, list) and len(eos) == 1:
        eos = eos[0]
    for name, value in (("bos_token_id", bos), ("eos_token_id", eos)):
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{name}={value!r}: one integer token id is supported")
    given = hf.get("pad_token_id")
    pad = eos if given is None else given  # no pad token (GPT-2, Llama): pad with the end token
    if not isinstance(pad, int) or isinstance(pad, bool):
        problems.append(f"pad_token_id={given!r}: an integer token id is supported" if given is not None else
                        f"pad_token_id=null pads with eos_token_id, which is {eos!r}: give an integer pad_token_id "
                        "or eos_token_id")  # fmt: skip
    return bos, eos, pad


def _gpt2_from_hf(hf: dict[str, Any]) -> dict[str, Any]:

    handled = {"vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
               "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "bos_token_id", "eos_token_id",
               "pad_token_id", "tie_word_embeddings", *_GPT2_REQUIRED}
    problems = [f"{name}={hf[name]!r}: not a GPT2LMHeadModel field twinformer knows"
                for name in sorted(set(hf) - handled - _NEUTRAL_FIELDS)]
    problems += [f"{name}={hf[name]!r}: only {value!r} is supported"
                 for name, value in _GPT2_REQUIRED.items() if name in hf and hf[name] != value]
    act = hf.get("activation_function", "gelu_new")
    if act not in _HF_ACTIVATIONS:
        problems.append(f"activation_function={act!r}: supported are {', '.join(_HF_ACTIVATIONS)}")
    bos, eos, pad = _ids(hf, problems, 50256, 50256)
    if problems:
        _raise("GPT-2", problems)
    D = hf.get("n_embd", 768)
    vocab = hf.get("vocab_size", 50257)
    return dict(
        family="causal_lm", src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=D,
        num_heads=hf.get("n_head", 12), d_ff=hf.get("n_inner") or 4 * D, num_encoder_layers=0,
        num_decoder_layers=hf.get("n_layer", 12), dropout=hf.get("resid_pdrop", 0.1),
        attention_dropout=hf.get("attn_pdrop", 0.1), embedding_dropout=hf.get("embd_pdrop", 0.1),
        max_len=hf.get("n_positions", 1024), pad_id=pad, bos_id=bos, eos_id=eos, bias=True,
        norm_placement="pre", norm_kind="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        activation=_HF_ACTIVATIONS[act], final_norms=True, positional="learned",
        tie_embeddings="tgt_out" if hf.get("tie_word_embeddings", True) else "none", fused_qkv=True,
    )


def _rope_fields(parameters: Any, name: str, problems: list[str]) -> tuple[float | None, RopeScaling | None]:
    """One HF rope dict (v5 rope_parameters, or v4 rope_scaling) -> (its rope_theta, its scaling)."""
    from shared.json_config import ConfigError

    if not isinstance(parameters, dict):
        problems.append(f"{name}={parameters!r}: expected an object")
        return None, None
    fields = dict(parameters)
    theta = fields.pop("rope_theta", None)
    rope_type = fields.pop("rope_type", fields.pop("type", "default"))  # "type": transformers' older name
    if rope_type == "default":
        if fields:
            problems.append(f"{name}={parameters!r}: the default rope takes only rope_theta")
        return theta, None
    try:
        scaling = RopeScaling.from_dict({"rope_type": rope_type, **fields})
    except ConfigError as error:
        problems.append(f"{name}={parameters!r}: {error}")
        return theta, None
    return theta, scaling


def _llama_rope(hf: dict[str, Any], problems: list[str]) -> tuple[float, RopeScaling | None]:
    """(rope_theta, rope scaling) from transformers v5's rope_parameters or v4's rope_theta + rope_scaling.

    As HF's standardize_rope_params, llama3 and yarn without original_max_position_embeddings take
    max_position_embeddings.
    """
    theta, scaling = hf.get("rope_theta"), None
    if hf.get("rope_scaling") is not None:
        theta_v4, scaling = _rope_fields(hf["rope_scaling"], "rope_scaling", problems)
        theta = theta_v4 if theta_v4 is not None else theta
    if hf.get("rope_parameters") is not None:
        theta_v5, scaling_v5 = _rope_fields(hf["rope_parameters"], "rope_parameters", problems)
        if "rope_scaling" in hf and hf["rope_scaling"] is not None and scaling_v5 != scaling:
            problems.append(f"rope_parameters={hf['rope_parameters']!r} and rope_scaling={hf['rope_scaling']!r} "
                            "disagree")
        theta, scaling = (theta_v5 if theta_v5 is not None else theta), scaling_v5
    if scaling is not None and scaling.rope_type in ("llama3", "yarn") and scaling.original_max_position_embeddings is None:
        scaling = dataclasses.replace(
            scaling, original_max_position_embeddings=hf.get("max_position_embeddings", 2048))
    return (10000.0 if theta is None else theta), scaling


# transformers' defaults (5.x config classes) of the fields a saved config may leave out, per model_type
_ROTARY_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=None, hidden_act="silu", max_position_embeddings=2048,
                  rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, head_dim=None),
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, hidden_act="silu", max_position_embeddings=131072,
                    rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, head_dim=None,
                    sliding_window=4096),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, hidden_act="silu", max_position_embeddings=32768,
                  rms_norm_eps=1e-6, bos_token_id=None, eos_token_id=None, tie_word_embeddings=False, head_dim=None,
                  use_sliding_window=False, sliding_window=4096, max_window_layers=28),
    "gemma": dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=16, hidden_act="gelu_pytorch_tanh",
                  max_position_embeddings=8192, rms_norm_eps=1e-6, bos_token_id=2, eos_token_id=1, pad_token_id=0,
                  tie_word_embeddings=True, head_dim=256),
}
_ROTARY_FIELDS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "bos_token_id",
                  "eos_token_id", "pad_token_id", "tie_word_embeddings", "rope_parameters", "rope_theta",
                  "rope_scaling", "attention_dropout", "head_dim"}
# the fields each variant adds to the common ones
_VARIANT_FIELDS = {"llama": {"attention_bias", "mlp_bias", *_LLAMA_REQUIRED}, "mistral": {"sliding_window"},
                   "qwen2": {"use_sliding_window", "sliding_window", "max_window_layers", "layer_types", "use_mrope"},
                   "gemma": {"hidden_activation", "attention_bias", "use_bidirectional_attention"}}
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "gemma": "GemmaForCausalLM"}


def _qwen2_window(hf: dict[str, Any], layers: int, problems: list[str]) -> int | None:
    """Qwen2's sliding window: none (use_sliding_window false), or the same window on every layer."""
    window = hf["sliding_window"] if hf["use_sliding_window"] else None
    types = hf.get("layer_types") or ["sliding_attention" if window is not None and i >= hf["max_window_layers"]
                                      else "full_attention" for i in range(layers)]
    if set(types) == {"full_attention"}:
        return None
    if set(types) == {"sliding_attention"} and window is not None:
        return window
    problems.append(f"layer_types={types!r}: twinformer has one attention kind for all layers (all "
                    "full_attention, or all sliding_attention with use_sliding_window true)")
    return None


def _gemma_activation(hf: dict[str, Any], problems: list[str]) -> str:
    """transformers 5 reads hidden_act and takes Gemma's legacy "gelu" as the tanh GELU; v4 configs may
    also carry hidden_activation, which v4 preferred: both must name the same function."""
    legacy = {"gelu": "gelu_pytorch_tanh"}
    act = legacy.get(hf["hidden_act"], hf["hidden_act"])
    other = hf.get("hidden_activation")
    if other is not None and _HF_ACTIVATIONS.get(other) != _HF_ACTIVATIONS.get(act):
        problems.append(f"hidden_activation={other!r} and hidden_act={hf['hidden_act']!r} name different functions")
    return act


def _rotary_from_hf(given: dict[str, Any]) -> dict[str, Any]:
    """A Llama, Mistral, Qwen2 or Gemma config dict -> ModelConfig fields (the variants are options)."""
    model_type = given.get("model_type", "llama")
    kind = _ARCHITECTURES[model_type].removesuffix("ForCausalLM")
    hf = {**_ROTARY_DEFAULTS[model_type], **given}
    handled = _ROTARY_FIELDS | _VARIANT_FIELDS[model_type]
    problems = [f"{name}={hf[name]!r}: not a {_ARCHITECTURES[model_type]} field twinformer knows"
                for name in sorted(set(given) - handled - _NEUTRAL_FIELDS)]
    layers = hf["num_hidden_layers"]
    variant: dict[str, Any] = {}
    bias = False
    if model_type == "llama":
        problems += [f"{name}={hf[name]!r}: only {value!r} is supported"
                     for name, value in _LLAMA_REQUIRED.items() if name in hf and hf[name] != value]
        if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
            problems.append(
                f"attention_bias={hf.get('attention_bias')!r} with mlp_bias={hf.get('mlp_bias')!r}: twinformer has one "
                "bias switch for both"
            )
        bias = bool(hf.get("attention_bias", False))
    elif model_type == "mistral":
        variant["sliding_window"] = hf["sliding_window"]
    elif model_type == "qwen2":
        variant.update(qkv_bias=True, sliding_window=_qwen2_window(hf, layers, problems))
        if hf.get("use_mrope"):  # Qwen2-VL's multimodal rope; Qwen2.5 configs carry use_mrope: false
            problems.append("use_mrope=True: multimodal rotary positions are not supported")
    else:  # gemma
        hf["hidden_act"] = _gemma_activation(hf, problems)
        if hf.get("attention_bias", False):
            problems.append("attention_bias=True: Gemma's biases on q/k/v/o_proj without the MLP's are not supported")
        if hf.get("use_bidirectional_attention"):
            problems.append(f"use_bidirectional_attention={hf['use_bidirectional_attention']!r}: only causal "
                            "attention is supported")
        variant.update(norm_one_plus_weight=True, scale_embeddings=True)
    act = hf["hidden_act"]
    if act not in _HF_ACTIVATIONS:
        problems.append(f"hidden_act={act!r}: supported are {', '.join(_HF_ACTIVATIONS)}")
    theta, scaling = _llama_rope(hf, problems)
    bos, eos, pad = _ids(hf, problems, hf["bos_token_id"], hf["eos_token_id"])
    if problems:
        _raise(kind, problems)
    D, H = hf["hidden_size"], hf["num_attention_heads"]
    vocab = hf["vocab_size"]
    head_dim = hf["head_dim"] or D // H
    return dict(
        family="causal_lm", src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=D, num_heads=H,
        num_kv_heads=hf["num_key_value_heads"] or H,
        head_size=None if head_dim * H == D else head_dim,  # None: the default d_model // num_heads
        d_ff=hf["intermediate_size"], num_encoder_layers=0, num_decoder_layers=layers,
        dropout=0.0, attention_dropout=hf.get("attention_dropout", 0.0), embedding_dropout=0.0,
        max_len=hf["max_position_embeddings"], pad_id=pad, bos_id=bos, eos_id=eos,
        bias=bias, norm_placement="pre", norm_kind="rms",
        norm_eps=hf["rms_norm_eps"], activation=_HF_ACTIVATIONS[act], gated_ffn=True, final_norms=True,
        positional="rotary", rope_theta=float(theta), rope_scaling=scaling,
        tie_embeddings="tgt_out" if hf["tie_word_embeddings"] else "none", **variant,
    )


def fields_from_hf(hf: dict[str, Any]) -> dict[str, Any]:
    """A transformers GPT-2 / Llama / Mistral / Qwen2 / Gemma config dict -> ModelConfig fields; ConfigError
    listing every field it cannot express."""
    return _gpt2_from_hf(hf) if hf.get("model_type") == "gpt2" else _rotary_from_hf(hf)


def _export_problems(config: "ModelConfig", required: dict[str, Any], kind: str) -> list[str]:
    return [f"{kind} needs {name}={value!r}, got {getattr(config, name)!r}"
            for name, value in required.items() if getattr(config, name) != value]


def config_to_hf(config: "ModelConfig") -> dict[str, Any]:
    """ModelConfig -> GPT2Config (learned positions) or the config of the rotary model it needs (hf_model_type:
    Llama, Mistral, Qwen2, Gemma) as a dict; ConfigError listing every misfit."""
    if config.family != "causal_lm":
        raise ConfigError(f"a {config.family!r} config is not a causal_lm config")
    common = {"bos_token_id": config.bos_id, "eos_token_id": config.eos_id, "pad_token_id": config.pad_id,
              "tie_word_embeddings": is_tied(config), "vocab_size": config.tgt_vocab_size}
    if is_gpt2(config):
        problems = _export_problems(config, {"norm_kind": "layernorm", "gated_ffn": False, "fused_qkv": True,
                                             "bias": True, "num_kv_heads": None, "sliding_window": None,
                                             "scale_embeddings": False}, "GPT2LMHeadModel")
        if config.head_size is not None and config.head_size * config.num_heads != config.d_model:
            problems.append(f"GPT2LMHeadModel needs head_size null or d_model // num_heads, got {config.head_size}")
        if problems:
            raise ConfigError("this config cannot be exported as GPT-2:\n  - " + "\n  - ".join(problems))
        return {
            "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", **common,
            "n_positions": config.max_len, "n_embd": config.d_model, "n_layer": config.num_decoder_layers,
            "n_head": config.num_heads, "n_inner": config.d_ff, "activation_function": _OUR_ACTIVATIONS[config.activation],
            "resid_pdrop": config.dropout, "embd_pdrop": config.embedding_dropout, "attn_pdrop": config.attention_dropout,
            "layer_norm_epsilon": config.norm_eps, **_GPT2_REQUIRED,
        }
    return _rotary_to_hf(config, common)


def hf_model_type(config: "ModelConfig") -> str:
    """The transformers model a rotary config exports to: the one whose math it needs (a Mistral config
    without a window is a Llama, so it exports as one)."""
    if config.norm_one_plus_weight or config.scale_embeddings:
        return "gemma"
    if config.qkv_bias:
        return "qwen2"
    return "mistral" if config.sliding_window is not None else "llama"


# {model_type: {field: the value that model needs}} beyond the common Llama-style requirements
_EXPORT_NEEDS: dict[str, dict[str, Any]] = {
    "llama": {"sliding_window": None},
    "mistral": {"bias": False},
    "qwen2": {"bias": False},
    "gemma": {"bias": False, "qkv_bias": False, "sliding_window": None, "norm_one_plus_weight": True,
              "scale_embeddings": True},
}


def _rotary_to_hf(config: "ModelConfig", common: dict[str, Any]) -> dict[str, Any]:
    model_type = hf_model_type(config)
    architecture = _ARCHITECTURES[model_type]
    needs = {"norm_kind": "rms", "gated_ffn": True, "fused_qkv": False, "dropout": 0.0, "embedding_dropout": 0.0,
             **_EXPORT_NEEDS[model_type]}
    problems = _export_problems(config, needs, architecture)
    if problems:
        raise ConfigError(f"this config cannot be exported as {architecture.removesuffix('ForCausalLM')}:\n  - "
                          + "\n  - ".join(problems))
    out = {
        "architectures": [architecture], "model_type": model_type, **common,
        "hidden_size": config.d_model, "intermediate_size": config.d_ff, "num_hidden_layers": config.num_decoder_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": kv_heads(config), "head_dim": config.head_dim,
        "hidden_act": _OUR_ACTIVATIONS[config.activation], "max_position_embeddings": config.max_len,
        "rms_norm_eps": config.norm_eps, "attention_dropout": config.attention_dropout, **_rope_to_hf(config),
    }
    if model_type == "llama":
        out.update(attention_bias=config.bias, mlp_bias=config.bias, pretraining_tp=1)
    elif model_type == "mistral":
        out["sliding_window"] = config.sliding_window
    elif model_type == "qwen2":
        windowed = config.sliding_window is not None
        out.update(use_sliding_window=windowed, sliding_window=config.sliding_window, max_window_layers=0,
                   layer_types=[("sliding_attention" if windowed else "full_attention")] * config.num_decoder_layers)
    else:
        out.update(attention_bias=False)
    return out


def _rope_to_hf(config: "ModelConfig") -> dict[str, Any]:
    """v5 reads rope_parameters; v4 reads rope_theta and rope_scaling (the same scaling without the theta)."""
    if config.rope_scaling is None:
        return {"rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
                "rope_theta": config.rope_theta}
    scaling = config.rope_scaling.given()
    return {"rope_parameters": {**scaling, "rope_theta": config.rope_theta}, "rope_theta": config.rope_theta,
            "rope_scaling": scaling}


HF = HFMapping(
    model_types=("gpt2", *_ARCHITECTURES),
    fields_from_hf=fields_from_hf,
    config_to_hf=config_to_hf,
    key_table=key_table,
    aliases=aliases,
    fallbacks=fallbacks,
    transposed_keys=transposed_keys,
    linear_names={"c_attn": "c_attn", "q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj",
                  "o_proj": "o_proj", "gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj",
                  "c_fc": "up_proj"},
    module_table=module_table,
)
