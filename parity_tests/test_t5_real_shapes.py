"""Both stacks against transformers at the presets' real shapes (t5-small, flan-t5-small, flan-t5-base).

The full presets are not in CI (about a minute and a few GB per preset on the 2-core machine): run
them with TWINFORMER_REAL_SHAPES=1. CI runs the same check on each preset's real widths (d_model,
d_ff, heads, d_kv, gated or not, relative-position buckets) with one layer per side and a 2048-token
vocabulary, in a few seconds (#18: "run a reduced-size version of each in CI"). CI also covers the
real flan-t5-base shapes in test_t5_book_adapter.py and the family's options at tiny widths in
test_t5_parity.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from parity_tests.t5_reference import check, hf_logits, hf_model, jax_logits, random_tensors, torch_pair
from shared.config.presets import PRESETS

PRESET_NAMES = ["t5-small", "flan-t5-small", "flan-t5-base"]
FULL = os.environ.get("TWINFORMER_REAL_SHAPES") == "1"
REDUCED_VOCAB = 2048
SRC = np.array([[37, 1000, 31999, 5, 1, 0, 0], [8, 9, 10, 11, 12, 13, 1]])
TGT = np.array([[0, 42, 43, 1, 0], [0, 5, 6, 7, 8]])


def reduced(config):
    """The preset's widths with one layer per side and a smaller vocabulary: the same code path in seconds."""
    return config.replace(num_encoder_layers=1, num_decoder_layers=1, src_vocab_size=REDUCED_VOCAB,
                          tgt_vocab_size=REDUCED_VOCAB)  # fmt: skip


def check_against_transformers(name: str, config, src: np.ndarray, tgt: np.ndarray) -> None:
    tensors = random_tensors(config, seed=1)
    reference = hf_model(config, tensors)
    ref32 = hf_logits(reference, src, tgt, config.pad_id)
    ref64 = hf_logits(reference.double(), src, tgt, config.pad_id)
    del reference
    low, high = torch_pair(config, tensors)
    with torch.no_grad():
        check(f"{name}: torch_impl vs transformers", low(torch.as_tensor(src), torch.as_tensor(tgt)).numpy(), ref32,
              high(torch.as_tensor(src), torch.as_tensor(tgt)).numpy(), ref64)
    del low, high
    ratio = check(f"{name}: jax_impl vs transformers", jax_logits(config, tensors, src, tgt), ref32,
                  jax_logits(config, tensors, src, tgt, np.float64), ref64)
    print(f"{name}: jax bound ratio {ratio:.3f}")


def _preset(name: str):
    return PRESETS[name].replace(dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_reduced_real_shapes_match_transformers_with_padding(name):
    config = reduced(_preset(name))
    assert (config.d_model, config.d_ff, config.num_heads) == (PRESETS[name].d_model, PRESETS[name].d_ff, PRESETS[name].num_heads)
    check_against_transformers(f"{name} (1 layer per side)", config, SRC % REDUCED_VOCAB, TGT)


@pytest.mark.skipif(not FULL, reason="full presets, about a minute each: set TWINFORMER_REAL_SHAPES=1 (CI runs the reduced ones)")
@pytest.mark.parametrize("name", PRESET_NAMES)
def test_real_shapes_match_transformers_with_padding(name):
    check_against_transformers(name, _preset(name), SRC, TGT)
