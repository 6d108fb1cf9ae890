"""Hypothesis strategies: small ModelConfigs covering every option, and token-id batches for them.

Sizes stay tiny (D <= 16, V <= 17, lengths <= 10) because every new shape costs an XLA compile
on the JAX side; the options, not the sizes, are what the parity properties must cover.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shared.config import ACTIVATIONS, NORM_PLACEMENTS, ModelConfig
from shared.families.transformer import OPTIONS

NORM_KINDS, POSITIONAL_KINDS, TIE_MODES = OPTIONS["norm_kind"], OPTIONS["positional"], OPTIONS["tie_embeddings"]

MAX_SEQ_LEN = 10  # longest drawn source/target length
# 1 and 2 layers usually; 0 (a bare embedding -> output model, allowed by the config) rarely.
LAYER_COUNTS = st.sampled_from((1, 2, 1, 2, 1, 0))
DROPOUT_RATES = st.sampled_from((0.0, 0.1, 0.3))


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
