"""Incremental decoders for torch_impl models: the interface the decoding algorithms call.

The contract (the same names and shapes in jax_impl/incremental.py; see shared/decoding.py):
  start(src (B, S), steps N, copies C)  -> cache for B*C rows (row b*C + c: copy c of source row b)
  step(cache, tokens (B*C,), t)         -> (next-token logits (B*C, V), cache); tokens sit at position t
  reorder(cache, rows (B*C,))           -> cache whose row i continues row rows[i] (same source row)
Greedy, top-k and beam search (torch_impl/decoding.py) only ever call these three, so a model
family plugs in by providing one such object (`incremental_decoder` picks it).

Two implementations for the encoder-decoder Transformer:
  KVCacheDecoder  keeps every decoder layer's self-attention keys/values (and the cross-attention
                  keys/values of the memory, computed once): one position of work per step.
  PrefixDecoder   keeps the tokens so far and re-runs the decoder over the whole prefix each step
                  (O(T^2) work): the reference the cache is tested against (token-identical).
"""

from __future__ import annotations

import torch
from torch import nn

from torch_impl.model import Transformer, reorder_cache


class KVCacheDecoder:
    """The encoder-decoder Transformer decoded one position at a time from a key/value cache."""

    def __init__(self, model: Transformer):
        self.model = model

    def start(self, src: torch.Tensor, steps: int, copies: int = 1) -> dict:
        return self.model.start_cache(src, steps, copies)

    def step(self, cache: dict, tokens: torch.Tensor, t: int) -> tuple[torch.Tensor, dict]:
        return self.model.decode_step(cache, tokens, t)

    def reorder(self, cache: dict, rows: torch.Tensor) -> dict:
        return reorder_cache(cache, rows)


class PrefixDecoder:
    """No cache: each step re-runs the decoder on BOS + every token so far, projects the last one."""

    def __init__(self, model: Transformer):
        self.model = model

    def start(self, src: torch.Tensor, steps: int, copies: int = 1) -> dict:
        memory = self.model.encode(src).repeat_interleave(copies, dim=0)  # (B*C, S, D)
        src = src.repeat_interleave(copies, dim=0)  # (B*C, S)
        prefix = src.new_zeros(src.shape[0], 0)  # (B*C, 0): the step's tokens are appended
        return {"memory": memory, "src": src, "prefix": prefix}

    def step(self, cache: dict, tokens: torch.Tensor, t: int) -> tuple[torch.Tensor, dict]:
        prefix = torch.cat([cache["prefix"], tokens[:, None]], dim=1)  # (B*C, t+1)
        y = self.model.decode_hidden(cache["memory"], cache["src"], prefix)  # (B*C, t+1, D)
        # Only the last position is projected: the D x V projection is most of a step's cost.
        return self.model.project(y[:, -1:, :])[:, 0, :], dict(cache, prefix=prefix)  # (B*C, V)

    def reorder(self, cache: dict, rows: torch.Tensor) -> dict:
        # memory and src are equal across a source row's copies: only the prefixes move.
        return dict(cache, prefix=cache["prefix"].index_select(0, rows))


def incremental_decoder(model: nn.Module, use_cache: bool = True):
    """The incremental decoder of `model`'s family (each family registers its own here)."""
    if isinstance(model, Transformer):
        return KVCacheDecoder(model) if use_cache else PrefixDecoder(model)
    if all(hasattr(model, name) for name in ("encode", "decode_hidden", "project")):
        return PrefixDecoder(model)  # an encoder-decoder family without a cache yet (T5): recomputes the prefix
    raise TypeError(f"no incremental decoder for {type(model).__name__}")


__all__ = ["KVCacheDecoder", "PrefixDecoder", "incremental_decoder"]
