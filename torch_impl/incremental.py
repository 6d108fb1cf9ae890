"""Incremental decoders of every torch_impl family: the protocol of shared/decoding/generation.py.

  start(ids (B, L), mask (B, L), N, C) -> cache for B*C rows (row b*C + c: copy c of row b)
  first_tokens(ids, mask) -> (B,)      the tokens fed at t = 0
  step(cache, tokens (B*C,), t)        -> (next-token logits (B*C, V), cache)
  reorder(cache, rows (B*C,))          -> cache whose row i continues row rows[i]
  banned_ids, stop_ids                 never generated / a row that emits one stops

Per family (torch_impl/generate.py only ever calls these):
  TransformerIncremental / T5Incremental  encoder-decoders: the source encoded once, cross-attention keys/
                                  values computed once, one self-attention KVCache per layer.
  CausalLMIncremental                   decoder-only: the prompt's ids[:, :-1] prefilled, one slot a step.
  PrefixDecoder                   use_cache=False for every family: the tokens so far, the whole
                                  prefix re-run each step (O(T^2)): the reference the caches are
                                  tested against (token-identical, parity_tests/test_torch_generate.py).
"""

from __future__ import annotations

import torch
from torch import nn

from shared.decoding.search import banned_ids as encoder_decoder_banned_ids
from torch_impl.attention import KVCache, reorder_caches
from torch_impl.families.causal_lm import CausalLM, causal_padding_mask
from torch_impl.families.transformer import Transformer, reorder_cache
from torch_impl.positions import position_ids
from torch_impl.families.t5 import T5, source_mask


class EncoderDecoderIds:
    """What the encoder-decoders share: start from the decoder start id, ban pad and it, stop at EOS."""

    decoder_only = False

    def __init__(self, model: nn.Module):
        self.model, c = model, model.config
        self.banned_ids = encoder_decoder_banned_ids(c)
        self.stop_ids = (c.eos_id,)

    def first_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.full((ids.shape[0],), self.model.config.bos_id, dtype=torch.long, device=ids.device)

    def room(self, ids) -> int:
        return self.model.config.max_len - 1  # the decoder start + N tokens fill the positions


class TransformerIncremental(EncoderDecoderIds):
    """The book's Transformer from its KV cache (Transformer.start_cache / decode_step)."""

    def start(self, ids, mask, steps: int, copies: int = 1) -> dict:
        return self.model.start_cache(ids, steps, copies)  # the model masks the source by its pad ids

    def step(self, cache: dict, tokens: torch.Tensor, t: int):
        return self.model.decode_step(cache, tokens, t)

    def reorder(self, cache: dict, rows: torch.Tensor) -> dict:
        return reorder_cache(cache, rows)


class T5Incremental(EncoderDecoderIds):
    """T5 with a self-attention KVCache per decoder layer and the relative bias table computed once."""

    def start(self, ids, mask, steps: int, copies: int = 1) -> dict:
        model, c = self.model, self.model.config
        memory = model.encode(ids, mask)  # (B, S, D)
        cross_mask = source_mask(ids, c.pad_id, mask).repeat_interleave(copies, dim=0)  # (B*C, 1, S)
        # Each layer's cross keys/values once per source row, then copied to its beams: a row's
        # projection does not depend on the other rows. repeat_interleave also makes them
        # contiguous, which q @ k^T needs to run as one batched GEMM: the heads-split views of the
        # projection would be copied by every step's matmul.
        cross_kv = [tuple(x.repeat_interleave(copies, dim=0) for x in layer.cross_attn.keys_values(memory))
                    for layer in model.decoder.layers]  # (B*C, H, S, K) each
        rows = ids.shape[0] * copies
        caches = [KVCache(rows, c.num_heads, steps, c.head_dim, memory.dtype, memory.device)
                  for _ in model.decoder.layers]
        bias = model.decoder.position_bias(steps, steps, bidirectional=False)  # (1, H, N, N)
        return {"cross_kv": cross_kv, "cross_mask": cross_mask, "caches": caches, "bias": bias, "filled": 0}

    def step(self, cache: dict, tokens: torch.Tensor, t: int):
        bias = None if cache["bias"] is None else cache["bias"][:, :, t : t + 1, : t + 1]  # (1, H, 1, t+1)
        y = self.model.shared_embed(tokens[:, None])  # (B*C, 1, D)
        y = self.model.decoder.step(y, cache["cross_kv"], cache["caches"], t, cache["cross_mask"], bias)
        cache["filled"] = t + 1
        return self.model.project(y)[:, 0, :], cache  # (B*C, V)

    def reorder(self, cache: dict, rows: torch.Tensor) -> dict:
        # cross keys/values and the source mask are equal across a source row's copies
        reorder_caches(cache["caches"], rows, cache["filled"])
        return cache


