"""Batched greedy / top-k / beam decoding for the Flax model as one jitted program (contract: shared/decoding.py).

A `jax.lax.while_loop` over positions t feeds the token at t to the model's incremental decoder
(jax_impl/incremental.py: with the key/value cache by default, DecodeConfig.use_cache; without
it the decoder re-runs over a fixed (B, N) token buffer, the causal mask hiding the slots after
t), picks the next token from the logits and writes it to a (B, N + 1) output buffer. Every
carried array has a fixed shape, so the loop compiles once; it exits early when every row has
finished. Params are an explicit argument, never closed over.

Beam search is a second jitted loop of the same form over a (B*K, N + 1) buffer (row b*K + k is
beam k of row b), following the algorithm in shared/decoding.py step for step; lax.top_k puts
equal values lower index first, the tie rule both stacks share.

Compiles: one per (B, S, N, config, strategy, k, use_cache), or per (B, S, N, config, K, use_cache) for beam search (the
length penalty is an argument, not a constant). Callers decoding many batches should pad them to
a few bucketed shapes (`shared.decoding.pad_sources` with a fixed row count and a length multiple),
otherwise every new batch shape pays a fresh compile.
"""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.incremental import incremental_decoder
from jax_impl.registry import build_model
from shared.config import ModelConfig
from shared.decoding import (
    DecodeConfig,
    banned_ids,
    check_source_ids,
    length_normalizers,
    padding_rows,
    trim_padding_columns,
)


def choose(logits: jax.Array, strategy: str, k: int, temperature: jax.Array, key: jax.Array,
           banned: tuple[int, ...]) -> jax.Array:
    """logits (B, V) -> next ids (B,): argmax, or a sample among the top k of softmax(logits / temperature)."""
    logits = logits.astype(jnp.float32).at[:, jnp.asarray(banned)].set(-jnp.inf)
    if strategy == "greedy":
        return jnp.argmax(logits, axis=-1)  # first maximal index on ties, as torch.argmax
    values, indices = jax.lax.top_k(logits / temperature, k)  # (B, k)
    picked = jax.random.categorical(key, values, axis=-1)  # (B,)
    return jnp.take_along_axis(indices, picked[:, None], axis=-1)[:, 0]


@partial(jax.jit, static_argnames=("config", "steps", "strategy", "k", "use_cache"))
def _generate(params, src, finished, temperature, key, *, config: ModelConfig, steps: int, strategy: str, k: int,
              use_cache: bool):
    """src (B, S), finished (B,) -> (buffer (B, N + 1), steps run)."""
    stepper = incremental_decoder(build_model(config), use_cache)
    pad, banned = config.pad_id, banned_ids(config)
    B = src.shape[0]
    cache = stepper.start(params, src, steps)
    buffer = jnp.full((B, steps + 1), pad, jnp.int32).at[:, 0].set(config.bos_id)  # (B, N + 1)

    def unfinished(state):
        t, _, _, done = state
        return (t < steps) & ~jnp.all(done)

    def step(state):
        t, buffer, cache, done = state
        tokens = jax.lax.dynamic_index_in_dim(buffer, t, axis=1, keepdims=False)  # (B,)
        logits, cache = stepper.step(params, cache, tokens, t)  # (B, V)
        next_ids = choose(logits, strategy, k, temperature, jax.random.fold_in(key, t), banned)
        next_ids = jnp.where(done, pad, next_ids).astype(jnp.int32)  # (B,)
        buffer = jax.lax.dynamic_update_slice_in_dim(buffer, next_ids[:, None], t + 1, axis=1)
        return t + 1, buffer, cache, done | (next_ids == config.eos_id)

    t, buffer, _, _ = jax.lax.while_loop(unfinished, step, (jnp.int32(0), buffer, cache, finished))
    return buffer, t


