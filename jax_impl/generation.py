"""Greedy and sampled generation for jax_impl.CausalLM: the rule of shared/sampling.py in jax.numpy.

The prompt buffer has a fixed shape (B, T0 + max_new_tokens), so the forward compiles once.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.registry import build_model
from shared import sampling
from shared.config import ModelConfig
from shared.sampling import SamplingConfig


def choose_next(logits: jax.Array, u: jax.Array, config: SamplingConfig) -> jax.Array:
    """logits (B, V), u (B,) -> next ids (B,) (shared/sampling.choose_next, op for op)."""
    if config.greedy:
        return jnp.argmax(logits, axis=-1)  # the first maximum, as numpy
    x = logits.astype(jnp.float32) / jnp.float32(config.temperature)  # (B, V)
    if config.top_k:
        kth = jnp.sort(x, axis=-1)[:, -min(config.top_k, x.shape[-1])][:, None]  # (B, 1)
        x = jnp.where(x < kth, -jnp.inf, x)
    if config.top_p < 1.0:
        order = jnp.argsort(-x, axis=-1, stable=True)  # (B, V), best first
        ranked = jnp.take_along_axis(x, order, axis=-1)
        p = jax.nn.softmax(ranked, axis=-1)
        drop_ranked = (jnp.cumsum(p, axis=-1) - p) >= jnp.float32(config.top_p)  # mass ranked strictly before
        drop = jnp.zeros_like(drop_ranked).at[jnp.arange(x.shape[0])[:, None], order].set(drop_ranked)
        x = jnp.where(drop, -jnp.inf, x)
    cdf = jnp.cumsum(jax.nn.softmax(x, axis=-1), axis=-1)  # (B, V)
    threshold = (u.astype(jnp.float32) * cdf[:, -1])[:, None]
    return jnp.minimum(jnp.sum(cdf <= threshold, axis=-1), x.shape[-1] - 1)


@partial(jax.jit, static_argnums=0)
def _last_logits(config: ModelConfig, params, buffer, buffer_mask, position):
    logits = build_model(config).apply({"params": params}, buffer, buffer_mask)  # (B, T, V)
    return jax.lax.dynamic_index_in_dim(logits, position, axis=1, keepdims=False)  # (B, V)


_choose = jax.jit(choose_next, static_argnums=2)


def generate(config: ModelConfig, params, ids: np.ndarray, mask: np.ndarray, sampling_config: SamplingConfig,
             draws: np.ndarray | None = None) -> np.ndarray:
    """(B, T0) left-padded prompts and their mask -> (B, max_new_tokens) new ids (pad after a stop)."""
    sampling.check_prompts(ids, mask, config.tgt_vocab_size, config.max_len, sampling_config.max_new_tokens)

    def last_logits(buffer: np.ndarray, buffer_mask: np.ndarray, position: int) -> jax.Array:
        return _last_logits(config, params, jnp.asarray(buffer, jnp.int32), jnp.asarray(buffer_mask, jnp.int32), position)

    def choose(logits: jax.Array, u: np.ndarray) -> np.ndarray:
        return np.asarray(_choose(logits, jnp.asarray(u, jnp.float32), sampling_config))

    return sampling.generate(last_logits, choose, ids, mask, sampling_config, config.pad_id, draws)
