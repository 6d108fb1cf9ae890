"""torch_impl/attention.py serves every family: the fused kernel (F.scaled_dot_product_attention)
computes the math kernel's logits within the scale-aware bound for the book Transformer, T5
(unscaled, relative bias), GPT-2 (fused c_attn, learned, tied) and Llama (rotary, GQA, untied),
with padding; and bf16-mixed training steps (full and LoRA) run for T5 and causal LMs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import torch_impl
from parity_tests.helpers import assert_all_close
from parity_tests.test_torch_generate import FAMILIES, inputs, peaked
from shared.data.batching import Batch
from shared.checkpoints.init import initial_tensors
from shared.checkpoints.lora_config import LoRAConfig
from shared.training.train_config import TrainConfig
from torch_impl.attention import KVCache
from torch_impl.finetune import LoRATorchBackend
from torch_impl.families.transformer import set_attention_kernel
from torch_impl.numpy_bridge import to_numpy
from torch_impl.training import TorchBackend
from shared.families import family_of


def logits(config, tensors, kernel: str, ids, mask, dtype) -> np.ndarray:
    model = set_attention_kernel(torch_impl.from_numpy(config, {k: v.astype(dtype) for k, v in tensors.items()}), kernel)
    model.eval()
    ids_t, mask_t = torch.as_tensor(ids), torch.as_tensor(mask)
    with torch.no_grad():
        if family_of(config).decoder_only:
            out = model(ids_t, mask_t)
        else:  # the decoder reads the source shifted by one: any target ids do; the source mask is its non-pad ids
            out = model(ids_t, ids_t[:, :5].clamp(min=1))
    return to_numpy(out)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", [0, 1])
def test_fused_attention_matches_math_for_every_family(family: str, seed: int, parity_env) -> None:
    config = dataclasses.replace(FAMILIES[family], dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0)
    tensors = peaked(initial_tensors(config, seed))
    ids, mask = inputs(config, seed)
    runs = {(kernel, dtype): logits(config, tensors, kernel, ids, mask, dtype)
            for kernel in ("math", "fused") for dtype in (np.float32, np.float64)}
    if family_of(config).decoder_only:  # pad positions' outputs are unused (and differ by design)
        runs = {key: value[mask] for key, value in runs.items()}
    quad = (runs["math", np.float32], runs["fused", np.float32], runs["math", np.float64], runs["fused", np.float64])
    assert_all_close(f"fused vs math attention, logits (torch {family})", {"logits": quad}, "float32", f"seed={seed}")


def test_kv_cache_reorder_moves_only_the_filled_slots() -> None:
    cache = KVCache(rows=3, heads=1, slots=4, head_dim=2, dtype=torch.float32, device="cpu")
    k = torch.arange(3 * 2 * 2, dtype=torch.float32).view(3, 1, 2, 2)
    cache.write(k, -k, 0)
    cache.reorder(torch.tensor([2, 2, 0]), filled=2)
    assert torch.equal(cache.k[:, :, :2], k[[2, 2, 0]]) and torch.equal(cache.v[:, :, :2], -k[[2, 2, 0]])
    keys, _ = cache.write(k[:, :, :1] + 100, k[:, :, :1], 2)
    assert keys.shape == (3, 1, 3, 2) and torch.equal(keys[:, :, 2], k[:, :, 0] + 100)


# -- bf16-mixed training steps -------------------------------------------------------------------------
def train_config(**changes) -> TrainConfig:
    return TrainConfig(
        model_overrides={}, vocab_size=61, batch_size=3, max_len=16, total_steps=2, optimizer="adamw", lr=1e-3,
        clip_norm=1.0, schedule="constant", warmup_steps=0, seed=0, device="cpu", precision="bf16-mixed",
        log_every=1, bleu_sentences=0, keep_last=None, **changes,
    )


def batch(config) -> Batch:
    rng = np.random.default_rng(0)
    src = rng.integers(3, config.tgt_vocab_size, (3, 6))
    tgt = rng.integers(3, config.tgt_vocab_size, (3, 6))
    tgt[1, 4:] = config.pad_id
    return Batch(src=src, tgt_in=tgt[:, :-1], tgt_out=tgt[:, 1:], indices=np.arange(3),
                 num_tokens=int((tgt[:, 1:] != config.pad_id).sum()))


@pytest.mark.parametrize("family", ["t5", "gpt2", "llama"])
@pytest.mark.parametrize("attention", ["math", "fused"])
@pytest.mark.parametrize("lora", [False, True])
def test_bf16_mixed_training_steps_run_for_t5_and_causal_lms(family: str, attention: str, lora: bool) -> None:
    config = FAMILIES[family]
    tensors = initial_tensors(config, 0)
    if lora:
        targets = ("c_attn", "o_proj") if config.fused_qkv else ("q_proj", "v_proj")
        backend = LoRATorchBackend(config, train_config(attention=attention), 2, tensors, LoRAConfig(r=2, alpha=4, target_modules=targets))
    else:
        backend = TorchBackend(config, train_config(attention=attention), 2, tensors)
    assert backend.mixed
    before = {k: v.copy() for k, v in backend.model_tensors().items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the logits are bf16: autocast reached the matmuls
        assert backend._logits(backend.model, *[torch.as_tensor(a) for a in (batch(config).src, batch(config).tgt_in)]).dtype == torch.bfloat16
    losses = [float(backend.train_step(batch(config))["loss"]) for _ in range(2)]
    after = backend.model_tensors()
    assert all(np.isfinite(losses))
    assert all(v.dtype == np.float32 for v in after.values())  # float32 masters
    assert any(not np.array_equal(before[k], after[k]) for k in after)  # the step updated the weights
