"""Hypothesis strategies for the T5 family: every option of shared/families/t5.py, tiny sizes."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from parity_tests.strategies import Batch
from shared.config.model_config import ModelConfig

MAX_LEN = 9


@st.composite
def t5_configs(draw) -> ModelConfig:
    """v1.0 and v1.1 shapes: ReLU / (gated) tanh-GELU / exact GELU, tied + rescaled or own output
    layer, a head size independent of d_model (as flan-t5-small), small bucket tables whose log
    range the lengths reach, 1-2 layers per stack (the shared position bias needs >= 2 to matter)."""
    gated = draw(st.booleans())
    buckets = draw(st.sampled_from((4, 6, 8, 32)))
    vocab = draw(st.integers(5, 17))
    return ModelConfig(
        family="t5",
        src_vocab_size=vocab,
        tgt_vocab_size=vocab,
        d_model=draw(st.sampled_from((4, 6, 8))),
        num_heads=draw(st.sampled_from((1, 2, 3))),
        head_size=draw(st.sampled_from((2, 3, 4))),
        d_ff=draw(st.sampled_from((4, 6))),
        num_encoder_layers=draw(st.integers(1, 2)),
        num_decoder_layers=draw(st.integers(1, 2)),
        dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0,
        max_len=16, pad_id=0, bos_id=0, eos_id=1, bias=False,
        norm_placement="pre", norm_kind="rms", norm_eps=draw(st.sampled_from((1e-6, 1e-3))),
        activation=draw(st.sampled_from(("relu", "gelu_tanh") if gated else ("relu", "gelu", "gelu_tanh"))),
        gated_ffn=gated, final_norms=True, scale_embeddings=False,
        tie_embeddings=draw(st.sampled_from(("all", "src_tgt"))),
        positional="relative",
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=draw(st.integers(buckets // 2 + 1, buckets // 2 + 8)),
    )


@st.composite
def t5_batches(draw, config: ModelConfig, padded_rows: bool = True) -> Batch:
    """Sources padded at the end (sometimes a fully padded row); decoder inputs start with the pad id
    (T5's start token) and are padded at the end too, as shift_right makes them."""
    # several tokens on each side (row 0 keeps >= 3 real ones): relative positions other than 0 are
    # exercised even by the shortest (derandomized CI) draw, so a bucket bug cannot hide there
    B, S, T = draw(st.integers(1, 3)), draw(st.integers(3, MAX_LEN)), draw(st.integers(3, MAX_LEN))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    V = config.tgt_vocab_size
    src = rng.integers(1, V, (B, S))
    src_lengths = [draw(st.integers(3 if row == 0 else (0 if padded_rows else 1), S)) for row in range(B)]
    for row, length in enumerate(src_lengths):
        src[row, length:] = config.pad_id
    tgt_out = rng.integers(1, V, (B, T))
    for row in range(B):
        tgt_out[row, draw(st.integers(3 if row == 0 else 1, T)):] = config.pad_id
    tgt_in = np.concatenate([np.full((B, 1), config.bos_id), tgt_out[:, :-1]], axis=1)
    return Batch(src=src, tgt_in=tgt_in, tgt_out=tgt_out)
