"""The T5 family in Flax Linen (twin of torch_impl/t5.py; architecture: shared/families/t5.py).

`T5(config).apply({"params": p}, src_ids (B, S), tgt_ids (B, T), src_mask=None)` -> logits (B, T, V),
with the methods of jax_impl.Transformer (encode, decode_hidden, project, decode). Dropout is on
exactly when a "dropout" RNG is passed, unless `deterministic` says otherwise. Submodules carry the
attribute names of the PyTorch twin, so shared/weight_table.py maps the params.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_impl.layers import Dense, activation, upcast_dtype
from shared.config import ModelConfig
from shared.families.t5 import is_tied, relative_position_buckets
from shared.numerics import mask_fill_value


class RMSNorm(nn.Module):
    """scale * x / sqrt(mean(x^2) + eps): no mean subtraction, no bias; statistics in float32."""

    config: ModelConfig

    def setup(self) -> None:
        self.scale = self.param("scale", nn.initializers.ones, (self.config.d_model,))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(upcast_dtype(x.dtype))
        variance = jnp.mean(jnp.square(h), axis=-1, keepdims=True)  # (..., 1)
        return self.scale.astype(x.dtype) * (h * jax.lax.rsqrt(variance + self.config.norm_eps)).astype(x.dtype)


class T5Attention(nn.Module):
    """softmax(Q K^T + position bias, masked) V over H heads: no 1/sqrt(K) scaling, no biases."""

    config: ModelConfig
    relative_bias: bool

    def setup(self) -> None:
        c = self.config
        inner = c.num_heads * c.head_dim
        self.q_proj = Dense(inner, use_bias=False)
        self.k_proj = Dense(inner, use_bias=False)
        self.v_proj = Dense(inner, use_bias=False)
        self.out_proj = Dense(c.d_model, use_bias=False)
        if self.relative_bias:
            self.relative_attention_bias = nn.Embed(c.relative_attention_num_buckets, c.num_heads)
        self.attn_dropout = nn.Dropout(c.attention_dropout)

    def position_bias(self, query_length: int, key_length: int, bidirectional: bool) -> jax.Array:
        """(1, H, Tq, Tk) bias looked up from the bucket of each relative position."""
        c = self.config
        buckets = relative_position_buckets(
            query_length, key_length, bidirectional, c.relative_attention_num_buckets, c.relative_attention_max_distance
        )  # numpy constant, folded into the compiled program
        values = self.relative_attention_bias.embedding[jnp.asarray(buckets)]  # (Tq, Tk, H)
        return values.transpose(2, 0, 1)[None]

    def split_heads(self, x: jax.Array) -> jax.Array:
        B, L, _ = x.shape
        return x.reshape(B, L, self.config.num_heads, self.config.head_dim).transpose(0, 2, 1, 3)  # (B, H, L, K)

    def __call__(self, x, memory, mask, bias, deterministic: bool) -> jax.Array:
        """x (B, T, D) attends to memory (B, S, D); mask (B, T|1, S) True where allowed; bias (1, H, T, S)."""
        q = self.split_heads(self.q_proj(x))  # (B, H, T, K)
        k = self.split_heads(self.k_proj(memory))  # (B, H, S, K)
        v = self.split_heads(self.v_proj(memory))  # (B, H, S, K)
        scores = jnp.einsum("bhtk,bhsk->bhts", q, k)  # (B, H, T, S), unscaled as in T5
        if bias is not None:
            scores = scores + bias.astype(scores.dtype)
        fill = mask_fill_value(jnp.dtype(scores.dtype).name)
        scores = jnp.where(mask[:, None, :, :], scores, jnp.asarray(fill, scores.dtype))
        probs = jax.nn.softmax(scores.astype(upcast_dtype(scores.dtype)), axis=-1).astype(v.dtype)
        probs = self.attn_dropout(probs, deterministic=deterministic)
        context = jnp.einsum("bhts,bhsk->bhtk", probs, v)  # (B, H, T, K)
        B, _, T, _ = context.shape
        return self.out_proj(context.transpose(0, 2, 1, 3).reshape(B, T, -1))  # (B, T, D)


class T5FeedForward(nn.Module):
    """wo(dropout(act(wi x))) (v1.0) or wo(dropout(act(wi_0 x) * wi_1 x)) (v1.1, gated): D -> F -> D."""

    config: ModelConfig

    def setup(self) -> None:
        c = self.config
        if c.gated_ffn:
            self.wi_0 = Dense(c.d_ff, use_bias=False)
            self.wi_1 = Dense(c.d_ff, use_bias=False)
        else:
            self.wi = Dense(c.d_ff, use_bias=False)
        self.wo = Dense(c.d_model, use_bias=False)
        self.dropout = nn.Dropout(c.dropout)

    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if self.config.gated_ffn:
            hidden = activation(self.config.activation, self.wi_0(x)) * self.wi_1(x)  # (B, L, F)
        else:
            hidden = activation(self.config.activation, self.wi(x))  # (B, L, F)
        return self.wo(self.dropout(hidden, deterministic=deterministic))


class T5EncoderLayer(nn.Module):
    config: ModelConfig
    first: bool

    def setup(self) -> None:
        self.self_attn = T5Attention(self.config, relative_bias=self.first)
        self.self_attn_norm = RMSNorm(self.config)
        self.ffn = T5FeedForward(self.config)
        self.ffn_norm = RMSNorm(self.config)
        self.dropout = nn.Dropout(self.config.dropout)

    def __call__(self, x, mask, bias, deterministic: bool):
        det = deterministic
        h = self.self_attn_norm(x)
        x = x + self.dropout(self.self_attn(h, h, mask, bias, det), deterministic=det)
        return x + self.dropout(self.ffn(self.ffn_norm(x), det), deterministic=det)


class T5DecoderLayer(nn.Module):
    config: ModelConfig
    first: bool

    def setup(self) -> None:
        self.self_attn = T5Attention(self.config, relative_bias=self.first)
        self.self_attn_norm = RMSNorm(self.config)
        self.cross_attn = T5Attention(self.config, relative_bias=False)
        self.cross_attn_norm = RMSNorm(self.config)
        self.ffn = T5FeedForward(self.config)
        self.ffn_norm = RMSNorm(self.config)
        self.dropout = nn.Dropout(self.config.dropout)

    def __call__(self, y, memory, self_mask, cross_mask, bias, deterministic: bool):
        det = deterministic
        h = self.self_attn_norm(y)
        y = y + self.dropout(self.self_attn(h, h, self_mask, bias, det), deterministic=det)
        y = y + self.dropout(self.cross_attn(self.cross_attn_norm(y), memory, cross_mask, None, det), deterministic=det)
        return y + self.dropout(self.ffn(self.ffn_norm(y), det), deterministic=det)


class T5Encoder(nn.Module):
    """dropout(embeddings) -> layers -> final RMS norm -> dropout, with the first layer's position bias."""

    config: ModelConfig

    def setup(self) -> None:
        self.layers = [T5EncoderLayer(self.config, first=i == 0) for i in range(self.config.num_encoder_layers)]
        self.final_norm = RMSNorm(self.config)
        self.dropout = nn.Dropout(self.config.embedding_dropout)  # on the embeddings and after final_norm

    def __call__(self, x, mask, deterministic: bool):
        S = x.shape[1]
        bias = self.layers[0].self_attn.position_bias(S, S, True) if self.layers else None  # (1, H, S, S)
        x = self.dropout(x, deterministic=deterministic)
        for layer in self.layers:
            x = layer(x, mask, bias, deterministic)
        return self.dropout(self.final_norm(x), deterministic=deterministic)


