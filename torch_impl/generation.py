"""Greedy and sampled generation for torch_impl.CausalLM: the rule of shared/sampling.py in torch ops."""

from __future__ import annotations

import numpy as np
import torch

from shared import sampling
from shared.sampling import SamplingConfig


def choose_next(logits: torch.Tensor, u: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """logits (B, V), u (B,) -> next ids (B,) (shared/sampling.choose_next, op for op)."""
    if config.greedy:
        return logits.argmax(dim=-1)  # the first maximum, as numpy
    x = logits.float() / config.temperature  # (B, V)
    if config.top_k:
        kth = torch.sort(x, dim=-1).values[:, -min(config.top_k, x.shape[-1])][:, None]  # (B, 1)
        x = x.masked_fill(x < kth, -torch.inf)
    if config.top_p < 1.0:
        ranked, order = torch.sort(x, dim=-1, descending=True, stable=True)  # best first
        p = torch.softmax(ranked, dim=-1)
        drop_ranked = (p.cumsum(dim=-1) - p) >= config.top_p  # mass ranked strictly before
        drop = torch.zeros_like(drop_ranked).scatter(-1, order, drop_ranked)
        x = x.masked_fill(drop, -torch.inf)
    cdf = torch.softmax(x, dim=-1).cumsum(dim=-1)  # (B, V)
    threshold = (u.float() * cdf[:, -1])[:, None]
    return (cdf <= threshold).sum(dim=-1).clamp(max=x.shape[-1] - 1)


def generate(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray, config: SamplingConfig,
             draws: np.ndarray | None = None) -> np.ndarray:
    """(B, T0) left-padded prompts and their mask -> (B, max_new_tokens) new ids (pad after a stop)."""
    c = model.config
    sampling.check_prompts(ids, mask, c.tgt_vocab_size, c.max_len, config.max_new_tokens)
    device = next(model.parameters()).device

    @torch.no_grad()
    def last_logits(buffer: np.ndarray, buffer_mask: np.ndarray, position: int) -> torch.Tensor:
        logits = model(torch.as_tensor(buffer, device=device), torch.as_tensor(buffer_mask, device=device))
        return logits[:, position]  # (B, V)

    def choose(logits: torch.Tensor, u: np.ndarray) -> np.ndarray:
        return choose_next(logits, torch.as_tensor(u, device=logits.device), config).cpu().numpy()

    was_training = model.training
    model.eval()
    try:
        return sampling.generate(last_logits, choose, ids, mask, config, c.pad_id, draws)
    finally:
        model.train(was_training)
