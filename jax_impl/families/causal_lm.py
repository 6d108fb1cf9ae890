"""The causal_lm family in Flax Linen (twin of torch_impl's; architecture: shared/families/causal_lm.py).

`CausalLM(config).apply({"params": p}, ids (B, T), attention_mask=None)` -> logits (B, T, V), and
incremental decoding (start_cache with the prompt prefilled, decode_step, reorder_cache). Dropout
is on exactly when a "dropout" RNG is passed, unless `deterministic` says otherwise. Submodules
carry the attribute names of the PyTorch twin, so shared/checkpoints/weight_table.py maps the params.

Composed of the shared layers: jax_impl/attention.py (scaled, G key/value heads, q/k/v_proj +
o_proj or GPT-2's fused c_attn), layers.Norm (LayerNorm or RMS), layers.FeedForward (up/down or
gated gate/up/down, no inner dropout), positions (learned or rotary). The variants' pieces live
here: Mistral's window (`window_mask`, through attention.causal_mask's window hook), Qwen2's
q/k/v-only biases (Attention's out_bias), Gemma's (1 + w) norm and scaled embedding.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_impl.attention import Attention, causal_mask, empty_cache, padding_mask, reorder_rows
from jax_impl.layers import Dense, Dropout, FeedForward, Norm, add, linear, residual, upcast_dtype
from jax_impl.positions import rope_at
from shared.config.model_config import ModelConfig
from shared.families.causal_lm import embedding_scale, is_tied, kv_heads, mlp_leaves


class OnePlusWeightRMSNorm(nn.Module):
    """Gemma's RMS norm: x / sqrt(mean(x^2) + eps) * (1 + w), w stored as HF stores it (zeros: identity).

    As GemmaRMSNorm (and the torch twin): statistics, 1 + w and the product in float32 for 16-bit
    inputs (the input's dtype otherwise), rounded once at the end.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.zeros, (self.config.d_model,))  # w, the weight table's name
        return rms_one_plus_weight(x, scale, self.config.norm_eps)


def rms_one_plus_weight(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    """x (..., D), w (D,) -> x / sqrt(mean(x^2) + eps) * (1 + w), one float32 chain for 16-bit x."""
    h = x.astype(upcast_dtype(x.dtype))
    variance = jnp.mean(jnp.square(h), axis=-1, keepdims=True)  # (..., 1)
    return (h * jax.lax.rsqrt(variance + eps) * (1.0 + w.astype(h.dtype))).astype(x.dtype)


def norm(config: ModelConfig) -> nn.Module:
    return OnePlusWeightRMSNorm(config) if config.norm_one_plus_weight else Norm(config)


class ScaledEmbed(nn.Embed):
    """Gemma's embedding: the table times sqrt(D), a float32 constant cast to the table's dtype (as HF)."""

    scale: float = 1.0

    def __call__(self, ids: jax.Array) -> jax.Array:
        # nn.Embed's lookup written out: calling super().__call__ would record the unscaled table rows
        # as this module's output too (capture_intermediates keeps every call of a module)
        (table,) = nn.dtypes.promote_dtype(self.embedding, dtype=self.dtype, inexact=False)
        x = jnp.take(table, ids, axis=0)  # (B, T, D)
        return x * jnp.asarray(np.float32(self.scale)).astype(x.dtype)


def window_mask(config: ModelConfig, queries: jax.Array, slots: int) -> jax.Array | bool:
    """(1, T, slots): the sliding window of queries at slots `queries` (T,) (Mistral), or True (no window)."""
    if config.sliding_window is None:
        return True
    return causal_mask(queries, jnp.arange(slots), window=config.sliding_window)


class DecoderLayer(nn.Module):
    """x + drop(attn(attn_norm x)), then x + drop(mlp(mlp_norm x)) (pre-norm)."""

    config: ModelConfig
    dtype: Any = None
    attention: str = "math"

    def setup(self) -> None:
        c = self.config
        self.attn_norm = norm(c)
        self.self_attn = Attention(c, self.dtype, self.attention, num_kv_heads=kv_heads(c), use_bias=c.bias or c.qkv_bias,
                                   fused_qkv=c.fused_qkv, out_name="o_proj", out_bias=c.bias)
        self.mlp_norm = norm(c)
        leaves = mlp_leaves(c)
        names = leaves if len(leaves) == 3 else (None, *leaves)
        self.mlp = FeedForward(c, self.dtype, names=names, use_bias=c.bias, inner_dropout=False)
        self.dropout = Dropout(c.dropout)

    def __call__(self, x, mask, rope, deterministic: bool) -> jax.Array:
        det = deterministic
        x = residual(x, self.attn_norm, lambda h: self.self_attn(h, h, mask, det, rope=rope), self.dropout, True, det)
        return residual(x, self.mlp_norm, lambda h: self.mlp(h), self.dropout, True, det)

    def cached(self, x, layer_cache: dict, slot, mask, rope) -> tuple[jax.Array, dict]:
        """__call__ for the positions at slots slot .. slot + T - 1, keys/values from and into the cache."""
        cache = dict(layer_cache)

        def attend(h):
            out, cache["self"] = self.self_attn.cached(h, cache["self"], slot, mask, rope=rope)
            return out

        x = residual(x, self.attn_norm, attend, self.dropout, True, True)
        return residual(x, self.mlp_norm, lambda h: self.mlp(h), self.dropout, True, True), cache


def attention_mask_or_ones(ids: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
    return jnp.ones(ids.shape, dtype=bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)


def position_ids(mask: jax.Array) -> jax.Array:
    """(B, T) bool -> (B, T) cumsum(mask) - 1 clamped at 0 (shared/families/causal_lm.position_ids)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def causal_padding_mask(mask: jax.Array) -> jax.Array:
    """(B, T) real tokens -> (B, T, T): query t sees key s <= t that is not padding."""
    T = mask.shape[1]
    return causal_mask(jnp.arange(T), jnp.arange(T)) & padding_mask(mask)


class CausalLM(nn.Module):
    """Decoder-only LM: apply(params, ids (B, T), attention_mask (B, T) or None) -> logits (B, T, V).

    dtype / attention: as the book Transformer (bf16-mixed compute dtype; "math" or "fused").
    """

    config: ModelConfig
    dtype: Any = None
    attention: str = "math"

    def setup(self) -> None:
        c = self.config
        if c.scale_embeddings:
            self.embed_tokens = ScaledEmbed(c.tgt_vocab_size, c.d_model, scale=float(embedding_scale(c)))
        else:
            self.embed_tokens = nn.Embed(c.tgt_vocab_size, c.d_model)
        if c.positional == "learned":
            self.pos_embed = nn.Embed(c.max_len, c.d_model)
        self.embed_dropout = Dropout(c.embedding_dropout)
        self.layers = [DecoderLayer(c, self.dtype, self.attention) for _ in range(c.num_decoder_layers)]
        self.final_norm = norm(c)
        if not is_tied(c):
            self.lm_head = Dense(c.tgt_vocab_size, use_bias=False, dtype=self.dtype)

    def _deterministic(self, deterministic: bool | None) -> bool:
        return not self.has_rng("dropout") if deterministic is None else deterministic

    def _embed(self, ids: jax.Array, positions: jax.Array, deterministic: bool):
        """ids, positions (B, T) -> (x (B, T, D), rope: cos, sin (B, T, K) or None)."""
        x = self.embed_tokens(ids)  # (B, T, D)
        rope = None
        if self.config.positional == "learned":
            x = add(x, self.pos_embed(positions))
        else:
            rope = rope_at(self.config, positions)
        return self.embed_dropout(x, deterministic=deterministic), rope

    def hidden(self, ids, attention_mask=None, deterministic: bool | None = None) -> jax.Array:
        """(B, T) -> final-norm output (B, T, D), before the output projection."""
        det = self._deterministic(deterministic)
        mask = attention_mask_or_ones(ids, attention_mask)
        x, rope = self._embed(ids, position_ids(mask), det)
        allowed = causal_padding_mask(mask) & window_mask(self.config, jnp.arange(ids.shape[1]), ids.shape[1])
        for layer in self.layers:
            x = layer(x, allowed, rope, det)
        return self.final_norm(x)

    def project(self, y: jax.Array) -> jax.Array:
        """(B, T, D) -> logits (B, T, V): the embedding table (tied) or lm_head."""
        if is_tied(self.config):
            return linear(y, self.embed_tokens.embedding.T, None, self.dtype)
        return self.lm_head(y)

    def __call__(self, ids, attention_mask=None, deterministic: bool | None = None) -> jax.Array:
        return self.project(self.hidden(ids, attention_mask, deterministic))

    # -- incremental decoding (the KV cache; the loop is jax_impl/generate.py) ------------------------
    def start_cache(self, ids: jax.Array, mask: jax.Array, steps: int, copies: int = 1) -> dict:
        """Left-padded prompts (B, L) -> the cache of B*C rows, ids[:, :-1] prefilled in slots 0 .. L-2.

        L - 1 + N slots; key_ok marks the slots holding real tokens; `count` (B*C,) is the number of
        real tokens before slot L - 1: the position id of the token fed at step t is count + t.
        A sliding window (Mistral) masks, in the prefill and every step, the keys W or more slots back.
        """
        c = self.config
        ids = jnp.repeat(ids, copies, axis=0)
        mask = jnp.repeat(jnp.asarray(mask).astype(bool), copies, axis=0)  # (B*C, L)
        rows, P = ids.shape[0], ids.shape[1] - 1
        slots = P + steps
        dtype = self.embed_tokens.embedding.dtype if self.dtype is None else jnp.dtype(self.dtype)
        layers = [{"self": empty_cache(rows, kv_heads(c), slots, c.head_dim, dtype)} for _ in self.layers]
        key_ok = jnp.zeros((rows, slots), bool).at[:, :P].set(mask[:, :P])  # (B*C, L - 1 + N)
        if P:
            x, rope = self._embed(ids[:, :P], position_ids(mask)[:, :P], True)
            allowed = causal_mask(jnp.arange(P), jnp.arange(slots)) & padding_mask(key_ok)  # (B*C, P, slots)
            allowed = allowed & window_mask(c, jnp.arange(P), slots)
            for i, layer in enumerate(self.layers):
                x, layers[i] = layer.cached(x, layers[i], 0, allowed, rope)
        count = jnp.sum(mask[:, :P], axis=1).astype(jnp.int32)  # (B*C,)
        first_slot = jnp.full((rows,), P, jnp.int32)  # (B*C,): L - 1 in every row (an array: a pytree leaf)
        return {"layers": layers, "key_ok": key_ok, "count": count, "first_slot": first_slot}

    def decode_step(self, cache: dict, tokens: jax.Array, t) -> tuple[jax.Array, dict]:
        """Feed tokens (B,) at slot L - 1 + t, position id count + t -> next-token logits (B, V), the cache."""
        slot = cache["first_slot"][0] + t
        key_ok = jax.lax.dynamic_update_slice_in_dim(cache["key_ok"], jnp.ones((tokens.shape[0], 1), bool), slot, axis=1)
        x, rope = self._embed(tokens[:, None], (cache["count"] + t)[:, None], True)  # (B, 1, D)
        allowed = padding_mask(key_ok)  # (B, 1, slots): the filled slots, all at or before this one
        allowed = allowed & window_mask(self.config, jnp.reshape(slot, (1,)), key_ok.shape[1])
        layers = []
        for layer, layer_cache in zip(self.layers, cache["layers"]):
            x, layer_cache = layer.cached(x, layer_cache, slot, allowed, rope)
            layers.append(layer_cache)
        logits = self.project(self.final_norm(x))[:, 0, :]  # (B, V)
        return logits, dict(cache, layers=layers, key_ok=key_ok)

    @staticmethod
    def reorder_cache(cache: dict, rows: jax.Array) -> dict:
        return reorder_rows(cache, rows)  # every leaf is per row


def next_token_loss(logits: jax.Array, ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    """Causal-LM loss: mean over real positions t+1 of -log p(ids[t+1] | ids[:t+1]) (float32 softmax).

    logits (B, T, V), ids (B, T), attention_mask (B, T) or None; a target counts when both it and
    the position predicting it are real tokens.
    """
    import optax

    mask = attention_mask_or_ones(ids, attention_mask)
    compute = upcast_dtype(logits.dtype)  # float32 for 16-bit logits, float64 stays float64
    keep = (mask[:, 1:] & mask[:, :-1]).astype(compute)  # (B, T-1)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(compute), ids[:, 1:])  # (B, T-1)
    return jnp.sum(nll * keep) / jnp.maximum(jnp.sum(keep), 1.0)
