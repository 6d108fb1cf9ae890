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

from jax_impl.attention import Attention, empty_cache, padding_mask as keys_mask, reorder_rows
from jax_impl.layers import Dense, Dropout, FeedForward, Norm, OutputBias, linear, residual, round_to, upcast_dtype
from jax_impl.positions import sinusoid
from shared.config.model_config import ModelConfig


def book_attention(config: ModelConfig, dtype, kernel: str) -> Attention:
    """The book's attention: q/k/v/out_proj with the config's biases, scaled by 1/sqrt(K)."""
    return Attention(config, dtype, kernel, use_bias=config.bias)


def book_ffn(config: ModelConfig, dtype) -> FeedForward:
    return FeedForward(config, dtype, names=(None, "fc1", "fc2"), use_bias=config.bias)


class EncoderLayer(nn.Module):
    config: ModelConfig
    dtype: Any = None  # compute dtype of the matmuls (shared/parity/mixed_precision.py); None: the params'
    attention: str = "math"  # attention kernel: "math" or "fused" (jax_impl/attention.py)

    def setup(self) -> None:
        self.self_attn = book_attention(self.config, self.dtype, self.attention)
        self.self_attn_norm = Norm(self.config)
        self.ffn = book_ffn(self.config, self.dtype)
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
        self.self_attn = book_attention(self.config, self.dtype, self.attention)
        self.self_attn_norm = Norm(self.config)
        self.cross_attn = book_attention(self.config, self.dtype, self.attention)
        self.cross_attn_norm = Norm(self.config)
        self.ffn = book_ffn(self.config, self.dtype)
        self.ffn_norm = Norm(self.config)
        self.dropout = Dropout(self.config.dropout)

    def __call__(self, y, memory, self_mask, cross_mask, deterministic: bool):
        pre, det = self.config.norm_placement == "pre", deterministic
        y = residual(y, self.self_attn_norm, lambda h: self.self_attn(h, h, self_mask, det), self.dropout, pre, det)
        y = residual(y, self.cross_attn_norm, lambda h: self.cross_attn(h, memory, cross_mask, det), self.dropout, pre, det)
        return residual(y, self.ffn_norm, lambda h: self.ffn(h, det), self.dropout, pre, det)

    def step(self, y, layer_cache: dict, t, self_mask, cross_mask) -> tuple[jax.Array, dict]:
        """__call__ for the one position t (dropout off): y (B, 1, D) -> (B, 1, D), updated layer_cache.

        Writes this position's self-attention key and value into slot t of the (B, H, N, K) cache
        and attends over all N slots, self_mask hiding the slots after t; cross-attention reads the
        keys/values of the memory computed once.
        """
        pre, cache = self.config.norm_placement == "pre", dict(layer_cache)

        def self_block(h):
            out, cache["self"] = self.self_attn.cached(h, cache["self"], t, self_mask)
            return out

        def cross_block(h):
            q = self.cross_attn.queries(h)  # (B, H, 1, K)
            return self.cross_attn.attend(q, cache["cross"]["k"], cache["cross"]["v"], cross_mask, True)

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


def padding_mask(ids: jax.Array, pad_id: int, keep: jax.Array | None = None) -> jax.Array:
    """(B, L) ids -> (B, 1, L) keys that may be attended: `keep` (B, L) if given, else the non-pad ids."""
    return keys_mask((ids != pad_id) if keep is None else jnp.asarray(keep).astype(bool))


def causal_mask(tgt_ids: jax.Array, pad_id: int) -> jax.Array:
    """(B, T) ids -> (B, T, T): position t sees non-pad positions <= t."""
    T = tgt_ids.shape[1]
    return padding_mask(tgt_ids, pad_id) & jnp.tril(jnp.ones((T, T), dtype=bool))[None]