class CausalLMIncremental:
    """A decoder-only LM: ids[:, :-1] prefilled into slots 0 .. L-2, token t into slot L-1+t.

    The last prompt token runs at step 0, as in the JAX twin and the serving slots (twinformer/serving),
    so a row's first logits come from the same one-token step wherever it is decoded (running it in
    the prefill instead saves one forward in N + 1 but rounds differently).
    """

    banned_ids: tuple[int, ...] = ()  # none, as transformers' generate
    decoder_only = True

    def __init__(self, model: CausalLM):
        self.model = model
        self.stop_ids = (model.config.eos_id,)

    def first_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return ids[:, -1]

    def room(self, ids) -> int:
        """Positions left after the (B, L) prompt."""
        return self.model.config.max_len - ids.shape[1]

    def start(self, ids, mask, steps: int, copies: int = 1) -> dict:
        c = self.model.config
        ids, mask = ids.repeat_interleave(copies, dim=0), mask.repeat_interleave(copies, dim=0)  # (R, L)
        R, L = ids.shape
        dtype = self.model.embed_tokens.weight.dtype
        caches = [KVCache(R, layer.self_attn.num_kv_heads, L - 1 + steps, c.head_dim, dtype, ids.device)
                  for layer in self.model.layers]
        key_ok = torch.ones(R, L - 1 + steps, dtype=torch.bool, device=ids.device)  # generated keys are real
        key_ok[:, : L - 1] = mask[:, :-1]
        if L > 1:
            prompt_mask = mask[:, :-1]
            self.model.run(ids[:, :-1], position_ids(prompt_mask), causal_padding_mask(prompt_mask), caches, 0)
        # the token fed at step t sits after every real prompt token before it and t generated ones
        next_position = mask[:, :-1].long().sum(dim=1)  # (R,)
        return {"caches": caches, "key_ok": key_ok, "next_position": next_position, "prompt": L - 1, "filled": L - 1}

    def step(self, cache: dict, tokens: torch.Tensor, t: int):
        slot = cache["prompt"] + t
        positions = (cache["next_position"] + t)[:, None]  # (R, 1)
        allowed = cache["key_ok"][:, None, : slot + 1]  # (R, 1, slot + 1)
        y = self.model.run(tokens[:, None], positions, allowed, cache["caches"], slot)  # (R, 1, D)
        cache["filled"] = slot + 1
        return self.model.project(y)[:, 0, :], cache

    def reorder(self, cache: dict, rows: torch.Tensor) -> dict:
        reorder_caches(cache["caches"], rows, cache["filled"])
        cache["key_ok"] = cache["key_ok"].index_select(0, rows)
        cache["next_position"] = cache["next_position"].index_select(0, rows)
        return cache


class PrefixDecoder:
    """No cache: each step re-runs the decoder on every token so far and projects the last one."""

    def __init__(self, cached):
        self.cached, self.model = cached, cached.model
        self.banned_ids, self.stop_ids = cached.banned_ids, cached.stop_ids
        self.first_tokens, self.room = cached.first_tokens, cached.room
        self.decoder_only = cached.decoder_only

    def start(self, ids, mask, steps: int, copies: int = 1) -> dict:
        ids, mask = ids.repeat_interleave(copies, dim=0), mask.repeat_interleave(copies, dim=0)  # (R, L)
        if self.decoder_only:  # the fed tokens are appended to the prompt, all real
            return {"prefix": ids[:, :-1], "mask": mask[:, :-1]}
        memory = self.model.encode(ids, mask) if isinstance(self.model, T5) else self.model.encode(ids)
        return {"memory": memory, "src": ids, "src_mask": mask, "prefix": ids.new_zeros(ids.shape[0], 0)}

    def step(self, cache: dict, tokens: torch.Tensor, t: int):
        prefix = torch.cat([cache["prefix"], tokens[:, None]], dim=1)  # (R, t + 1) or (R, L + t)
        if self.decoder_only:
            mask = torch.cat([cache["mask"], torch.ones_like(tokens[:, None], dtype=torch.bool)], dim=1)
            y = self.model.hidden(prefix, mask)
            cache = dict(cache, mask=mask)
        elif isinstance(self.model, T5):
            y = self.model.decode_hidden(cache["memory"], cache["src"], prefix, cache["src_mask"])
        else:
            y = self.model.decode_hidden(cache["memory"], cache["src"], prefix)
        # only the last position is projected: the D x V projection is most of a step's cost
        return self.model.project(y[:, -1:, :])[:, 0, :], dict(cache, prefix=prefix)  # (R, V)

    def reorder(self, cache: dict, rows: torch.Tensor) -> dict:
        # memory and source are equal across a source row's copies: only the prefixes move
        moved = {"prefix": cache["prefix"].index_select(0, rows)}
        if self.decoder_only:
            moved["mask"] = cache["mask"].index_select(0, rows)
        return dict(cache, **moved)


CACHED_DECODERS: dict[type[nn.Module], type] = {Transformer: TransformerIncremental, T5: T5Incremental, CausalLM: CausalLMIncremental}


def incremental_decoder(model: nn.Module, use_cache: bool = True):
    """The incremental decoder of `model`'s family; use_cache=False: the uncached reference."""
    for model_class, decoder_class in CACHED_DECODERS.items():
        if isinstance(model, model_class):
            cached = decoder_class(model)
            return cached if use_cache else PrefixDecoder(cached)
    raise TypeError(f"no incremental decoder for {type(model).__name__}")


__all__ = ["CausalLMIncremental", "PrefixDecoder", "T5Incremental", "TransformerIncremental", "incremental_decoder"]
