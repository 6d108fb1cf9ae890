"""Acceptance case: the book's own chapter-5 LoRA adapter on a flan-t5-base-shaped model.

../shared/data/book-ch5/flan-t5-base_lora (PEFT, r 16, alpha 32, targets q and v, bf16 tensors on
HF's module names) is applied to a random model of flan-t5-base's real shapes (248M parameters):
logits of torch_impl and jax_impl against transformers + peft.PeftModel.from_pretrained, and the
merged weights against PEFT's merge_and_unload, each in float32 under the scale-aware bound with
the float64 formula check. Skipped when the book's data is not beside the repository.
"""

from __future__ import annotations

import copy
import gc
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch

import jax_impl
import torch_impl
from jax_impl import lora as jax_lora
from parity_tests.t5_reference import check, float64_reference_norms, hf_model, random_tensors
from shared.data.data_dirs import CORPUS_ENV, search_dirs
from shared.families.t5 import key_table
from shared.config.presets import PRESETS
from torch_impl import lora as torch_lora
from torch_impl.numpy_bridge import to_numpy

# The book's chapter-5 folder (TweetSum and the adapter), found by the corpus directory rule (data_dirs.py).
BOOK_ADAPTER = next((d / "flan-t5-base_lora" for d in search_dirs("tweetsum") if (d / "flan-t5-base_lora").is_dir()),
                    Path("flan-t5-base_lora"))  # fmt: skip
CONFIG = PRESETS["flan-t5-base"].replace(dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0)
SRC = np.array([[100, 2000, 30000, 5, 1, 0], [7, 8, 9, 10, 11, 1]])  # the first row padded
TGT = np.array([[0, 42, 43, 1], [0, 5, 6, 7]])


def adapted_keys() -> list[str]:
    return [k for k in key_table(CONFIG) if k.endswith(("q_proj.weight", "v_proj.weight"))]


def peft_reference(tensors):
    """(logits f32, logits f64, {adapted key: merged weight} f32, f64) from transformers + PEFT."""
    model = peft.PeftModel.from_pretrained(hf_model(CONFIG, tensors), BOOK_ADAPTER).eval()
    table = key_table(CONFIG)

    def run():
        ids = torch.as_tensor(SRC)
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=(ids != 0).long(), decoder_input_ids=torch.as_tensor(TGT)).logits.numpy()

    def merged(peft_model):
        state = peft_model.merge_and_unload().state_dict()
        return {k: to_numpy(state[table[k]]).copy() for k in adapted_keys()}

    logits32 = run()
    float32_model = model
    model = copy.deepcopy(model).double()
    with float64_reference_norms():
        logits64 = run()
    merged64 = merged(model)
    del model
    gc.collect()
    return logits32, logits64, merged(float32_model), merged64


def torch_ours(tensors, dtype):
    model = torch_impl.from_numpy(CONFIG, {k: v.copy() if k in adapted_keys() else v for k, v in tensors.items()})
    wrapped = torch_lora.load_adapter(model.to(dtype), BOOK_ADAPTER).to(dtype).eval()
    with torch.no_grad():
        logits = wrapped(torch.as_tensor(SRC), torch.as_tensor(TGT)).numpy()
    state = torch_lora.merged_model(wrapped).state_dict()
    return logits, {k: to_numpy(state[k]).copy() for k in adapted_keys()}


def jax_ours(tensors, dtype):
    def run():
        params = jax_impl.params_from_state_dict(CONFIG, {k: v.astype(dtype) for k, v in tensors.items()})
        lora, adapters = jax_lora.load_adapter(BOOK_ADAPTER, CONFIG)
        adapters = jax.tree_util.tree_map(lambda a: a.astype(dtype), adapters)
        logits = jax_lora.lora_apply(jax_impl.build_model(CONFIG), params, adapters, lora, jnp.asarray(SRC), jnp.asarray(TGT))
        merged = jax_impl.state_dict_from_params(CONFIG, jax_lora.merge(params, adapters, lora))
        return np.asarray(logits), {k: np.array(merged[k]) for k in adapted_keys()}

    if dtype == np.float64:
        with jax.enable_x64(True):
            return run()
    return run()


@pytest.mark.skipif(not BOOK_ADAPTER.is_dir(), reason=f"needs the book's chapter-5 folder: set {CORPUS_ENV['tweetsum']}=DIR")
def test_book_adapter_on_flan_t5_base_matches_peft_in_both_stacks():
    tensors = random_tensors(CONFIG, seed=0)
    ref32, ref64, ref_merged32, ref_merged64 = peft_reference(tensors)
    gc.collect()
    t32, t_merged32 = torch_ours(tensors, torch.float32)
    t64, t_merged64 = torch_ours(tensors, torch.float64)
    gc.collect()
    check("torch_impl + book adapter vs PEFT, logits", t32, ref32, t64, ref64)
    for key in adapted_keys():
        check(f"torch_impl merge vs merge_and_unload: {key}", t_merged32[key], ref_merged32[key], t_merged64[key], ref_merged64[key])
    del t_merged32, t_merged64
    j32, j_merged32 = jax_ours(tensors, np.float32)
    j64, j_merged64 = jax_ours(tensors, np.float64)
    check("jax_impl + book adapter vs PEFT, logits", j32, ref32, j64, ref64)
    for key in adapted_keys():
        check(f"jax_impl merge vs merge_and_unload: {key}", j_merged32[key], ref_merged32[key], j_merged64[key], ref_merged64[key])
    # the adapter changes the model: a test that ignored it would not pass
    base = torch_impl.from_numpy(CONFIG, tensors).eval()
    with torch.no_grad():
        plain = base(torch.as_tensor(SRC), torch.as_tensor(TGT)).numpy()
    assert np.abs(plain - ref32).max() > 100 * np.abs(t32 - ref32).max()
