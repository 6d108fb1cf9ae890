"""Batched greedy / top-k / beam decoding for the PyTorch model (contract: shared/decoding.py).

The algorithms see the model only through its incremental decoder (torch_impl/incremental.py:
start / step / reorder): with the key/value cache (DecodeConfig.use_cache, the default) each
step runs the decoder for one position; without it each step re-runs the decoder over the whole
prefix. Both give the same tokens (parity_tests/test_kv_cache.py).

Beam search follows the algorithm spelled out in shared/decoding.py step for step, with the same
shapes and tie rules as the jitted JAX twin (a stable sort stands in for lax.top_k, whose equal
values come lower index first), so both stacks pick the same tokens.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from shared.decoding import (
    DecodeConfig,
    banned_ids,
    check_source_ids,
    length_normalizers,
    padding_rows,
    trim_padding_columns,
)
from torch_impl.incremental import incremental_decoder


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


def top_k_stable(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., M) -> the k largest (values, indices), best first, equal values by lower index.

    torch.topk documents no order for ties; a stable descending sort does (lax.top_k's rule). A
    full sort of the K * V beam candidates is most of a CPU beam step, so torch.topk picks the
    k first: when no element outside them equals the k-th value, they are exactly the stable
    sort's first k (checked: the (k+1)-th largest is smaller), and only they are put in stable order. Otherwise (ties at the cut) the full
    stable sort decides.
    """
    if k < values.shape[-1]:
        top = torch.topk(values, k + 1, dim=-1)  # (..., k + 1), sorted descending
        # The first k are the only elements >= the k-th largest unless the (k+1)-th equals it.
        if bool((top.values[..., k] < top.values[..., k - 1]).all()):
            chosen = torch.sort(top.indices[..., :k], dim=-1).values  # (..., k), ascending index
            ordered, order = torch.sort(values.gather(-1, chosen), dim=-1, descending=True, stable=True)
            return ordered, chosen.gather(-1, order)
    values, indices = torch.sort(values, dim=-1, descending=True, stable=True)
    return values[..., :k], indices[..., :k]


