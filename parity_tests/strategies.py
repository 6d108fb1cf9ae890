"""Hypothesis strategies: ModelConfigs covering every option, and token-id batches for them.

Two families:
- `model_configs`/`parity_cases`: tiny sizes (D <= 16, V <= 17, lengths <= 10), because every new
  shape costs an XLA compile; they draw the combinations of options.
- `real_size_cases`: the sizes and magnitudes of real models (d_model up to 1024, up to 16 heads,
  up to 12 + 12 layers, vocabularies up to 32k, sequences up to 512, scaled embeddings, the
  frameworks' default init scales and the shared init). How large depends on the Hypothesis
  profile (REAL_SIZE_LIMITS): CI draws one example within a CPU budget, `gpu` and `nightly` more and
  up to the full sizes.
`covering_configs` lists configs that together take every value of every option, so each value
is exercised in every profile whatever Hypothesis draws.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shared.config.model_config import ACTIVATIONS, NORM_PLACEMENTS, ModelConfig
from shared.families.transformer import OPTIONS

NORM_KINDS, POSITIONAL_KINDS, TIE_MODES = OPTIONS["norm_kind"], OPTIONS["positional"], OPTIONS["tie_embeddings"]

MAX_SEQ_LEN = 10  # longest drawn source/target length
# 1 and 2 layers usually; 0 (a bare embedding -> output model, allowed by the config) rarely.
LAYER_COUNTS = st.sampled_from((1, 2, 1, 2, 1, 0))
DROPOUT_RATES = st.sampled_from((0.0, 0.1, 0.3))
# LoRA's dropout on the adapter branch's input (PEFT's lora_dropout), compared in train mode with one
# mask fed to both stacks (parity_tests/lora_dropout.py). Exact binary fractions, so 1 - (1 - p) == p
# and both stacks' keep tests (u >= p) see the same threshold; never 0, where train mode is eval mode.
LORA_DROPOUT_RATES = st.sampled_from((0.25, 0.5))


@st.composite
def model_configs(draw, max_layers: int = 2, dropout: st.SearchStrategy[float] = DROPOUT_RATES) -> ModelConfig:
    """A valid small config; every enum option, every flag and pad_id != 0 are reachable."""
    num_heads = draw(st.sampled_from((1, 2, 4)))
    head_dim = draw(st.sampled_from((2, 3, 4)))  # K; an odd D = H*K needs learned positions
    d_model = num_heads * head_dim
    positional = draw(st.sampled_from(POSITIONAL_KINDS)) if d_model % 2 == 0 else "learned"
    tie = draw(st.sampled_from(TIE_MODES))
    src_vocab = draw(st.integers(3, 17))
    tgt_vocab = src_vocab if tie == "all" else draw(st.integers(3, 17))
    layers = LAYER_COUNTS if max_layers >= 2 else st.integers(0, max_layers)
    return ModelConfig(
        src_vocab_size=src_vocab,
        tgt_vocab_size=tgt_vocab,
        d_model=d_model,
        num_heads=num_heads,
        d_ff=draw(st.sampled_from((4, 8, 12))),
        num_encoder_layers=draw(layers),
        num_decoder_layers=draw(layers),
        dropout=draw(dropout),
        attention_dropout=draw(dropout),
        embedding_dropout=draw(dropout),
        max_len=draw(st.integers(MAX_SEQ_LEN, MAX_SEQ_LEN + 6)),
        pad_id=draw(st.sampled_from((0, 0, 1, min(src_vocab, tgt_vocab) - 1))),
        bias=draw(st.booleans()),
        norm_placement=draw(st.sampled_from(NORM_PLACEMENTS)),
        norm_kind=draw(st.sampled_from(NORM_KINDS)),
        norm_eps=draw(st.sampled_from((1e-5, 1e-6, 1e-3))),
        activation=draw(st.sampled_from(ACTIVATIONS)),
        final_norms=draw(st.booleans()),
        scale_embeddings=draw(st.booleans()),
        tie_embeddings=tie,
        positional=positional,
    )


@dataclass(frozen=True)
class Batch:
    """Token ids for one forward pass: src (B, S), tgt_in (B, T) and loss targets tgt_out (B, T)."""

    src: np.ndarray
    tgt_in: np.ndarray
    tgt_out: np.ndarray


@st.composite
def token_ids(draw, shape: tuple[int, int], vocab: int, pad_id: int) -> np.ndarray:
    """(B, L) ids with padding anywhere (not only at the end), sometimes fully padded rows."""
    ids = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, vocab - 1)))
    pads = draw(hnp.arrays(np.bool_, shape, elements=st.booleans()))  # drawn pad positions, any place
    ids = np.where(pads & draw(st.booleans()), pad_id, ids)
    padded_row = draw(st.none() | st.integers(0, shape[0] - 1))
    if padded_row is not None:
        ids[padded_row] = pad_id
    return ids


@st.composite
def batches(draw, config: ModelConfig) -> Batch:
    """B in 1..4, S and T in 1..10 (<= max_len), ids over each full vocabulary including pad_id."""
    B = draw(st.integers(1, 4))
    S = draw(st.integers(1, min(MAX_SEQ_LEN, config.max_len)))
    T = draw(st.integers(1, min(MAX_SEQ_LEN, config.max_len)))
    pad = config.pad_id
    return Batch(
        src=draw(token_ids((B, S), config.src_vocab_size, pad)),
        tgt_in=draw(token_ids((B, T), config.tgt_vocab_size, pad)),
        tgt_out=draw(token_ids((B, T), config.tgt_vocab_size, pad)),
    )


@dataclass(frozen=True)
class ParityCase:
    """One property-test example: a config, a weight seed and a batch."""

    config: ModelConfig
    seed: int
    batch: Batch


@st.composite
def parity_cases(draw, max_layers: int = 2, dropout: st.SearchStrategy[float] = DROPOUT_RATES) -> ParityCase:
    config = draw(model_configs(max_layers=max_layers, dropout=dropout))
    return ParityCase(config=config, seed=draw(st.integers(0, 2**31 - 1)), batch=draw(batches(config)))


WEIGHT_DTYPES = st.sampled_from(("float32", "float16", "bfloat16"))


# -- every option value, explicitly ------------------------------------------------------------------
OPTION_VALUES: dict[str, tuple] = {
    "positional": POSITIONAL_KINDS,
    "tie_embeddings": TIE_MODES,
    "norm_placement": NORM_PLACEMENTS,
    "norm_kind": NORM_KINDS,
    "norm_eps": (1e-5, 1e-6, 1e-3),  # 1e-3: a large epsilon, visible next to a small variance
    "activation": ACTIVATIONS,
    "bias": (True, False),
    "final_norms": (True, False),
    "scale_embeddings": (True, False),
}


def covering_configs() -> list[ModelConfig]:
    """max(#values) tiny configs; config i takes value i (mod #values) of every option.

    Together they exercise every value of every option, LayerNorm with the large epsilon included
    (norm_kind and norm_eps are aligned so config 2 is layernorm, eps 1e-3).
    """
    count = max(len(values) for values in OPTION_VALUES.values())
    configs = []
    for i in range(count):
        options = {name: values[i % len(values)] for name, values in OPTION_VALUES.items()}
        configs.append(
            ModelConfig(
                src_vocab_size=13, tgt_vocab_size=13, d_model=8, num_heads=2, d_ff=12, num_encoder_layers=1,
                num_decoder_layers=1, dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0, max_len=12,
                pad_id=i % 2, **options,
            )
        )  # fmt: skip
    return configs


# -- real sizes ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SizeLimits:
    max_d_model: int
    max_heads: int
    max_layers: int  # per side
    max_vocab: int
    max_seq_len: int
    examples: int


# CI (2-core CPU, float64 reference runs included): one example, large in width and vocabulary but
# few layers and short sequences; `gpu` and `nightly` draw the full real sizes.
REAL_SIZE_LIMITS = {
    "ci": SizeLimits(max_d_model=512, max_heads=8, max_layers=2, max_vocab=32000, max_seq_len=64, examples=1),
    "gpu": SizeLimits(max_d_model=1024, max_heads=16, max_layers=12, max_vocab=32000, max_seq_len=512, examples=4),
    "nightly": SizeLimits(max_d_model=1024, max_heads=16, max_layers=12, max_vocab=32000, max_seq_len=512, examples=20),
}
INITS = ("torch default", "jax default", "shared", "torch default + noise")


def real_size_limits() -> SizeLimits:
    return REAL_SIZE_LIMITS.get(os.environ.get("HYPOTHESIS_PROFILE", "ci"), REAL_SIZE_LIMITS["ci"])


@dataclass(frozen=True)
class RealSizeCase:
    config: ModelConfig
    init: str  # one of INITS
    seed: int
    batch: Batch


@st.composite
def real_size_cases(draw, limits: SizeLimits | None = None) -> RealSizeCase:
    """A model at real sizes (within `limits`), one of the inits, and a batch of up to max_seq_len tokens."""
    limits = limits or real_size_limits()
    heads = draw(st.sampled_from([h for h in (1, 2, 4, 8, 16) if h <= limits.max_heads]))
    head_dim = draw(st.sampled_from([k for k in (16, 32, 64) if heads * k <= limits.max_d_model]))
    d_model = heads * head_dim
    tie = draw(st.sampled_from(TIE_MODES))
    src_vocab = draw(st.integers(16, limits.max_vocab))
    tgt_vocab = src_vocab if tie == "all" else draw(st.integers(16, limits.max_vocab))
    seq = draw(st.integers(1, limits.max_seq_len))
    config = ModelConfig(
        src_vocab_size=src_vocab, tgt_vocab_size=tgt_vocab, d_model=d_model, num_heads=heads,
        d_ff=draw(st.sampled_from((2 * d_model, 4 * d_model))),
        num_encoder_layers=draw(st.integers(1, limits.max_layers)),
        num_decoder_layers=draw(st.integers(1, limits.max_layers)),
        dropout=0.1, attention_dropout=0.1, embedding_dropout=0.1, max_len=max(seq, draw(st.sampled_from((seq, 512)))),
        pad_id=0, bias=draw(st.booleans()), norm_placement=draw(st.sampled_from(NORM_PLACEMENTS)),
        norm_kind=draw(st.sampled_from(NORM_KINDS)), norm_eps=draw(st.sampled_from((1e-5, 1e-6))),
        activation=draw(st.sampled_from(ACTIVATIONS)), final_norms=draw(st.booleans()),
        scale_embeddings=draw(st.booleans()), tie_embeddings=tie, positional=draw(st.sampled_from(POSITIONAL_KINDS)),
    )  # fmt: skip
    B = draw(st.integers(1, 2))
    src_len, tgt_len = draw(st.integers(1, seq)), draw(st.integers(1, seq))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    src = rng.integers(1, src_vocab, (B, src_len))
    tgt = rng.integers(1, tgt_vocab, (B, tgt_len))
    src[:, rng.integers(1, src_len + 1):] = 0  # trailing padding, every row keeps a real first token
    tgt[:, rng.integers(1, tgt_len + 1):] = 0
    return RealSizeCase(config, draw(st.sampled_from(INITS)), draw(st.integers(0, 2**31 - 1)), Batch(src, tgt, tgt))


def large_default_init_case() -> RealSizeCase:
    """The explicit large example every profile runs: base-like width, a 32k vocabulary tied three
    ways, scaled embeddings and torch's default init (N(0, 1) embeddings: logits of order 100)."""
    config = ModelConfig(
        src_vocab_size=32000, tgt_vocab_size=32000, d_model=512, num_heads=8, d_ff=2048, num_encoder_layers=2,
        num_decoder_layers=2, dropout=0.1, attention_dropout=0.1, embedding_dropout=0.1, max_len=512, pad_id=0,
        norm_eps=1e-6, scale_embeddings=True, tie_embeddings="all", positional="sinusoid",
    )  # fmt: skip
    rng = np.random.default_rng(0)
    src, tgt = rng.integers(1, 32000, (2, 48)), rng.integers(1, 32000, (2, 40))
    src[1, 30:] = 0
    tgt[1, 25:] = 0
    return RealSizeCase(config, "torch default", 0, Batch(src, tgt, tgt))
