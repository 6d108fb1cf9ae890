"""The one model configuration both stacks build from.

Every numerical choice on which PyTorch and JAX/Flax may silently disagree (norm kind and epsilon,
GELU flavour, mask handling, embedding scaling) is a field here, never a literal inside one stack.
Train/eval mode, dtype and RNG are call arguments, not architecture, so they are not fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from shared.families.registry import FAMILIES, PRESET_FIELDS, hf_family
from shared.json_config import ConfigError, JsonConfig
from shared.families.causal_lm.rope_scaling import RopeScaling

ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")  # gelu = exact erf GELU; gelu_tanh = tanh approximation
# book = chapter-3 norm: unbiased std, eps added outside the root; rms = T5's: no mean, no bias
NORM_KINDS = ("layernorm", "book", "rms")
NORM_PLACEMENTS = ("post", "pre")  # post: Norm(x + f(x)) as in the book; pre: x + f(Norm(x))
# sinusoid = interleaved sin/cos (even dims sin, odd cos); relative = T5's bucketed attention bias;
# rotary = rotary embeddings of q and k in HF's rotate_half layout (Llama)
POSITIONAL_KINDS = ("sinusoid", "learned", "relative", "rotary")
# tgt_out: target embedding = output projection; all: + source; src_tgt: one input table for source
# and target, the output projection its own
TIE_MODES = ("none", "tgt_out", "all", "src_tgt")


@dataclass(frozen=True)
class ModelConfig(JsonConfig):
    """Architecture of an encoder-decoder model (axis letters: see shared/parity/axes.py).

    `family` names the model family (shared/families/): which modules exist, which options are
    allowed and how weights are named. Family-specific options are fields with defaults, so one
    schema describes every family and config files written before a field existed still load.
    """

    kind: ClassVar[str] = "model config"

    src_vocab_size: int  # V_src; equal to tgt_vocab_size when the vocabulary is shared
    tgt_vocab_size: int  # V
    d_model: int = 512  # D
    num_heads: int = 8  # H; head size K = D // H
    d_ff: int = 2048  # F, the feed-forward hidden width
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dropout: float = 0.1  # after each sub-layer (before the residual add) and inside the FFN
    attention_dropout: float = 0.1  # on the attention probabilities
    embedding_dropout: float = 0.1  # after embedding + positional encoding
    max_len: int = 256  # longest sequence the positional encoding covers
    pad_id: int = 0  # padding masks are derived from this id, in source and target
    bias: bool = True  # biases in every Linear (attention, FFN, output projection)
    norm_placement: str = "post"
    norm_kind: str = "layernorm"
    norm_eps: float = 1e-5  # explicit: Flax's LayerNorm default (1e-6) differs from torch's
    activation: str = "relu"
    final_norms: bool = False  # a norm after the encoder stack and after the decoder stack
    scale_embeddings: bool = False  # multiply embeddings by sqrt(D) (the original paper does)
    tie_embeddings: str = "none"
    positional: str = "sinusoid"
    family: str = "transformer"  # shared/families/<family>/ holds its rules, traits and weight table
    bos_id: int = 1  # the decoder's first input token (T5: the pad id)
    eos_id: int = 2  # ends a generated sequence
    head_size: int | None = None  # K; None = d_model // num_heads (T5 sets d_kv independently)
    gated_ffn: bool = False  # FFN act(wi_0 x) * (wi_1 x) (T5 v1.1 / FLAN-T5) instead of act(fc1 x)
    relative_attention_num_buckets: int = 32  # positional "relative": buckets of the bias table
    relative_attention_max_distance: int = 128  # positional "relative": distances >= this share a bucket
    # causal_lm only (its own_options, shared/families/causal_lm/); other families keep the defaults
    num_kv_heads: int | None = None  # G, key/value heads of grouped-query attention; None = num_heads
    rope_theta: float = 10000.0  # positional "rotary": the base of the rotation frequencies
    fused_qkv: bool = False  # one c_attn projection D -> (H + 2G) K (GPT-2) instead of q/k/v_proj
    # positional "rotary": Llama 3 / linear / dynamic / YaRN scaling of the frequencies (shared/families/causal_lm/rope_scaling.py)
    rope_scaling: RopeScaling | None = None
    # Mistral: each query attends only the `sliding_window` latest keys (itself included); None = all
    sliding_window: int | None = None
    # Qwen2: biases on q_proj/k_proj/v_proj only (bias stays False: no bias on o_proj or the MLP)
    qkv_bias: bool = False
    # Gemma: the RMS norm scales by (1 + w), w stored as HF stores it (zeros = identity)
    norm_one_plus_weight: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):  # from JSON: the nested object
            object.__setattr__(self, "rope_scaling", RopeScaling.from_dict(self.rope_scaling))
        problems = self.problems()
        if problems:
            raise ConfigError("invalid ModelConfig:\n  - " + "\n  - ".join(problems))

    # ----------------------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.head_size if self.head_size is not None else self.d_model // self.num_heads

    def problems(self) -> list[str]:
        """Every reason this config cannot build a model (empty when valid)."""
        found: list[str] = []
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "num_heads", "d_ff", "max_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                found.append(f"{name} must be a positive integer, got {value!r}")
        for name in ("num_encoder_layers", "num_decoder_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                found.append(f"{name} must be a non-negative integer, got {value!r}")
        sizes_ok = not found
        for name in ("relative_attention_num_buckets", "relative_attention_max_distance"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                found.append(f"{name} must be a positive integer, got {value!r}")
        if self.head_size is not None and (
            not isinstance(self.head_size, int) or isinstance(self.head_size, bool) or self.head_size <= 0
        ):
            found.append(f"head_size must be a positive integer or null, got {self.head_size!r}")
        for name in ("dropout", "attention_dropout", "embedding_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                found.append(f"{name} must be in [0, 1), got {value!r}")
        if not isinstance(self.norm_eps, (int, float)) or not self.norm_eps > 0:
            found.append(f"norm_eps must be > 0, got {self.norm_eps!r}")
        for name, allowed in (
            ("activation", ACTIVATIONS),
            ("norm_kind", NORM_KINDS),
            ("norm_placement", NORM_PLACEMENTS),
            ("positional", POSITIONAL_KINDS),
            ("tie_embeddings", TIE_MODES),
        ):
            value = getattr(self, name)
            if value not in allowed:
                found.append(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")
        for name in ("bias", "final_norms", "scale_embeddings", "gated_ffn"):
            if not isinstance(getattr(self, name), bool):
                found.append(f"{name} must be a bool, got {getattr(self, name)!r}")
        if (
            self.tie_embeddings in ("all", "src_tgt")
            and isinstance(self.src_vocab_size, int)
            and self.src_vocab_size != self.tgt_vocab_size
        ):
            found.append(
                f"tie_embeddings={self.tie_embeddings!r} shares one table, so src_vocab_size "
                f"({self.src_vocab_size}) must equal tgt_vocab_size ({self.tgt_vocab_size})"
            )
        for id_name in ("pad_id", "bos_id", "eos_id"):
            value = getattr(self, id_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                found.append(f"{id_name} must be a non-negative integer, got {value!r}")
                continue
            for name in ("src_vocab_size", "tgt_vocab_size"):
                vocab = getattr(self, name)
                if isinstance(vocab, int) and vocab > 0 and value >= vocab:
                    found.append(f"{id_name} ({value}) must be < {name} ({vocab})")
        if self.num_kv_heads is not None and (
            not isinstance(self.num_kv_heads, int) or isinstance(self.num_kv_heads, bool) or self.num_kv_heads <= 0
        ):
            found.append(f"num_kv_heads must be a positive integer or null, got {self.num_kv_heads!r}")
        if isinstance(self.rope_theta, bool) or not isinstance(self.rope_theta, (int, float)) or not self.rope_theta > 0:
            found.append(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if not isinstance(self.fused_qkv, bool):
            found.append(f"fused_qkv must be a bool, got {self.fused_qkv!r}")
        # A field one family owns (e.g. causal_lm's num_kv_heads) keeps its default in every other family.
        for owner in FAMILIES.values():
            if owner.name == self.family:
                continue
            for name, default in owner.own_options.items():
                if getattr(self, name) != default:
                    found.append(f"{name} is a {owner.name} option; the {self.family} family needs {default!r}")
        if self.family not in FAMILIES:
            found.append(f"unknown family {self.family!r}; expected one of {', '.join(FAMILIES)}")
        else:
            found += FAMILIES[self.family].problems(self, sizes_ok)
        return found

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        cls.check_object(data)
        cls.reject_unknown(data)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and f.default is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"model config is missing required field(s): {', '.join(missing)}")
        return cls(**data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        """A named configuration (each family declares its presets), with `overrides` replaced."""
        if name not in PRESET_FIELDS:
            raise ConfigError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESET_FIELDS))}")
        return cls(**PRESET_FIELDS[name]).replace(**overrides)

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "ModelConfig":
        """A Hugging Face config.json dict -> ModelConfig, through the family owning its `model_type`.

        ValueError for a model_type no family reads; ConfigError listing every field it cannot express.
        """
        family = hf_family(hf.get("model_type"))
        return cls(**family.hf.fields_from_hf(hf))
