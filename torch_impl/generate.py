"""One generation loop for every torch_impl family (contract: shared/decoding/generation.py).

Greedy search, sampling (temperature, top-k, top-p: shared.decoding.generation.choose_next op for op, on
the shared uniforms) and beam search, for encoder-decoders and decoder-only models alike: the
loop reaches the model only through its incremental decoder (torch_impl/incremental.py), with the
key/value cache (GenerationConfig.use_cache) or the uncached reference re-running the prefix.

Beam search follows the algorithm spelled out in shared/decoding/search.py's docstring step for step,
with the same shapes and tie rules as the jitted JAX twin (a stable sort stands in for lax.top_k,
whose equal values come lower index first), so both stacks pick the same tokens.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch

from shared.decoding.generation import GenerationConfig, length_normalizers, uniforms
from shared.decoding.inputs import check_prompts, check_source_ids
from torch_impl.incremental import incremental_decoder


def choose_next(logits: torch.Tensor, u: torch.Tensor, config: GenerationConfig, banned: tuple[int, ...] = ()
                ) -> torch.Tensor:
    """logits (B, V), u (B,) -> next ids (B,): shared.decoding.generation.choose_next in torch ops, op for op."""
    x = logits.float()  # (B, V): the logits themselves when float32, never written in place
    if banned:
        x = x.index_fill(-1, torch.as_tensor(banned, device=x.device), -torch.inf)
    if not config.do_sample:
        return x.argmax(dim=-1)  # the first maximum, as numpy
    x = x / config.temperature  # (B, V), float32
    if config.top_k:
        kth = torch.sort(x, dim=-1).values[:, -min(config.top_k, x.shape[-1])][:, None]  # (B, 1)
        x = x.masked_fill(x < kth, -torch.inf)
    if config.top_p < 1.0:
        ranked, order = torch.sort(x, dim=-1, descending=True, stable=True)  # best first
        p = softmax(ranked)
        drop_ranked = (p.cumsum(dim=-1) - p) >= config.top_p  # mass ranked strictly before each token
        drop = torch.zeros_like(drop_ranked).scatter(-1, order, drop_ranked)
        x = x.masked_fill(drop, -torch.inf)
    cdf = softmax(x).cumsum(dim=-1)  # (B, V)
    threshold = (u.float() * cdf[:, -1])[:, None]
    return (cdf <= threshold).sum(dim=-1).clamp(max=x.shape[-1] - 1)


def softmax(x: torch.Tensor) -> torch.Tensor:
    """shared.decoding.generation.softmax's ops (exp of x - max, over the sum), not torch's fused kernel."""
    shifted = torch.exp(x - x.max(dim=-1, keepdim=True).values)
    return shifted / shifted.sum(dim=-1, keepdim=True)


def top_k_stable(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., M) -> the k largest (values, indices), best first, equal values by lower index.

    torch.topk documents no order for ties; a stable descending sort does (lax.top_k's rule). A
    full sort of the K * V beam candidates is most of a CPU beam step, so torch.topk picks k + 1
    first: when the (k+1)-th is smaller than the k-th, the first k are exactly the stable sort's
    first k, and only they are put in stable order. Otherwise (ties at the cut) the full stable
    sort decides.
    """
    if k < values.shape[-1]:
        top = torch.topk(values, k + 1, dim=-1)  # (..., k + 1), sorted descending
        if bool((top.values[..., k] < top.values[..., k - 1]).all()):
            chosen = torch.sort(top.indices[..., :k], dim=-1).values  # (..., k), ascending index
            ordered, order = torch.sort(values.gather(-1, chosen), dim=-1, descending=True, stable=True)
            return ordered, chosen.gather(-1, order)
    values, indices = torch.sort(values, dim=-1, descending=True, stable=True)
    return values[..., :k], indices[..., :k]


