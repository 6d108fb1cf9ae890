"""The top-p nucleus at its exact boundary, against transformers' TopPLogitsWarper.

Four equal logits give probabilities of exactly 1/4, so the mass ranked before each token is
exactly 0, 1/4, 1/2, 3/4: at top_p = 1/2 the nucleus is two tokens (HF removes tokens whose
ascending cumulative mass is <= 1 - top_p; ours drops a token when the mass before it is >= top_p).
A `>` for `>=` keeps three. Checked for the shared reference rule and both stacks' samplers.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from shared.decoding import generation

LOGITS = np.zeros((1, 4), dtype=np.float32)  # p = 1/4 each, exactly
TOP_PS = (0.25, 0.5, 0.75)
U = np.linspace(0.0, 0.999, 64, dtype=np.float32)  # inverse-CDF draws covering the whole kept mass


def hf_nucleus_size(top_p: float) -> int:
    warped = transformers.TopPLogitsWarper(top_p=top_p)(None, torch.from_numpy(LOGITS))
    return int(torch.isfinite(warped).sum())


def kept(choose) -> int:
    """How many distinct tokens `choose(logits, u)` returns over U."""
    return len({int(choose(LOGITS, np.array([u], dtype=np.float32))[0]) for u in U})


@pytest.mark.parametrize("top_p", TOP_PS)
def test_reference_rule_keeps_hfs_nucleus_at_the_boundary(top_p: float) -> None:
    expected = hf_nucleus_size(top_p)
    assert expected == round(top_p * 4)  # HF itself: the smallest nucleus reaching top_p
    gen = generation.GenerationConfig(do_sample=True, top_p=top_p)
    assert kept(lambda x, u: generation.choose_next(x, u, gen)) == expected, "shared/decoding/generation.py"


@pytest.mark.parametrize("top_p", TOP_PS)
def test_both_stacks_keep_hfs_nucleus_at_the_boundary(top_p: float) -> None:
    from jax_impl import generate as jax_generation
    from torch_impl import generate as torch_generation

    config = generation.GenerationConfig(do_sample=True, top_p=top_p)
    expected = hf_nucleus_size(top_p)
    assert kept(lambda x, u: torch_generation.choose_next(torch.from_numpy(x), torch.from_numpy(u), config).numpy()) == expected
    assert kept(lambda x, u: np.asarray(jax_generation.choose_next(jnp.asarray(x), jnp.asarray(u), config))) == expected
