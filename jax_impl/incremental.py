"""Incremental decoders of every jax_impl family: the protocol of shared/decoding/generation.py, params first.

    start(params, ids (B, L), mask (B, L), N, C) -> cache pytree for B*C rows (row b*C + c: copy c of row b)
    first_tokens(ids, mask)                      -> (B,) tokens fed at t = 0
    step(params, cache, tokens (B*C,), t)        -> (next-token logits (B*C, V), cache)
    reorder(cache, rows (B*C,))                  -> cache whose row i continues row rows[i]
    banned_ids, stop_ids                         tuples of token ids
Every cache leaf has a fixed shape, so a `lax.while_loop` or a jitted step carries it; t may be traced.

use_cache=True   the family's own key/value cache (start_cache / decode_step / reorder_cache of its
                 module): one position of work per step.
use_cache=False  the reference: a token buffer, the whole prefix re-run every step with the
                 family's ordinary forward, the position at t read off. The cache must give the
                 very same tokens (parity_tests/test_jax_generate.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jax_impl.attention import reorder_rows
from shared.decoding.search import banned_ids as encoder_decoder_banned_ids


def is_encoder_decoder(model) -> bool:
    return hasattr(model, "encode")


class EncoderDecoderDecoder:
    """Book Transformer and T5: the source encoded once, the decoder fed from its start id."""

    def __init__(self, model, use_cache: bool):
        self.model, self.use_cache = model, use_cache
        c = model.config
        self.banned_ids = encoder_decoder_banned_ids(c)  # PAD and the decoder start: never generated
        self.stop_ids = (c.eos_id,)

    def first_tokens(self, ids, mask):
        return jnp.full((ids.shape[0],), self.model.config.bos_id, jnp.int32)

    def start(self, params, ids, mask, steps: int, copies: int = 1) -> dict:
        variables = {"params": params}
        if self.use_cache:
            return self.model.apply(variables, ids, mask, steps, copies, method="start_cache")
        memory = self.model.apply(variables, ids, mask, method="encode", deterministic=True)  # (B, S, D)
        repeat = lambda a: jnp.repeat(a, copies, axis=0)  # noqa: E731
        buffer = jnp.full((ids.shape[0] * copies, steps), self.model.config.pad_id, jnp.int32)  # (B*C, N)
        return {"memory": repeat(memory), "src": repeat(ids), "src_mask": repeat(mask), "buffer": buffer}

    def step(self, params, cache: dict, tokens, t):
        variables = {"params": params}
        if self.use_cache:
            return self.model.apply(variables, cache, tokens, t, method="decode_step")
        buffer = jax.lax.dynamic_update_slice_in_dim(cache["buffer"], tokens[:, None].astype(jnp.int32), t, axis=1)
        hidden = self.model.apply(variables, cache["memory"], cache["src"], buffer, cache["src_mask"],
                                  deterministic=True, method="decode_hidden")  # (B, N, D); slots after t masked
        at_t = jax.lax.dynamic_slice_in_dim(hidden, t, 1, axis=1)  # (B, 1, D)
        # Only position t is projected: the D x V projection is most of a step's cost.
        return self.model.apply(variables, at_t, method="project")[:, 0, :], dict(cache, buffer=buffer)

    def reorder(self, cache: dict, rows) -> dict:
        if self.use_cache:
            return self.model.reorder_cache(cache, rows)
        return dict(cache, buffer=reorder_rows(cache["buffer"], rows))  # memory: equal across a row's copies


class DecoderOnlyDecoder:
    """Causal LMs: a left-padded prompt, ids[:, :-1] prefilled, ids[:, -1] fed at t = 0."""

    banned_ids: tuple[int, ...] = ()  # as transformers' generate: a decoder-only model has no BOS to ban

    def __init__(self, model, use_cache: bool):
        self.model, self.use_cache = model, use_cache
        self.stop_ids = (model.config.eos_id,)

    def first_tokens(self, ids, mask):
        return jnp.asarray(ids)[:, -1].astype(jnp.int32)

    def start(self, params, ids, mask, steps: int, copies: int = 1) -> dict:
        if self.use_cache:
            return self.model.apply({"params": params}, ids, mask, steps, copies, method="start_cache")
        ids = jnp.repeat(jnp.asarray(ids, jnp.int32), copies, axis=0)
        mask = jnp.repeat(jnp.asarray(mask).astype(bool), copies, axis=0)  # (B*C, L)
        rows, P = ids.shape[0], ids.shape[1] - 1
        pad = jnp.zeros((rows, steps), jnp.int32)
        return {"buffer": jnp.concatenate([ids[:, :P], pad], axis=1),  # (B*C, L - 1 + N)
                "mask": jnp.concatenate([mask[:, :P], pad.astype(bool)], axis=1),
                "first_slot": jnp.full((rows,), P, jnp.int32)}

    def step(self, params, cache: dict, tokens, t):
        if self.use_cache:
            return self.model.apply({"params": params}, cache, tokens, t, method="decode_step")
        slot = cache["first_slot"][0] + t
        buffer = jax.lax.dynamic_update_slice_in_dim(cache["buffer"], tokens[:, None].astype(jnp.int32), slot, axis=1)
        mask = jax.lax.dynamic_update_slice_in_dim(cache["mask"], jnp.ones((tokens.shape[0], 1), bool), slot, axis=1)
        hidden = self.model.apply({"params": params}, buffer, mask, deterministic=True, method="hidden")  # (B, P + N, D)
        at_slot = jax.lax.dynamic_slice_in_dim(hidden, slot, 1, axis=1)  # (B, 1, D)
        logits = self.model.apply({"params": params}, at_slot, method="project")[:, 0, :]
        return logits, dict(cache, buffer=buffer, mask=mask)

    def reorder(self, cache: dict, rows) -> dict:
        return self.model.reorder_cache(cache, rows) if self.use_cache else reorder_rows(cache, rows)


def incremental_decoder(model, use_cache: bool = True):
    """The incremental decoder of `model`'s family (a module built by jax_impl.build_model)."""
    if is_encoder_decoder(model):
        return EncoderDecoderDecoder(model, use_cache)
    if hasattr(model, "hidden"):
        return DecoderOnlyDecoder(model, use_cache)
    raise TypeError(f"no incremental decoder for {type(model).__name__}")


__all__ = ["DecoderOnlyDecoder", "EncoderDecoderDecoder", "incremental_decoder", "is_encoder_decoder"]
