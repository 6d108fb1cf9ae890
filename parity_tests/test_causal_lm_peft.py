"""LoRA adapters of causal_lm models against peft.PeftModel over transformers' GPT-2 and Llama:
read what PEFT writes and match its logits in both stacks; write what PEFT reads, byte for byte."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch

import jax_impl
import torch_impl
from jax_impl.lora import adapters_from_tensors, lora_apply
from parity_tests.causal_lm_helpers import (
    assert_agree, hf_logits, hf_logits_unpadded, hf_model, left_padded, our_tensors, torch_logits,
)
from shared.config.model_config import ModelConfig
from shared.checkpoints.hf_adapter import load_hf_adapter, save_hf_adapter
from torch_impl.lora import apply_lora, set_adapter_tensors
from torch_impl.numpy_bridge import to_numpy

TINY = dict(d_model=16, num_heads=4, d_ff=24, num_decoder_layers=2, src_vocab_size=37, tgt_vocab_size=37, max_len=16)
CASES = {
    "gpt2": (ModelConfig.from_preset("gpt2", **TINY, pad_id=0, bos_id=1, eos_id=2), ["c_attn", "c_proj"]),  # c_proj: 2 modules
    "llama": (ModelConfig.from_preset("llama-small", **TINY, num_kv_heads=2), ["q_proj", "v_proj"]),
}


def _f64(tensors: dict) -> dict:
    return {k: v.astype(np.float64) for k, v in tensors.items()}


def _ours(config, tensors, lora, adapter, ids, mask, float64: bool):
    """(torch_impl logits, jax_impl logits) with the adapter."""
    model = torch_impl.from_numpy(config, _f64(tensors) if float64 else tensors).eval()
    wrapped = apply_lora(model, lora)
    set_adapter_tensors(wrapped, adapter)  # PEFT keeps the adapter float32 on a float32 base
    if float64:
        wrapped = wrapped.double()
    with torch.no_grad():
        torch_out = to_numpy(wrapped(torch.as_tensor(ids), torch.as_tensor(mask)))
    with jax.enable_x64(float64):
        params = jax_impl.params_from_state_dict(config, _f64(tensors) if float64 else tensors)
        adapters = adapters_from_tensors(config, lora, _f64(adapter) if float64 else adapter)
        jax_out = np.asarray(lora_apply(jax_impl.build_model(config), params, adapters, lora, jnp.asarray(ids), jnp.asarray(mask)))
    return torch_out, jax_out


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_peft_adapter_over_transformers_gives_its_logits_in_both_stacks(tmp_path, name: str) -> None:
    config, targets = CASES[name]
    base = hf_model(config, seed=5)
    tensors = our_tensors(config, base)
    torch.manual_seed(6)
    reference = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    reference.eval().save_pretrained(tmp_path / "adapter")

    lora, adapter = load_hf_adapter(tmp_path / "adapter", config)
    # every adapter tensor PEFT wrote lands on a module of ours (GPT-2's c_proj is both o_proj and down_proj)
    assert len(adapter) == len(peft.get_peft_model_state_dict(reference)), sorted(adapter)
    ids, mask = left_padded(np.random.default_rng(0), config, [6, 3])
    keep = mask.astype(bool)
    ref32 = hf_logits(reference, ids, mask, torch.float32)[keep]
    ref64 = hf_logits_unpadded(reference, ids, mask, torch.float64, base=reference.get_base_model())[keep]
    t32, j32 = _ours(config, tensors, lora, adapter, ids, mask, False)
    t64, j64 = _ours(config, tensors, lora, adapter, ids, mask, True)
    assert_agree("torch_impl + adapter vs PeftModel", t32[keep], ref32, t64[keep], ref64)
    assert_agree("jax_impl + adapter vs PeftModel", j32[keep], ref32, j64[keep], ref64)
    without = torch_logits(config, tensors, ids, mask, torch.float32)[keep]
    assert np.abs(without - ref32).max() > 1e-2  # the adapter changes the logits: the check has teeth


@pytest.mark.parametrize("name", sorted(CASES))
def test_our_adapter_is_what_peft_reads_byte_for_byte(tmp_path, name: str) -> None:
    config, targets = CASES[name]
    base = hf_model(config, seed=7)
    torch.manual_seed(8)
    written = peft.get_peft_model(base, peft.LoraConfig(r=2, lora_alpha=4, target_modules=targets, init_lora_weights=False))
    written.save_pretrained(tmp_path / "peft")
    lora, adapter = load_hf_adapter(tmp_path / "peft", config)

    save_hf_adapter(tmp_path / "ours", config, lora, adapter)
    again = load_hf_adapter(tmp_path / "ours", config)[1]
    assert {k: v.tobytes() for k, v in again.items()} == {k: v.tobytes() for k, v in adapter.items()}
    loaded = peft.PeftModel.from_pretrained(hf_model(config, seed=7), tmp_path / "ours")
    theirs = {k: to_numpy(v) for k, v in peft.get_peft_model_state_dict(loaded).items()}
    original = {k: to_numpy(v) for k, v in peft.get_peft_model_state_dict(written).items()}
    assert theirs.keys() == original.keys()
    assert all(theirs[k].tobytes() == original[k].tobytes() for k in theirs)
