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

    def setup(self) -> None:
        self.self_attn = MultiHeadAttention(self.config, self.dtype)
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

    def setup(self) -> None:
        self.self_attn = MultiHeadAttention(self.config, self.dtype)
        self.self_attn_norm = Norm(self.config)
        self.cross_attn = MultiHeadAttention(self.config, self.dtype)
        self.cross_attn_norm = Norm(self.config)
        self.ffn = FeedForward(self.config, self.dtype)
        self.ffn_norm = Norm(self.config)
        self.dropout = Dropout(self.config.dropout)

    def __call__(self, y, memory, self_mask, cross_mask, deterministic: bool):
        pre, det = self.config.norm_placement == "pre", deterministic
        y = residual(y, self.self_attn_norm, lambda h: self.self_attn(h, h, self_mask, det), self.dropout, pre, det)
        y = residual(y, self.cross_attn_norm, lambda h: self.cross_attn(h, memory, cross_mask, det), self.dropout, pre, det)
        return residual(y, self.ffn_norm, lambda h: self.ffn(h, det), self.dropout, pre, det)


class Encoder(nn.Module):
    config: ModelConfig
    dtype: Any = None

    def setup(self) -> None:
        self.layers = [EncoderLayer(self.config, self.dtype) for _ in range(self.config.num_encoder_layers)]
        self.final_norm = Norm(self.config) if self.config.final_norms else None

    def __call__(self, x, src_mask, deterministic: bool):
        for layer in self.layers:
            x = layer(x, src_mask, deterministic)
        return self.final_norm(x) if self.final_norm is not None else x


class Decoder(nn.Module):
    config: ModelConfig
    dtype: Any = None

    def setup(self) -> None:
        self.layers = [DecoderLayer(self.config, self.dtype) for _ in range(self.config.num_decoder_layers)]
        self.final_norm = Norm(self.config) if self.config.final_norms else None

    def __call__(self, y, memory, self_mask, cross_mask, deterministic: bool):
        for layer in self.layers:
            y = layer(y, memory, self_mask, cross_mask, deterministic)
        return self.final_norm(y) if self.final_norm is not None else y


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
    """

    config: ModelConfig
    dtype: Any = None

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
        self.encoder = Encoder(c, self.dtype)
        self.decoder = Decoder(c, self.dtype)
        if c.tie_embeddings == "none":
            self.output_proj = Dense(c.tgt_vocab_size, use_bias=c.bias, dtype=self.dtype)
        elif c.bias:
            self.output_proj = OutputBias(c.tgt_vocab_size)

    # -- embeddings --------------------------------------------------------------------------------
    def _tables(self) -> tuple[nn.Embed, nn.Embed]:
        if self.config.tie_embeddings == "all":
            return self.shared_embed, self.shared_embed
        return self.src_embed, self.tgt_embed

    def _embed(self, table: nn.Embed, ids: jax.Array, deterministic: bool) -> jax.Array:
        """(B, L) ids -> (B, L, D): embedding (* sqrt(D)) + position, then dropout.

        One float32 chain for 16-bit tables, rounded once to the table's dtype (as torch_impl):
        `x * sqrt(D)` on a bf16 array would also round sqrt(D) itself to bf16.
        """
        L = ids.shape[1]
        if L > self.config.max_len:
            raise ValueError(f"sequence length {L} exceeds max_len {self.config.max_len}")
        x = table(ids)
        h = x.astype(upcast_dtype(x.dtype))
        if self.config.scale_embeddings:
            h = h * math.sqrt(self.config.d_model)
        if self.config.positional == "learned":
            h = h + self.pos_embed(jnp.arange(L)).astype(h.dtype)
        else:
            # A numpy constant, folded into the compiled program: the same float32 table as torch.
            h = h + jnp.asarray(sinusoid_table(self.config.max_len, self.config.d_model)[:L], h.dtype)
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


def init_params(config: ModelConfig, rng: jax.Array, batch: int = 1, length: int = 1) -> dict:
    """Fresh parameters for `config` (a tiny dummy batch is enough to trace shapes)."""
    from jax_impl.registry import build_model  # local import: the registry imports this module

    ids = np.ones((batch, length), dtype=np.int32)
    return build_model(config).init(rng, ids, ids, deterministic=True)["params"]