def top_k_stable_over_rows(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """values (B, K, V) -> top_k_stable(values.view(B, K * V), k): indices into the K * V values.

    A beam step picks 2K of K * V = 128k candidates, and one torch.topk over all of them costs
    about 2 ms on a one-thread CPU, as much as a layer. Each row's own k + 1 best come first (a
    quarter of that), then the k among those K * (k + 1). Exact: an element of the overall best k
    has fewer than k larger or equal elements overall, so also in its row, and is among its row's
    k + 1 best; so is one element of the (k+1)-th value. The candidates are kept in flat-index
    order, so equal values still rank by lower index; a tie at the cut takes the full path.
    """
    B, K, V = values.shape
    flat = values.reshape(B, K * V)
    if k + 1 >= V:
        return top_k_stable(flat, k)
    part = torch.topk(values, k + 1, dim=-1).indices  # (B, K, k + 1)
    offsets = torch.arange(K, device=values.device)[:, None] * V  # (K, 1): row j's values start at j*V
    index = torch.sort((part + offsets).view(B, -1), dim=-1).values  # (B, K(k+1)), flat-index order
    candidates = flat.gather(-1, index)
    top = torch.topk(candidates, k + 1, dim=-1).values  # (B, k + 1)
    if not bool((top[..., k] < top[..., k - 1]).all()):
        return top_k_stable(flat, k)
    ordered, position = top_k_stable(candidates, k)
    return ordered, index.gather(-1, position)


def merge_pool(pool: tuple[torch.Tensor, torch.Tensor, torch.Tensor], offer: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the K best of pool + offers, each (rows (B, K, N+1), normalised score (B, K), length (B, K)).

    The pool comes first in the concatenation, so on equal scores the earlier hypothesis stays.
    """
    K = pool[1].shape[1]
    norm, keep = top_k_stable(torch.cat([pool[1], offer[1]], dim=1), K)  # (B, K)
    rows = torch.cat([pool[0], offer[0]], dim=1)  # (B, 2K, N+1)
    rows = rows.gather(1, keep[:, :, None].expand(-1, -1, rows.shape[2]))
    return rows, norm, torch.cat([pool[2], offer[2]], dim=1).gather(1, keep)


def beam_search(decoder, ids, mask, finished, config: GenerationConfig, steps: int, pad: int, stop: torch.Tensor
                ) -> np.ndarray:
    """ids, mask (B, L), finished (B,) -> each row's best hypothesis (B, T_out) numpy, pad after its end."""
    B, K, device = ids.shape[0], config.num_beams, ids.device
    norms = torch.as_tensor(length_normalizers(steps, config.length_penalty), device=device)  # (N + 1,)
    neg_inf = torch.tensor(-torch.inf, device=device)
    cache = decoder.start(ids, mask, steps, K)  # B*K rows, row b*K + k is beam k of row b
    prefix = decoder.first_tokens(ids, mask).repeat_interleave(K)[:, None]  # (B*K, 1)
    scores = torch.full((B, K), -torch.inf, device=device)
    scores[:, 0] = 0.0  # one live beam: K copies of the start would fill the first step with duplicates
    pool = (torch.full((B, K, steps + 1), pad, dtype=torch.long, device=device),  # (B, K, N + 1)
            torch.full((B, K), -torch.inf, device=device),  # (B, K), -inf = empty, best first
            torch.zeros((B, K), dtype=torch.long, device=device))  # new tokens in each hypothesis
    done = finished.clone()
    ranks = torch.arange(2 * K, device=device)
    first_beam = torch.arange(B, device=device)[:, None] * K  # (B, 1): row b's beams start at b*K
    banned = list(decoder.banned_ids)
    for t in range(steps):
        logits, cache = decoder.step(cache, prefix[:, -1], t)  # (B*K, V)
        logits = logits.float()
        logits[:, banned] = -torch.inf
        V = logits.shape[-1]
        logp = torch.log_softmax(logits, dim=-1).view(B, K, V)
        values, flat = top_k_stable_over_rows(scores[:, :, None] + logp, 2 * K)  # (B, 2K), flat = parent * V + token
        parent, token = flat // V, flat % V
        rows = prefix.view(B, K, t + 1).gather(1, parent[:, :, None].expand(-1, -1, t + 1))  # (B, 2K, t+1)
        rows = torch.cat([rows, token[:, :, None]], dim=2)  # (B, 2K, t+2)
        is_stop = torch.isin(token, stop)
        # stop candidates ranked K or lower are dropped (so one beam stops where greedy does)
        offered = is_stop[:, :K] & (values[:, :K] > -torch.inf) & ~done[:, None]  # (B, K)
        offer = (torch.nn.functional.pad(rows[:, :K], (0, steps - t - 1), value=pad),  # (B, K, N+1)
                 torch.where(offered, values[:, :K] / norms[t + 1], neg_inf),
                 torch.full((B, K), t + 1, dtype=torch.long, device=device))
        pool = merge_pool(pool, offer)
        # the first K non-stop candidates in rank order: sort keys rank (+ 2K for a stop) are unique
        alive = torch.argsort(ranks + 2 * K * is_stop, dim=1)[:, :K]  # (B, K)
        scores = values.gather(1, alive)
        prefix = rows.gather(1, alive[:, :, None].expand(-1, -1, t + 2)).view(B * K, t + 2)
        worst = pool[1][:, K - 1]
        done |= (worst > -torch.inf) & (scores[:, 0] / norms[t + 1] <= worst)
        if done.all():
            break
        cache = decoder.reorder(cache, (first_beam + parent.gather(1, alive)).view(B * K))
    else:  # N steps run: rows not done compete with their unfinished beams, normalised at length N
        offered = (scores > -torch.inf) & ~done[:, None]
        alive_norm = torch.where(offered, scores / norms[steps], neg_inf)
        full = torch.full((B, K), steps, dtype=torch.long, device=device)
        pool = merge_pool(pool, (prefix.view(B, K, steps + 1), alive_norm, full))
    length = int(pool[2][:, 0].max())  # tracked, never found by looking for pad (a model may emit it)
    return pool[0][:, 0, 1 : 1 + length].cpu().numpy()  # (B, T_out); rows never offered anything: pad


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Dropout off while generating, then the caller's train/eval mode back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def generate(model: torch.nn.Module, ids, mask=None, config: GenerationConfig = GenerationConfig(), draws=None,
             on_token: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
    """ids (B, L) (the source, or left-padded prompts), mask (B, L) (None: encoder-decoders mask
    their pad ids, decoder-only prompts are all real) -> new tokens (B, T_out) int32.

    draws: (N, B) uniforms for sampling (None: shared.decoding.generation.uniforms(seed=0, N, B)).
    on_token: called with each step's (B,) numpy ids as they are produced (greedy and sampling).
    """
    decoder = incremental_decoder(model, config.use_cache)
    c, decoder_only = model.config, decoder.decoder_only
    ids_np = as_numpy(ids)
    if mask is None:
        mask_np = np.ones(ids_np.shape, dtype=bool) if decoder_only else ids_np != c.pad_id
    else:
        mask_np = as_numpy(mask).astype(bool)
    B = ids_np.shape[0]
    if decoder_only:  # every problem of the prompts listed at once, the length one included
        check_prompts(ids_np, mask_np, c.tgt_vocab_size, c.max_len, config.max_new_tokens or 1)
    else:
        ids_np = check_source_ids(ids_np, c)
    steps = config.steps(decoder.room(ids_np))
    if config.strategy == "sample":
        draws = uniforms(0, steps, B) if draws is None else np.asarray(draws)
        if draws.ndim != 2 or draws.shape[0] < steps or draws.shape[1] != B:
            raise ValueError(f"draws must be (N, B) = ({steps}, {B}) uniforms, got {draws.shape}")
    stop_ids = config.eos_token_id if config.eos_token_id is not None else decoder.stop_ids
    pad = c.pad_id
    device = next(model.parameters()).device
    with torch.inference_mode(), eval_mode(model):
        ids_t = torch.as_tensor(ids_np, dtype=torch.long, device=device)  # (B, L)
        mask_t = torch.as_tensor(mask_np, device=device)  # (B, L)
        stop = torch.as_tensor(stop_ids, dtype=torch.long, device=device)
        finished = ~mask_t.any(dim=1)  # (B,) a source that is all padding: batch filler
        if finished.all():
            return np.zeros((B, 0), dtype=np.int32)
        if config.strategy == "beam":
            return beam_search(decoder, ids_t, mask_t, finished, config, steps, pad, stop).astype(np.int32)
        cache = decoder.start(ids_t, mask_t, steps, 1)
        tokens = decoder.first_tokens(ids_t, mask_t)  # (B,): fed at step t
        u = torch.as_tensor(draws, device=device) if config.strategy == "sample" else None
        generated = []
        for t in range(steps):
            logits, cache = decoder.step(cache, tokens, t)  # (B, V)
            chosen = choose_next(logits, None if u is None else u[t], config, decoder.banned_ids)
            tokens = torch.where(finished, pad, chosen)  # (B,)
            generated.append(tokens)
            if on_token is not None:
                on_token(tokens.cpu().numpy().astype(np.int32))
            finished |= torch.isin(tokens, stop)
            if finished.all():
                break
        return torch.stack(generated, dim=1).cpu().numpy().astype(np.int32)  # (B, T_out)


__all__ = ["beam_search", "choose_next", "generate", "merge_pool", "top_k_stable", "top_k_stable_over_rows"]