def beam_top_k(candidates: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """(B, K, V) -> lax.top_k of the (B, K * V) flattening: values and flat indices k * V + v.

    In two stages, each beam's best k, then the best k of those K * k: exactly the same result
    (a row's best k hold at most k of any one beam, which come in that beam's own top-k order,
    and candidates stay in flat-index order, so equal values still go lower index first), but
    XLA on the CPU turns one top_k over K * V into a full sort of every row inside the loop.
    """
    B, K, V = candidates.shape
    if k >= V:
        return jax.lax.top_k(candidates.reshape(B, K * V), k)
    per_beam, index = jax.lax.top_k(candidates, k)  # (B, K, k)
    flat_index = (index + (jnp.arange(K) * V)[None, :, None]).reshape(B, K * k)
    values, pick = jax.lax.top_k(per_beam.reshape(B, K * k), k)  # (B, k)
    return values, jnp.take_along_axis(flat_index, pick, axis=1)


def merge_pool(pool_rows, pool_norm, offer_rows, offer_norm):
    """Keep the K best of pool (B, K, L) + offers (B, K, L) by normalised score (B, K each).

    The pool comes first in the concatenation, so on equal scores the earlier hypothesis stays.
    """
    K = pool_norm.shape[1]
    norm, keep = jax.lax.top_k(jnp.concatenate([pool_norm, offer_norm], axis=1), K)  # (B, K)
    rows = jnp.concatenate([pool_rows, offer_rows], axis=1)  # (B, 2K, L)
    return jnp.take_along_axis(rows, keep[:, :, None], axis=1), norm  # (B, K, L), (B, K)


@partial(jax.jit, static_argnames=("config", "steps", "num_beams", "use_cache"))
def _beam_search(params, src, finished, norms, *, config: ModelConfig, steps: int, num_beams: int, use_cache: bool):
    """src (B, S), finished (B,), norms (N + 1,) -> best hypothesis per row (B, N + 1), BOS first."""
    stepper = incremental_decoder(build_model(config), use_cache)
    pad = config.pad_id
    allowed = np.ones(config.tgt_vocab_size, bool)  # (V,): a constant mask, not a scatter into the logits
    allowed[list(banned_ids(config))] = False
    B, K, V = src.shape[0], num_beams, config.tgt_vocab_size
    cache = stepper.start(params, src, steps, copies=K)  # B*K rows, row b*K + k is beam k of row b
    buffer = jnp.full((B * K, steps + 1), pad, jnp.int32).at[:, 0].set(config.bos_id)  # (B*K, N + 1)
    # One live beam: K copies of BOS would fill the first step with duplicates.
    scores = jnp.full((B, K), -jnp.inf, jnp.float32).at[:, 0].set(0.0)
    pool_rows = jnp.full((B, K, steps + 1), pad, jnp.int32)  # (B, K, N + 1)
    pool_norm = jnp.full((B, K), -jnp.inf, jnp.float32)  # (B, K), -inf = empty, best first
    ranks = jnp.arange(2 * K)
    first_beam = jnp.arange(B)[:, None] * K  # (B, 1): row b's beams start at b*K

    def unfinished(state):
        t, *_, done = state
        return (t < steps) & ~jnp.all(done)

    def step(state):
        t, buffer, cache, scores, pool_rows, pool_norm, done = state
        tokens = jax.lax.dynamic_index_in_dim(buffer, t, axis=1, keepdims=False)  # (B*K,)
        logits, cache = stepper.step(params, cache, tokens, t)  # (B*K, V)
        logits = jnp.where(allowed, logits.astype(jnp.float32), -jnp.inf)
        logp = jax.nn.log_softmax(logits, axis=-1).reshape(B, K, V)
        values, flat = beam_top_k(scores[:, :, None] + logp, 2 * K)  # (B, 2K)
        parent, token = flat // V, (flat % V).astype(jnp.int32)
        rows = jnp.take_along_axis(buffer.reshape(B, K, steps + 1), parent[:, :, None], axis=1)  # (B, 2K, N+1)
        rows = jax.lax.dynamic_update_slice_in_dim(rows, token[:, :, None], t + 1, axis=2)
        is_eos = token == config.eos_id
        # EOS candidates ranked K or lower are dropped (so one beam stops where greedy does).
        offered = is_eos[:, :K] & (values[:, :K] > -jnp.inf) & ~done[:, None]  # (B, K)
        offer_norm = jnp.where(offered, values[:, :K] / norms[t + 1], -jnp.inf)
        pool_rows, pool_norm = merge_pool(pool_rows, pool_norm, rows[:, :K], offer_norm)
        # The first K non-EOS candidates in rank order: sort keys rank (+ 2K for EOS) are unique.
        _, alive = jax.lax.top_k(-(ranks + jnp.where(is_eos, 2 * K, 0)), K)  # (B, K)
        scores = jnp.take_along_axis(values, alive, axis=1)
        buffer = jnp.take_along_axis(rows, alive[:, :, None], axis=1).reshape(B * K, steps + 1)
        cache = stepper.reorder(cache, (first_beam + jnp.take_along_axis(parent, alive, axis=1)).reshape(B * K))
        worst = pool_norm[:, K - 1]
        done = done | ((worst > -jnp.inf) & (scores[:, 0] / norms[t + 1] <= worst))
        return t + 1, buffer, cache, scores, pool_rows, pool_norm, done

    state = (jnp.int32(0), buffer, cache, scores, pool_rows, pool_norm, finished)
    _, buffer, _, scores, pool_rows, pool_norm, done = jax.lax.while_loop(unfinished, step, state)
    # Rows not done ran all N steps: their unfinished beams compete too, normalised at length N.
    offered = (scores > -jnp.inf) & ~done[:, None]
    alive_norm = jnp.where(offered, scores / norms[steps], -jnp.inf)
    pool_rows, _ = merge_pool(pool_rows, pool_norm, buffer.reshape(B, K, steps + 1), alive_norm)
    return pool_rows[:, 0]  # padding rows were never offered anything: BOS then PAD


def generate(
    model: nn.Module,
    params,
    src_ids,
    config: DecodeConfig | None = None,
    rng: jax.Array | None = None,
) -> np.ndarray:
    """src_ids (B, S) numpy/jax ints -> generated ids (B, T_out) numpy int32, BOS excluded.

    top_k draws from `rng` (a jax PRNG key; None = key 0, so runs are reproducible by default);
    beam ignores it.
    """
    config = config or DecodeConfig()
    model_config = model.config
    steps = config.steps(model_config)
    src_np = check_source_ids(np.asarray(src_ids), model_config)
    finished = padding_rows(src_np, model_config.pad_id)
    if finished.all():
        return np.zeros((src_np.shape[0], 0), dtype=np.int32)
    if config.strategy == "beam":
        best = _beam_search(
            params,
            jnp.asarray(src_np, jnp.int32),
            jnp.asarray(finished),
            jnp.asarray(length_normalizers(steps, config.length_penalty)),
            config=model_config,
            steps=steps,
            num_beams=config.num_beams,
            use_cache=config.use_cache,
        )
        return trim_padding_columns(np.asarray(best)[:, 1:], model_config.pad_id).astype(np.int32)  # (B, T_out)
    buffer, t = _generate(
        params,
        jnp.asarray(src_np, jnp.int32),
        jnp.asarray(finished),
        jnp.float32(config.temperature),
        jax.random.key(0) if rng is None else rng,
        config=model_config,
        steps=steps,
        strategy=config.strategy,
        # greedy ignores k: a fixed value keeps one compile for every k
        k=config.top_k(model_config.tgt_vocab_size) if config.strategy == "top_k" else 1,
        use_cache=config.use_cache,
    )
    return np.asarray(buffer)[:, 1 : int(t) + 1].astype(np.int32)  # (B, T_out)


__all__ = ["choose", "generate", "merge_pool"]
