"""Incremental decoders for jax_impl models: the interface the jitted decoding loops call.

The contract is torch_impl/incremental.py's (see shared/decoding.py), with the params first:
  start(params, src (B, S), steps N, copies C) -> cache pytree for B*C rows (row b*C + c: copy c of row b)
  step(params, cache, tokens (B*C,), t)        -> (next-token logits (B*C, V), cache); tokens at position t
  reorder(cache, rows (B*C,))                  -> cache whose row i continues row rows[i] (same source row)
Every cache leaf has a fixed shape, so a `lax.while_loop` carries it; t may be traced.

KVCacheDecoder  every decoder layer's self-attention keys/values in N slots (plus the memory's
                cross-attention keys/values, computed once): one position of work per step.
PrefixDecoder   a (B*C, N) token buffer, the decoder re-run over all of it each step (the causal
                mask hides the slots after t): the reference the cache is tested against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_impl.model import Transformer


class KVCacheDecoder:
    """The encoder-decoder Transformer decoded one position at a time from a key/value cache."""

    def __init__(self, model: Transformer):
        self.model = model

    def start(self, params, src: jax.Array, steps: int, copies: int = 1) -> dict:
        return self.model.apply({"params": params}, src, steps, copies, method=Transformer.start_cache)

    def step(self, params, cache: dict, tokens: jax.Array, t) -> tuple[jax.Array, dict]:
        return self.model.apply({"params": params}, cache, tokens, t, method=Transformer.decode_step)

    def reorder(self, cache: dict, rows: jax.Array) -> dict:
        # Cross-attention keys/values are equal across a source row's copies: left as they are.
        take = lambda a: jnp.take(a, rows, axis=0)  # noqa: E731
        layers = [dict(layer, self_k=take(layer["self_k"]), self_v=take(layer["self_v"])) for layer in cache["layers"]]
        return dict(cache, layers=layers, key_ok=take(cache["key_ok"]))


class PrefixDecoder:
    """No cache: each step re-runs the decoder over the token buffer and projects position t."""

    def __init__(self, model: Transformer):
        self.model = model

    def start(self, params, src: jax.Array, steps: int, copies: int = 1) -> dict:
        memory = self.model.apply({"params": params}, src, method="encode", deterministic=True)  # (B, S, D)
        src = jnp.repeat(src, copies, axis=0)  # (B*C, S)
        buffer = jnp.full((src.shape[0], steps), self.model.config.pad_id, jnp.int32)  # (B*C, N)
        return {"memory": jnp.repeat(memory, copies, axis=0), "src": src, "buffer": buffer}

    def step(self, params, cache: dict, tokens: jax.Array, t) -> tuple[jax.Array, dict]:
        variables = {"params": params}
        buffer = jax.lax.dynamic_update_slice_in_dim(cache["buffer"], tokens[:, None].astype(jnp.int32), t, axis=1)
        hidden = self.model.apply(variables, cache["memory"], cache["src"], buffer, method="decode_hidden")  # (B, N, D)
        at_t = jax.lax.dynamic_slice_in_dim(hidden, t, 1, axis=1)  # (B, 1, D)
        # Only position t is projected: the D x V projection is most of a step's cost.
        logits = self.model.apply(variables, at_t, method="project")[:, 0, :]  # (B, V)
        return logits, dict(cache, buffer=buffer)

    def reorder(self, cache: dict, rows: jax.Array) -> dict:
        return dict(cache, buffer=jnp.take(cache["buffer"], rows, axis=0))


def incremental_decoder(model, use_cache: bool = True):
    """The incremental decoder of `model`'s family (each family registers its own here)."""
    if isinstance(model, Transformer):
        return KVCacheDecoder(model) if use_cache else PrefixDecoder(model)
    if all(hasattr(model, name) for name in ("encode", "decode_hidden", "project")):
        return PrefixDecoder(model)  # an encoder-decoder family without a cache yet (T5): recomputes the prefix
    raise TypeError(f"no incremental decoder for {type(model).__name__}")


__all__ = ["KVCacheDecoder", "PrefixDecoder", "incremental_decoder"]