class T5Decoder(nn.Module):
    config: ModelConfig

    def setup(self) -> None:
        self.layers = [T5DecoderLayer(self.config, first=i == 0) for i in range(self.config.num_decoder_layers)]
        self.final_norm = RMSNorm(self.config)
        self.dropout = nn.Dropout(self.config.embedding_dropout)  # on the embeddings and after final_norm

    def __call__(self, y, memory, self_mask, cross_mask, deterministic: bool):
        T = y.shape[1]
        bias = self.layers[0].self_attn.position_bias(T, T, False) if self.layers else None  # (1, H, T, T)
        y = self.dropout(y, deterministic=deterministic)
        for layer in self.layers:
            y = layer(y, memory, self_mask, cross_mask, bias, deterministic)
        return self.dropout(self.final_norm(y), deterministic=deterministic)


def source_mask(src_ids: jax.Array, pad_id: int, src_mask: jax.Array | None) -> jax.Array:
    """(B, S) -> (B, 1, S) keys that may be attended: the explicit mask, else the non-pad positions."""
    keep = (src_ids != pad_id) if src_mask is None else jnp.asarray(src_mask).astype(bool)
    return keep[:, None, :]


def causal_mask(length: int) -> jax.Array:
    """(1, T, T): position t sees positions <= t. Never from the tokens: the start token is the pad id."""
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None]


class T5(nn.Module):
    """T5 encoder-decoder: apply(params, src_ids (B, S), tgt_ids (B, T), src_mask=None) -> logits (B, T, V)."""

    config: ModelConfig

    def setup(self) -> None:
        c = self.config
        self.shared_embed = nn.Embed(c.tgt_vocab_size, c.d_model)
        self.encoder = T5Encoder(c)
        self.decoder = T5Decoder(c)
        if not is_tied(c):
            self.output_proj = Dense(c.tgt_vocab_size, use_bias=False)

    def _deterministic(self, deterministic: bool | None) -> bool:
        return not self.has_rng("dropout") if deterministic is None else deterministic

    def encode(self, src_ids, src_mask=None, deterministic: bool | None = None) -> jax.Array:
        """(B, S) -> memory (B, S, D)."""
        det = self._deterministic(deterministic)
        return self.encoder(self.shared_embed(src_ids), source_mask(src_ids, self.config.pad_id, src_mask), det)

    def decode_hidden(self, memory, src_ids, tgt_ids, src_mask=None, deterministic: bool | None = None) -> jax.Array:
        """memory (B, S, D), src (B, S), tgt (B, T) -> decoder output (B, T, D), before projection."""
        det = self._deterministic(deterministic)
        cross = source_mask(src_ids, self.config.pad_id, src_mask)
        return self.decoder(self.shared_embed(tgt_ids), memory, causal_mask(tgt_ids.shape[1]), cross, det)

    def decode(self, memory, src_ids, tgt_ids, src_mask=None, deterministic: bool | None = None) -> jax.Array:
        """memory (B, S, D), src (B, S), tgt (B, T) -> logits (B, T, V)."""
        return self.project(self.decode_hidden(memory, src_ids, tgt_ids, src_mask, deterministic))

    def project(self, y: jax.Array) -> jax.Array:
        """(B, T, D) -> logits (B, T, V): the tied table after a d_model**-0.5 rescale, or output_proj."""
        if is_tied(self.config):
            return self.shared_embed.attend(y * self.config.d_model**-0.5)
        return self.output_proj(y)

    def __call__(self, src_ids, tgt_ids, src_mask=None, deterministic: bool | None = None) -> jax.Array:
        return self.decode(self.encode(src_ids, src_mask, deterministic), src_ids, tgt_ids, src_mask, deterministic)
