"""Batched greedy / top-k decoding for the PyTorch model (contract: shared/decoding.py).

The source is encoded once; each step re-runs the decoder on the whole prefix (BOS + tokens so
far) and projects only the last position. No KV cache: the step then reuses the model's own
layers unchanged, which keeps parity with the JAX twin simple; the cost is O(T^2) decoder work,
small next to the output projection for the short sentences this project translates.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from shared.decoding import BOS_ID, EOS_ID, DecodeConfig, banned_ids, check_source_ids, padding_rows
from torch_impl.model import Transformer


def step_logits(model: Transformer, memory: torch.Tensor, src: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """memory (B, S, D), src (B, S), prefix (B, t+1) -> logits (B, V) for the next token.

    Model.decode without projecting every position: the projection (D x V) is most of a step's
    cost, and only the last position is needed.
    """
    y = model.decode_hidden(memory, src, prefix)  # (B, t+1, D)
    return model.project(y[:, -1:, :])[:, 0, :]  # (B, V)


def choose(
    logits: torch.Tensor, config: DecodeConfig, banned: tuple[int, ...], generator: torch.Generator | None
) -> torch.Tensor:
    """logits (B, V) -> next ids (B,): argmax, or a sample among the top k of softmax(logits / temperature)."""
    logits = logits.float()
    logits[:, list(banned)] = -torch.inf
    if config.strategy == "greedy":
        return logits.argmax(dim=-1)  # first maximal index on ties, as jnp.argmax
    values, indices = torch.topk(logits / config.temperature, config.top_k(logits.shape[-1]), dim=-1)  # (B, k)
    picked = torch.multinomial(torch.softmax(values, dim=-1), 1, generator=generator)  # (B, 1)
    return indices.gather(-1, picked)[:, 0]


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """Dropout off while decoding, then the caller's train/eval mode back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def generate(
    model: Transformer,
    src_ids,
    config: DecodeConfig | None = None,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """src_ids (B, S) numpy/torch ints -> generated ids (B, T_out) numpy int32, BOS excluded.

    top_k draws from `generator` (on the model's device; None = torch's global RNG).
    """
    config = config or DecodeConfig()
    model_config = model.config
    steps = config.steps(model_config)
    if isinstance(src_ids, torch.Tensor):
        src_ids = src_ids.detach().cpu().numpy()
    src_np = check_source_ids(src_ids, model_config)
    device = next(model.parameters()).device
    pad, banned = model_config.pad_id, banned_ids(model_config)
    B = src_np.shape[0]
    with torch.inference_mode(), _eval_mode(model):
        src = torch.as_tensor(src_np, dtype=torch.long, device=device)  # (B, S)
        finished = torch.as_tensor(padding_rows(src_np, pad), device=device)  # (B,)
        prefix = torch.full((B, 1), BOS_ID, dtype=torch.long, device=device)  # (B, 1)
        if finished.all():
            return np.zeros((B, 0), dtype=np.int32)
        memory = model.encode(src)  # (B, S, D)
        for _ in range(steps):
            next_ids = choose(step_logits(model, memory, src, prefix), config, banned, generator)  # (B,)
            next_ids = torch.where(finished, torch.full_like(next_ids, pad), next_ids)
            prefix = torch.cat([prefix, next_ids[:, None]], dim=1)  # (B, t+2)
            finished |= next_ids == EOS_ID
            if finished.all():
                break
        return prefix[:, 1:].cpu().numpy().astype(np.int32)  # (B, T_out)


__all__ = ["choose", "generate", "step_logits"]