def merge_pool(
    pool_rows: torch.Tensor, pool_norm: torch.Tensor, offer_rows: torch.Tensor, offer_norm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the K best of pool (B, K, L) + offers (B, K, L) by normalised score (B, K each).

    The pool comes first in the concatenation, so on equal scores the earlier hypothesis stays.
    """
    K = pool_norm.shape[1]
    norm, keep = top_k_stable(torch.cat([pool_norm, offer_norm], dim=1), K)  # (B, K)
    rows = torch.cat([pool_rows, offer_rows], dim=1)  # (B, 2K, L)
    return rows.gather(1, keep[:, :, None].expand(-1, -1, rows.shape[2])), norm  # (B, K, L), (B, K)


def beam_search(stepper, src: torch.Tensor, finished: torch.Tensor, config: DecodeConfig, steps: int, vocab: int, pad: int,
                banned: list[int], bos_id: int, eos_id: int) -> np.ndarray:
    """src (B, S), finished (B,) -> each row's best hypothesis (B, N) numpy, PAD-filled."""
    B, K, V, device = src.shape[0], config.num_beams, vocab, src.device
    norms = torch.as_tensor(length_normalizers(steps, config.length_penalty), device=device)  # (N + 1,)
    neg_inf = torch.tensor(-torch.inf, device=device)
    cache = stepper.start(src, steps, copies=K)  # B*K rows, row b*K + k is beam k of row b
    prefix = torch.full((B * K, 1), bos_id, dtype=torch.long, device=device)  # (B*K, 1)
    scores = torch.full((B, K), -torch.inf, device=device)
    scores[:, 0] = 0.0  # one live beam: K copies of BOS would fill the first step with duplicates
    pool_rows = torch.full((B, K, steps + 1), pad, dtype=torch.long, device=device)  # (B, K, N + 1)
    pool_norm = torch.full((B, K), -torch.inf, device=device)  # (B, K), -inf = empty, best first
    done = finished.clone()
    ranks = torch.arange(2 * K, device=device)
    first_beam = torch.arange(B, device=device)[:, None] * K  # (B, 1): row b's beams start at b*K
    for t in range(steps):
        logits, cache = stepper.step(cache, prefix[:, -1], t)  # (B*K, V)
        logits = logits.float()
        logits[:, banned] = -torch.inf
        logp = torch.log_softmax(logits, dim=-1).view(B, K, V)
        values, flat = top_k_stable((scores[:, :, None] + logp).view(B, K * V), 2 * K)  # (B, 2K)
        parent, token = flat // V, flat % V
        rows = prefix.view(B, K, t + 1).gather(1, parent[:, :, None].expand(-1, -1, t + 1))  # (B, 2K, t+1)
        rows = torch.cat([rows, token[:, :, None]], dim=2)  # (B, 2K, t+2)
        is_eos = token == eos_id
        # EOS candidates ranked K or lower are dropped (so one beam stops where greedy does).
        offered = is_eos[:, :K] & (values[:, :K] > -torch.inf) & ~done[:, None]  # (B, K)
        offer_norm = torch.where(offered, values[:, :K] / norms[t + 1], neg_inf)
        offer_rows = torch.nn.functional.pad(rows[:, :K], (0, steps - t - 1), value=pad)  # (B, K, N+1)
        pool_rows, pool_norm = merge_pool(pool_rows, pool_norm, offer_rows, offer_norm)
        # The first K non-EOS candidates in rank order: sort keys rank (+ 2K for EOS) are unique.
        alive = torch.argsort(ranks + 2 * K * is_eos, dim=1)[:, :K]  # (B, K)
        scores = values.gather(1, alive)
        prefix = rows.gather(1, alive[:, :, None].expand(-1, -1, t + 2)).view(B * K, t + 2)
        worst = pool_norm[:, K - 1]
        done |= (worst > -torch.inf) & (scores[:, 0] / norms[t + 1] <= worst)
        if done.all():
            break
        cache = stepper.reorder(cache, (first_beam + parent.gather(1, alive)).view(B * K))
    else:  # N steps run: rows not done compete with their unfinished beams, normalised at length N
        offered = (scores > -torch.inf) & ~done[:, None]
        alive_norm = torch.where(offered, scores / norms[steps], neg_inf)
        pool_rows, pool_norm = merge_pool(pool_rows, pool_norm, prefix.view(B, K, steps + 1), alive_norm)
    return pool_rows[:, 0, 1:].cpu().numpy()  # (B, N); padding rows were never offered anything: PAD


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
    model: torch.nn.Module,
    src_ids,
    config: DecodeConfig | None = None,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """src_ids (B, S) numpy/torch ints -> generated ids (B, T_out) numpy int32, BOS excluded.

    top_k draws from `generator` (on the model's device; None = torch's global RNG); beam ignores it.
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
    stepper = incremental_decoder(model, config.use_cache)
    with torch.inference_mode(), _eval_mode(model):
        src = torch.as_tensor(src_np, dtype=torch.long, device=device)  # (B, S)
        finished = torch.as_tensor(padding_rows(src_np, pad), device=device)  # (B,)
        if finished.all():
            return np.zeros((B, 0), dtype=np.int32)
        if config.strategy == "beam":
            best = beam_search(stepper, src, finished, config, steps, model_config.tgt_vocab_size, pad, list(banned),
                               model_config.bos_id, model_config.eos_id)
            return trim_padding_columns(best, pad).astype(np.int32)  # (B, T_out)
        cache = stepper.start(src, steps)
        tokens = torch.full((B,), model_config.bos_id, dtype=torch.long, device=device)  # (B,): fed at position t
        generated = []
        for t in range(steps):
            logits, cache = stepper.step(cache, tokens, t)  # (B, V)
            tokens = torch.where(finished, pad, choose(logits, config, banned, generator))  # (B,)
            generated.append(tokens)
            finished |= tokens == model_config.eos_id
            if finished.all():
                break
        return torch.stack(generated, dim=1).cpu().numpy().astype(np.int32)  # (B, T_out)


__all__ = ["beam_search", "choose", "generate", "merge_pool", "top_k_stable"]
