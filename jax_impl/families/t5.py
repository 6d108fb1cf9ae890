"""The T5 family in Flax Linen (twin of torch_impl's; architecture: shared/families/t5.py).

`T5(config).apply({"params": p}, src_ids (B, S), tgt_ids (B, T), src_mask=None)` -> logits (B, T, V),
with the methods of the book Transformer (encode, decode_hidden, project, decode) and its
incremental decoding (start_cache, decode_step, reorder_cache). Dropout is on exactly when a
"dropout" RNG is passed, unless `deterministic` says otherwise. Submodules carry the attribute
names of the PyTorch twin, so shared/checkpoints/weight_table.py maps the params.

Composed of the shared layers: jax_impl/attention.py (unscaled, no biases, the first layer's
relative_attention_bias), layers.Norm (RMS), layers.FeedForward (wi/wo or gated wi_0/wi_1/wo),
positions.relative_bias.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_impl.attention import Attention, causal_mask as causal, empty_cache, padding_mask, reorder_rows
from jax_impl.layers import Dense, Dropout, FeedForward, Norm, linear, residual
from jax_impl.positions import relative_buckets
from shared.config.model_config import ModelConfig
from shared.families.t5 import is_tied


def t5_attention(config: ModelConfig, dtype, kernel: str, relative_bias: bool) -> Attention:
    """softmax(Q K^T + position bias, masked) V: no 1/sqrt(K) scaling, no biases."""
    buckets = config.relative_attention_num_buckets if relative_bias else 0
    return Attention(config, dtype, kernel, use_bias=False, scaled=False, relative_buckets=buckets)


def t5_ffn(config: ModelConfig, dtype) -> FeedForward:
    """wo(dropout(act(wi x))) (v1.0) or wo(dropout(act(wi_0 x) * wi_1 x)) (v1.1, gated)."""
    names = ("wi_0", "wi_1", "wo") if config.gated_ffn else (None, "wi", "wo")
    return FeedForward(config, dtype, names=names, use_bias=False)


class T5EncoderLayer(nn.Module):
    config: ModelConfig
    first: bool
    dtype: Any = None
    attention: str = "math"

    def setup(self) -> None:
        self.self_attn = t5_attention(self.config, self.dtype, self.attention, relative_bias=self.first)
        self.self_attn_norm = Norm(self.config)
        self.ffn = t5_ffn(self.config, self.dtype)
        self.ffn_norm = Norm(self.config)
        self.dropout = Dropout(self.config.dropout)

    def __call__(self, x, mask, bias, deterministic: bool):
        det = deterministic
        x = residual(x, self.self_attn_norm, lambda h: self.self_attn(h, h, mask, det, bias), self.dropout, True, det)
        return residual(x, self.ffn_norm, lambda h: self.ffn(h, det), self.dropout, True, det)


class T5DecoderLayer(nn.Module):
    config: ModelConfig
    first: bool
    dtype: Any = None
    attention: str = "math"

    def setup(self) -> None:
        self.self_attn = t5_attention(self.config, self.dtype, self.attention, relative_bias=self.first)
        self.self_attn_norm = Norm(self.config)
        self.cross_attn = t5_attention(self.config, self.dtype, self.attention, relative_bias=False)
        self.cross_attn_norm = Norm(self.config)
        self.ffn = t5_ffn(self.config, self.dtype)
        self.ffn_norm = Norm(self.config)
        self.dropout = Dropout(self.config.dropout)

    def __call__(self, y, memory, self_mask, cross_mask, bias, deterministic: bool):
        det = deterministic
        y = residual(y, self.self_attn_norm, lambda h: self.self_attn(h, h, self_mask, det, bias), self.dropout, True, det)
        y = residual(y, self.cross_attn_norm, lambda h: self.cross_attn(h, memory, cross_mask, det), self.dropout, True, det)
        return residual(y, self.ffn_norm, lambda h: self.ffn(h, det), self.dropout, True, det)

    def step(self, y, layer_cache: dict, t, self_mask, cross_mask, bias) -> tuple[jax.Array, dict]:
        """__call__ for position t alone (dropout off): y (B, 1, D), the key/value cache of slots 0..N-1."""
        cache = dict(layer_cache)

        def self_block(h):
            out, cache["self"] = self.self_attn.cached(h, cache["self"], t, self_mask, bias)
            return out

        def cross_block(h):
            q = self.cross_attn.queries(h)  # (B, H, 1, K)
            return self.cross_attn.attend(q, cache["cross"]["k"], cache["cross"]["v"], cross_mask, True)

        y = residual(y, self.self_attn_norm, self_block, self.dropout, True, True)
        y = residual(y, self.cross_attn_norm, cross_block, self.dropout, True, True)
        return residual(y, self.ffn_norm, lambda h: self.ffn(h, True), self.dropout, True, True), cache


class T5Encoder(nn.Module):
    """dropout(embeddings) -> layers -> final RMS norm -> dropout, with the first layer's position bias."""

    config: ModelConfig
    dtype: Any = None
    attention: str = "math"

    def setup(self) -> None:
        c = self.config
        self.layers = [T5EncoderLayer(c, i == 0, self.dtype, self.attention) for i in range(c.num_encoder_layers)]
        self.final_norm = Norm(c)
        self.dropout = Dropout(c.embedding_dropout)  # on the embeddings and after final_norm

    def __call__(self, x, mask, deterministic: bool):
        S = x.shape[1]
        bias = self.layers[0].self_attn.position_bias(relative_buckets(self.config, S, S, True)) if self.layers else None
        x = self.dropout(x, deterministic=deterministic)
        for layer in self.layers:
            x = layer(x, mask, bias, deterministic)
        return self.dropout(self.final_norm(x), deterministic=deterministic)


