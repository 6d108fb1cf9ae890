"""The Flax Linen encoder-decoder Transformer (functional twin of torch_impl/model.py).

`model.apply({"params": params}, src_ids, tgt_ids)` -> logits (B, T, V). Dropout is on exactly
when a "dropout" RNG is passed (`rngs={"dropout": key}`), unless `deterministic` says otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from shared.config import ModelConfig
from shared.numerics import sinusoid_table
from jax_impl.layers import (
    Dense,
    Dropout,
    FeedForward,
    MultiHeadAttention,
    Norm,
    OutputBias,
    linear,
    residual,
    round_to,
    upcast_dtype,
)


class EncoderLayer(nn.Module):
    config: ModelConfig
    dtype: Any = None  # compute dtype of the matmuls (shared/mixed_precision.py); None: the params'
    attention: str = "math"  # attention kernel: "math" or "fused" (layers.MultiHeadAttention)

    def setup(self) -> None:
        self.self_attn = MultiHeadAttention(self.config, self.dtype, self.attention)
        self.self_attn_norm = Norm(self.config)
        self.ffn = FeedForward(self.config, self.dtype)
        self.ffn_norm = Norm(self.config)
        self.dropout = Dropout(self.config.dropout)

    def __call__(self, x, src_mask, deterministic: bool):
        pre, det = self.config.norm_placement == "pre", deterministic
        x = residual(x, self.self_attn_norm, lambda h: self.self_attn(h, h, src_mask, det), self.dropout, pre, det)
        return residual(x, self.ffn_norm, lambda h: self.ffn(h, det), self.dropout, pre, det)


class DecoderLayer(nn.Module):
    config: ModelConfig
    dtype: Any = None
    attention: str = "math"

    def setup(self) -> None:
        self.self_attn = MultiHeadAttention(self.config, self.dtype, self.attention)
        self.self_attn_norm = Norm(self.config)
        self.cross_attn = MultiHeadAttention(self.config, self.dtype, self.attention)
        self.cross_attn_norm = Norm(self.config)
        self.ffn = FeedForward(self.config, self.dtype)
        self.ffn_norm = Norm(self.config)
        self.dropout = Dropout(self.config.dropout)

    def __call__(self, y, memory, self_mask, cross_mask, deterministic: bool):
        pre, det = self.config.norm_placement == "pre", deterministic
        y = residual(y, self.self_attn_norm, lambda h: self.self_attn(h, h, self_mask, det), self.dropout, pre, det)
        y = residual(y, self.cross_attn_norm, lambda h: self.cross_attn(h, memory, cross_mask, det), self.dropout, pre, det)
        return residual(y, self.ffn_norm, lambda h: self.ffn(h, det), self.dropout, pre, det)

    def step(self, y, layer_cache: dict, t, self_mask, cross_mask) -> tuple[jax.Array, dict]:
        """__call__ for the one position t (dropout off): y (B, 1, D) -> (B, 1, D), updated layer_cache.

        Writes this position's self-attention key and value into slot t of the (B, H, N, K)
        cache and attends over all N slots, self_mask hiding the slots after t; cross-attention
        reads the keys/values of the memory computed once.
        """
        pre, cache = self.config.norm_placement == "pre", dict(layer_cache)

        def self_block(h):
            q, k, v = self.self_attn.queries(h), *self.self_attn.keys_values(h)  # (B, H, 1, K)
            cache["self_k"] = jax.lax.dynamic_update_slice_in_dim(cache["self_k"], k, t, axis=2)
            cache["self_v"] = jax.lax.dynamic_update_slice_in_dim(cache["self_v"], v, t, axis=2)
            return self.self_attn.attend(q, cache["self_k"], cache["self_v"], self_mask, True)

        def cross_block(h):
            q = self.cross_attn.queries(h)  # (B, H, 1, K)
            return self.cross_attn.attend(q, cache["cross_k"], cache["cross_v"], cross_mask, True)

        y = residual(y, self.self_attn_norm, self_block, self.dropout, pre, True)
        y = residual(y, self.cross_attn_norm, cross_block, self.dropout, pre, True)
        return residual(y, self.ffn_norm, lambda h: self.ffn(h, True), self.dropout, pre, True), cache


class Encoder(nn.Module):
    config: ModelConfig
    dtype: Any = None
    attention: str = "math"

    def setup(self) -> None:
        self.layers = [EncoderLayer(self.config, self.dtype, self.attention) for _ in range(self.config.num_encoder_layers)]
        self.final_norm = Norm(self.config) if self.config.final_norms else None

    def __call__(self, x, src_mask, deterministic: bool):
        for layer in self.layers:
            x = layer(x, src_mask, deterministic)
        return self.final_norm(x) if self.final_norm is not None else x


class Decoder(nn.Module):
    config: ModelConfig
    dtype: Any = None
    attention: str = "math"

    def setup(self) -> None:
        self.layers = [DecoderLayer(self.config, self.dtype, self.attention) for _ in range(self.config.num_decoder_layers)]
        self.final_norm = Norm(self.config) if self.config.final_norms else None

    def __call__(self, y, memory, self_mask, cross_mask, deterministic: bool):
        for layer in self.layers:
            y = layer(y, memory, self_mask, cross_mask, deterministic)
        return self.final_norm(y) if self.final_norm is not None else y

    def step(self, y, cache: dict, t, self_mask, cross_mask) -> tuple[jax.Array, list[dict]]:
        """__call__ for position t alone: y (B, 1, D) -> (B, 1, D), the updated per-layer caches."""
        layers = []
        for layer, layer_cache in zip(self.layers, cache["layers"]):
            y, layer_cache = layer.step(y, layer_cache, t, self_mask, cross_mask)
            layers.append(layer_cache)
        return (self.final_norm(y) if self.final_norm is not None else y), layers


def padding_mask(ids: jax.Array, pad_id: int) -> jax.Array:
    """(B, L) ids -> (B, 1, L) keys that may be attended (True = real token)."""
    return (ids != pad_id)[:, None, :]


def causal_mask(tgt_ids: jax.Array, pad_id: int) -> jax.Array:
    """(B, T) ids -> (B, T, T): position t sees non-pad positions <= t."""
    T = tgt_ids.shape[1]
    return padding_mask(tgt_ids, pad_id) & jnp.tril(jnp.ones((T, T), dtype=bool))[None]


class Transformer(nn.Module):
    """Encoder-decoder Transformer: apply(params, src_ids (B, S), tgt_ids (B, T)) -> logits (B, T, V).

    `dtype` is the compute dtype of every matmul (None: the parameters' own dtype; "bfloat16" with
    float32 params is bf16-mixed, the twin of torch.autocast: shared/mixed_precision.py).
    `attention` picks the attention kernel ("math" or "fused", see layers.MultiHeadAttention); the
    params are the same for both.
    """

    config: ModelConfig
    dtype: Any = None
    attention: str = "math"

    def setup(self) -> None:
        c = self.config
        if c.tie_embeddings == "all":
            self.shared_embed = nn.Embed(c.tgt_vocab_size, c.d_model)
        else:
            self.src_embed = nn.Embed(c.src_vocab_size, c.d_model)
            self.tgt_embed = nn.Embed(c.tgt_vocab_size, c.d_model)
        if c.positional == "learned":
            self.pos_embed = nn.Embed(c.max_len, c.d_model)
        self.embed_dropout = Dropout(c.embedding_dropout)
        self.encoder = Encoder(c, self.dtype, self.attention)
        self.decoder = Decoder(c, self.dtype, self.attention)
        if c.tie_embeddings == "none":
            self.output_proj = Dense(c.tgt_vocab_size, use_bias=c.bias, dtype=self.dtype)
        elif c.bias:
            self.output_proj = OutputBias(c.tgt_vocab_size)

    # -- embeddings --------------------------------------------------------------------------------
    def _tables(self) -> tuple[nn.Embed, nn.Embed]:
        if self.config.tie_embeddings == "all":
            return self.shared_embed, self.shared_embed
        return self.src_embed, self.tgt_embed

    def _embed(self, table: nn.Embed, ids: jax.Array, deterministic: bool, start=None) -> jax.Array:
        """(B, L) ids -> (B, L, D): embedding (* sqrt(D)) + position, then dropout.

        One float32 chain for 16-bit tables, rounded once to the table's dtype (as torch_impl):
        `x * sqrt(D)` on a bf16 array would also round sqrt(D) itself to bf16.
        start (a traced int, incremental decoding) says the ids sit at positions start .. start + L - 1.
        """
        L = ids.shape[1]
        if L > self.config.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {self.config.max_len}")
        x = table(ids)
        h = x.astype(upcast_dtype(x.dtype))
        if self.config.scale_embeddings:
            h = h * math.sqrt(self.config.d_model)
        if self.config.positional == "learned":
            h = h + self.pos_embed(jnp.arange(L) if start is None else start + jnp.arange(L)).astype(h.dtype)
        else:
            # A numpy constant, folded into the compiled program: the same float32 table as torch.
            table = sinusoid_table(self.config.max_len, self.config.d_model)
            rows = table[:L] if start is None else jax.lax.dynamic_slice_in_dim(jnp.asarray(table), start, L)
            h = h + jnp.asarray(rows, h.dtype)
        return self.embed_dropout(round_to(h, x.dtype), deterministic=deterministic)

    def _deterministic(self, deterministic: bool | None) -> bool:
        return not self.has_rng("dropout") if deterministic is None else deterministic

    # -- public API --------------------------------------------------------------------------------
    def encode(self, src_ids: jax.Array, deterministic: bool | None = None) -> jax.Array:
        """(B, S) -> memory (B, S, D)."""
        det = self._deterministic(deterministic)
        x = self._embed(self._tables()[0], src_ids, det)
        return self.encoder(x, padding_mask(src_ids, self.config.pad_id), det)

    def decode_hidden(self, memory, src_ids, tgt_ids, deterministic: bool | None = None) -> jax.Array:
        """memory (B, S, D), src (B, S), tgt (B, T) -> decoder output (B, T, D), before projection."""
        det, pad = self._deterministic(deterministic), self.config.pad_id
        y = self._embed(self._tables()[1], tgt_ids, det)
        return self.decoder(y, memory, causal_mask(tgt_ids, pad), padding_mask(src_ids, pad), det)

    def decode(self, memory, src_ids, tgt_ids, deterministic: bool | None = None) -> jax.Array:
        """memory (B, S, D), src (B, S), tgt (B, T) -> logits (B, T, V)."""
        return self.project(self.decode_hidden(memory, src_ids, tgt_ids, deterministic))

    def project(self, y: jax.Array) -> jax.Array:
        """(B, T, D) -> logits (B, T, V), through the output layer or the tied embedding."""
        if self.config.tie_embeddings == "none":
            return self.output_proj(y)
        # A Dense whose kernel is the table (V, D) transposed, as torch_impl's F.linear: the bias
        # joins the float32 accumulator and 16-bit logits are rounded once.
        table = self._tables()[1].embedding
        return linear(y, table.T, self.output_proj.bias if self.config.bias else None, self.dtype)

    def __call__(self, src_ids, tgt_ids, deterministic: bool | None = None) -> jax.Array:
        return self.decode(self.encode(src_ids, deterministic), src_ids, tgt_ids, deterministic)

    # -- incremental decoding (the KV cache; the algorithms are in jax_impl/decoding.py) -----------
    def start_cache(self, src_ids: jax.Array, steps: int, copies: int = 1) -> dict:
        """src (B, S) -> a decoding cache for B*C rows (row b*C + c is copy c of source row b).

        The source is encoded once (dropout off); each decoder layer's cross-attention keys/values
        are computed once from the memory; self-attention keys/values get N empty slots.
        """
        memory = jnp.repeat(self.encode(src_ids, deterministic=True), copies, axis=0)  # (B*C, S, D)
        src_ok = jnp.repeat(src_ids != self.config.pad_id, copies, axis=0)  # (B*C, S)
        rows, H, K = memory.shape[0], self.config.num_heads, self.config.head_dim
        empty = jnp.zeros((rows, H, steps, K), memory.dtype)  # (B*C, H, N, K)
        layers = []
        for layer in self.decoder.layers:
            cross_k, cross_v = layer.cross_attn.keys_values(memory)  # (B*C, H, S, K)
            layers.append({"self_k": empty, "self_v": empty, "cross_k": cross_k, "cross_v": cross_v})
        key_ok = jnp.zeros((rows, steps), bool)  # (B*C, N)
        return {"layers": layers, "key_ok": key_ok, "src_ok": src_ok}

    def decode_step(self, cache: dict, tokens: jax.Array, t) -> tuple[jax.Array, dict]:
        """Feed tokens (B,) at position t (BOS at 0) -> next-token logits (B, V), the updated cache.

        decode(...)[:, t] of the prefix fed so far, computed from the cache with the same masks (a
        PAD token's key is hidden from later positions); dropout off.
        """
        key_ok = jax.lax.dynamic_update_slice_in_dim(cache["key_ok"], (tokens != self.config.pad_id)[:, None], t, axis=1)
        self_mask = key_ok[:, None, :]  # (B, 1, N): slots <= t holding a token
        cross_mask = cache["src_ok"][:, None, :]  # (B, 1, S)
        y = self._embed(self._tables()[1], tokens[:, None], True, start=t)  # (B, 1, D)
        y, layers = self.decoder.step(y, cache, t, self_mask, cross_mask)
        return self.project(y)[:, 0, :], dict(cache, layers=layers, key_ok=key_ok)  # (B, V)


def init_params(config: ModelConfig, rng: jax.Array, batch: int = 1, length: int = 1) -> dict:
    """Fresh parameters for `config` (a tiny dummy batch is enough to trace shapes)."""
    from jax_impl.registry import build_model  # local import: the registry imports this module

    ids = np.ones((batch, length), dtype=np.int32)
    return build_model(config).init(rng, ids, ids, deterministic=True)["params"]
