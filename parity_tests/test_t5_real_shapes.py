"""Both stacks against transformers at the presets' real shapes (t5-small, flan-t5-small, flan-t5-base).

Not in CI (about a minute and a few GB per preset on the 2-core machine): run with
TWINFORMER_REAL_SHAPES=1. CI covers the real flan-t5-base shapes in test_t5_book_adapter.py and the
family's options at tiny widths in test_t5_parity.py.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from parity_tests.t5_reference import check, hf_logits, hf_model, jax_logits, random_tensors, torch_pair
from shared.config.presets import PRESETS

pytestmark = pytest.mark.skipif(os.environ.get("TWINFORMER_REAL_SHAPES") != "1", reason="set TWINFORMER_REAL_SHAPES=1")


@pytest.mark.parametrize("name", ["t5-small", "flan-t5-small", "flan-t5-base"])
def test_real_shapes_match_transformers_with_padding(name):
    config = PRESETS[name].replace(dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0)
    tensors = random_tensors(config, seed=1)
    src = np.array([[37, 1000, 31999, 5, 1, 0, 0], [8, 9, 10, 11, 12, 13, 1]])
    tgt = np.array([[0, 42, 43, 1, 0], [0, 5, 6, 7, 8]])
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