class Transformer(nn.Module):
    """Encoder-decoder Transformer: apply(params, src_ids (B, S), tgt_ids (B, T)) -> logits (B, T, V).

    `dtype` is the compute dtype of every matmul (None: the parameters' own dtype; "bfloat16" with
    float32 params is bf16-mixed, the twin of torch.autocast: shared/parity/mixed_precision.py).
    `attention` picks the attention kernel ("math" or "fused", see jax_impl/attention.py); the
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
            h = h + sinusoid(self.config.max_len, self.config.d_model, L, start, h.dtype)
        return self.embed_dropout(round_to(h, x.dtype), deterministic=deterministic)

    def _deterministic(self, deterministic: bool | None) -> bool:
        return not self.has_rng("dropout") if deterministic is None else deterministic

    # -- public API --------------------------------------------------------------------------------
    def encode(self, src_ids: jax.Array, src_mask=None, deterministic: bool | None = None) -> jax.Array:
        """(B, S) -> memory (B, S, D). src_mask (B, S) real tokens (None: the non-pad ids)."""
        det = self._deterministic(deterministic)
        x = self._embed(self._tables()[0], src_ids, det)
        return self.encoder(x, padding_mask(src_ids, self.config.pad_id, src_mask), det)

    def decode_hidden(self, memory, src_ids, tgt_ids, src_mask=None, deterministic: bool | None = None) -> jax.Array:
        """memory (B, S, D), src (B, S), tgt (B, T) -> decoder output (B, T, D), before projection."""
        det, pad = self._deterministic(deterministic), self.config.pad_id
        y = self._embed(self._tables()[1], tgt_ids, det)
        return self.decoder(y, memory, causal_mask(tgt_ids, pad), padding_mask(src_ids, pad, src_mask), det)

    def decode(self, memory, src_ids, tgt_ids, src_mask=None, deterministic: bool | None = None) -> jax.Array:
        """memory (B, S, D), src (B, S), tgt (B, T) -> logits (B, T, V)."""
        return self.project(self.decode_hidden(memory, src_ids, tgt_ids, src_mask, deterministic))

    def project(self, y: jax.Array) -> jax.Array:
        """(B, T, D) -> logits (B, T, V), through the output layer or the tied embedding."""
        if self.config.tie_embeddings == "none":
            return self.output_proj(y)
        # A Dense whose kernel is the table (V, D) transposed, as torch_impl's F.linear: the bias
        # joins the float32 accumulator and 16-bit logits are rounded once.
        table = self._tables()[1].embedding
        return linear(y, table.T, self.output_proj.bias if self.config.bias else None, self.dtype)

    def __call__(self, src_ids, tgt_ids, src_mask=None, deterministic: bool | None = None) -> jax.Array:
        return self.decode(self.encode(src_ids, src_mask, deterministic), src_ids, tgt_ids, src_mask, deterministic)

    # -- incremental decoding (the KV cache; the loop is jax_impl/generate.py) ------------------------
    def start_cache(self, src_ids: jax.Array, src_mask: jax.Array, steps: int, copies: int = 1) -> dict:
        """src (B, S), src_mask (B, S) -> a decoding cache for B*C rows (row b*C + c is copy c of row b).

        The source is encoded once (dropout off); each decoder layer's cross-attention keys/values
        are computed once from the memory; self-attention keys/values get N empty slots.
        """
        memory = jnp.repeat(self.encode(src_ids, src_mask, deterministic=True), copies, axis=0)  # (B*C, S, D)
        src_ok = jnp.repeat(jnp.asarray(src_mask).astype(bool), copies, axis=0)  # (B*C, S)
        rows, c = memory.shape[0], self.config
        layers = []
        for layer in self.decoder.layers:
            self_cache = empty_cache(rows, c.num_heads, steps, c.head_dim, memory.dtype if self.dtype is None else self.dtype)
            layers.append({"self": self_cache, "cross": layer.cross_attn.keys_values(memory)})  # cross (B*C, H, S, K)
        key_ok = jnp.zeros((rows, steps), bool)  # (B*C, N)
        return {"layers": layers, "key_ok": key_ok, "src_ok": src_ok}

    def decode_step(self, cache: dict, tokens: jax.Array, t) -> tuple[jax.Array, dict]:
        """Feed tokens (B,) at position t (BOS at 0) -> next-token logits (B, V), the updated cache.

        decode(...)[:, t] of the prefix fed so far, computed from the cache with the same masks (a
        PAD token's key is hidden from later positions); dropout off.
        """
        key_ok = jax.lax.dynamic_update_slice_in_dim(cache["key_ok"], (tokens != self.config.pad_id)[:, None], t, axis=1)
        self_mask = keys_mask(key_ok)  # (B, 1, N): slots <= t holding a token
        cross_mask = keys_mask(cache["src_ok"])  # (B, 1, S)
        y = self._embed(self._tables()[1], tokens[:, None], True, start=t)  # (B, 1, D)
        y, layers = self.decoder.step(y, cache, t, self_mask, cross_mask)
        return self.project(y)[:, 0, :], dict(cache, layers=layers, key_ok=key_ok)  # (B, V)

    @staticmethod
    def reorder_cache(cache: dict, rows: jax.Array) -> dict:
        """Row i continues row rows[i]; the cross keys/values are equal across a row's copies: kept."""
        layers = [dict(layer, self=reorder_rows(layer["self"], rows)) for layer in cache["layers"]]
        return dict(cache, layers=layers, key_ok=reorder_rows(cache["key_ok"], rows))
