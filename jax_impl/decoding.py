"""Batched greedy / top-k decoding for the Flax model as one jitted program (contract: shared/decoding.py).

The token buffer has a fixed shape (B, N + 1), BOS then PAD, so the whole loop compiles once:
a `jax.lax.while_loop` over positions t runs the decoder on the first N buffer positions (the
causal mask hides everything after t, so the result at t equals a prefix-only run), takes the
hidden state at t, projects it, picks the next token and writes it at t + 1. The loop exits
early when every row has finished. Params are an explicit argument, never closed over.

Compiles: one per (B, S, N, config, strategy, k). Callers decoding many batches should pad them to
a few bucketed shapes (`shared.decoding.pad_sources` with a fixed row count and a length multiple),
otherwise every new batch shape pays a fresh compile.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.model import Transformer
from shared.config import ModelConfig
from shared.decoding import BOS_ID, EOS_ID, DecodeConfig, banned_ids, check_source_ids, padding_rows


def choose(logits: jax.Array, strategy: str, k: int, temperature: jax.Array, key: jax.Array,
           banned: tuple[int, ...]) -> jax.Array:
    """logits (B, V) -> next ids (B,): argmax, or a sample among the top k of softmax(logits / temperature)."""
    logits = logits.astype(jnp.float32).at[:, jnp.asarray(banned)].set(-jnp.inf)
    if strategy == "greedy":
        return jnp.argmax(logits, axis=-1)  # first maximal index on ties, as torch.argmax
    values, indices = jax.lax.top_k(logits / temperature, k)  # (B, k)
    picked = jax.random.categorical(key, values, axis=-1)  # (B,)
    return jnp.take_along_axis(indices, picked[:, None], axis=-1)[:, 0]


@partial(jax.jit, static_argnames=("config", "steps", "strategy", "k"))
def _generate(params, src, finished, temperature, key, *, config: ModelConfig, steps: int, strategy: str, k: int):
    """src (B, S), finished (B,) -> (buffer (B, N + 1), steps run)."""
    model, variables = Transformer(config), {"params": params}
    pad, banned = config.pad_id, banned_ids(config)
    B = src.shape[0]
    memory = model.apply(variables, src, method=Transformer.encode, deterministic=True)  # (B, S, D)
    buffer = jnp.full((B, steps + 1), pad, jnp.int32).at[:, 0].set(BOS_ID)  # (B, N + 1)

    def unfinished(state):
        t, _, done = state
        return (t < steps) & ~jnp.all(done)

    def step(state):
        t, buffer, done = state
        hidden = model.apply(variables, memory, src, buffer[:, :steps], method=Transformer.decode_hidden)  # (B, N, D)
        at_t = jax.lax.dynamic_slice_in_dim(hidden, t, 1, axis=1)  # (B, 1, D)
        logits = model.apply(variables, at_t, method=Transformer.project)[:, 0, :]  # (B, V)
        next_ids = choose(logits, strategy, k, temperature, jax.random.fold_in(key, t), banned)
        next_ids = jnp.where(done, pad, next_ids).astype(jnp.int32)  # (B,)
        buffer = jax.lax.dynamic_update_slice_in_dim(buffer, next_ids[:, None], t + 1, axis=1)
        return t + 1, buffer, done | (next_ids == EOS_ID)

    t, buffer, _ = jax.lax.while_loop(unfinished, step, (jnp.int32(0), buffer, finished))
    return buffer, t


def generate(
    model: Transformer,
    params,
    src_ids,
    config: DecodeConfig | None = None,
    rng: jax.Array | None = None,
) -> np.ndarray:
    """src_ids (B, S) numpy/jax ints -> generated ids (B, T_out) numpy int32, BOS excluded.

    top_k draws from `rng` (a jax PRNG key; None = key 0, so runs are reproducible by default).
    """
    config = config or DecodeConfig()
    model_config = model.config
    steps = config.steps(model_config)
    src_np = check_source_ids(np.asarray(src_ids), model_config)
    finished = padding_rows(src_np, model_config.pad_id)
    if finished.all():
        return np.zeros((src_np.shape[0], 0), dtype=np.int32)
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
    )
    return np.asarray(buffer)[:, 1 : int(t) + 1].astype(np.int32)  # (B, T_out)


__all__ = ["choose", "generate"]