class T5Decoder(nn.Module):
    config: ModelConfig
    dtype: Any = None
    attention: str = "math"

    def setup(self) -> None:
        c = self.config
        self.layers = [T5DecoderLayer(c, i == 0, self.dtype, self.attention) for i in range(c.num_decoder_layers)]
        self.final_norm = Norm(c)
        self.dropout = Dropout(c.embedding_dropout)  # on the embeddings and after final_norm

    def __call__(self, y, memory, self_mask, cross_mask, deterministic: bool):
        T = y.shape[1]
        bias = self.layers[0].self_attn.position_bias(relative_buckets(self.config, T, T, False)) if self.layers else None
        y = self.dropout(y, deterministic=deterministic)
        for layer in self.layers:
            y = layer(y, memory, self_mask, cross_mask, bias, deterministic)
        return self.dropout(self.final_norm(y), deterministic=deterministic)

    def step(self, y, cache: dict, t, self_mask, cross_mask, bias=None) -> tuple[jax.Array, list[dict]]:
        """y (B, 1, D) at position t -> (B, 1, D), the updated per-layer caches.

        bias None: computed for position t; continuous batching passes each row's (B, H, 1, N) with t (B,).
        """
        steps = self_mask.shape[-1]
        if bias is None:
            # Row t of the (N, N) bucket table: the bias of query t over the N slots (1, H, 1, N).
            bias = self.layers[0].self_attn.position_bias(relative_buckets(self.config, steps, steps, False), row=t)
        layers = []
        for layer, layer_cache in zip(self.layers, cache["layers"]):
            y, layer_cache = layer.step(y, layer_cache, t, self_mask, cross_mask, bias)
            layers.append(layer_cache)
        return self.final_norm(y), layers


def source_mask(src_ids: jax.Array, pad_id: int, src_mask: jax.Array | None) -> jax.Array:
    """(B, S) -> (B, 1, S) keys that may be attended: the explicit mask, else the non-pad positions."""
    return padding_mask((src_ids != pad_id) if src_mask is None else jnp.asarray(src_mask).astype(bool))


def causal_mask(length: int) -> jax.Array:
    """(1, T, T): position t sees positions <= t. Never from the tokens: the start token is the pad id."""
    return causal(jnp.arange(length), jnp.arange(length))


class T5(nn.Module):
    """T5 encoder-decoder: apply(params, src_ids (B, S), tgt_ids (B, T), src_mask=None) -> logits (B, T, V).

    dtype / attention: as the book Transformer (bf16-mixed compute dtype; "math" or "fused").
    """

    config: ModelConfig
    dtype: Any = None
    attention: str = "math"

    def setup(self) -> None:
        c = self.config
        self.shared_embed = nn.Embed(c.tgt_vocab_size, c.d_model)
        self.encoder = T5Encoder(c, self.dtype, self.attention)
        self.decoder = T5Decoder(c, self.dtype, self.attention)
        if not is_tied(c):
            self.output_proj = Dense(c.tgt_vocab_size, use_bias=False, dtype=self.dtype)

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
            return linear(y * self.config.d_model**-0.5, self.shared_embed.embedding.T, None, self.dtype)
        return self.output_proj(y)

    def __call__(self, src_ids, tgt_ids, src_mask=None, deterministic: bool | None = None) -> jax.Array:
        return self.decode(self.encode(src_ids, src_mask, deterministic), src_ids, tgt_ids, src_mask, deterministic)

    # -- incremental decoding (the KV cache; the loop is jax_impl/generate.py) ------------------------
    def start_cache(self, src_ids: jax.Array, src_mask: jax.Array, steps: int, copies: int = 1) -> dict:
        """src (B, S), src_mask (B, S) -> the cache of B*C rows: cross keys/values once, N empty slots."""
        memory = self.encode(src_ids, src_mask, deterministic=True)  # (B, S, D)
        src_ok = jnp.repeat(jnp.asarray(src_mask).astype(bool), copies, axis=0)  # (B*C, S)
        c, rows = self.config, memory.shape[0] * copies
        dtype = memory.dtype if self.dtype is None else self.dtype
        # each layer's cross keys/values projected once per source row, then copied to its beams
        repeat = lambda kv: {name: jnp.repeat(a, copies, axis=0) for name, a in kv.items()}  # noqa: E731
        layers = [
            {"self": empty_cache(rows, c.num_heads, steps, c.head_dim, dtype),
             "cross": repeat(layer.cross_attn.keys_values(memory))}  # (B*C, H, S, K) each
            for layer in self.decoder.layers
        ]
        return {"layers": layers, "src_ok": src_ok}

    def decode_step(self, cache: dict, tokens: jax.Array, t) -> tuple[jax.Array, dict]:
        """Feed tokens (B,) at position t (the start id at 0) -> next-token logits (B, V), the cache."""
        steps = cache["layers"][0]["self"]["k"].shape[2] if cache["layers"] else 1
        self_mask = causal(jnp.atleast_1d(jnp.asarray(t)), jnp.arange(steps))  # (1, 1, N): slots <= t
        y, layers = self.decoder.step(self.shared_embed(tokens[:, None]), cache, t, self_mask, padding_mask(cache["src_ok"]))
        return self.project(y)[:, 0, :], dict(cache, layers=layers)

    @staticmethod
    def reorder_cache(cache: dict, rows: jax.Array) -> dict:
        layers = [dict(layer, self=reorder_rows(layer["self"], rows)) for layer in cache["layers"]]
        return dict(cache, layers=layers)


__all__ = ["T5", "causal_mask", "source_mask"]
