"""The causal_lm family in Flax Linen (twin of torch_impl/causal_lm.py; architecture: shared/families/causal_lm.py).

`CausalLM(config).apply({"params": p}, ids (B, T), attention_mask=None)` -> logits (B, T, V).
Dropout is on exactly when a "dropout" RNG is passed, unless `deterministic` says otherwise.
Submodules carry the attribute names of the PyTorch twin, so shared/weight_table.py maps the params.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_impl.layers import Dense, Norm, activation, upcast_dtype
from jax_impl.t5 import RMSNorm
from shared.config import ModelConfig
from shared.families.causal_lm import attention_shapes, is_tied, kv_heads, mlp_leaves, rope_tables
from shared.numerics import mask_fill_value


def make_norm(config: ModelConfig) -> nn.Module:
    return RMSNorm(config) if config.norm_kind == "rms" else Norm(config)


def rotate_half(x: jax.Array) -> jax.Array:
    """HF's rotary layout: (x1, x2) -> (-x2, x1) over the two halves of the last axis."""
    half = x.shape[-1] // 2
    return jnp.concatenate((-x[..., half:], x[..., :half]), axis=-1)


class CausalSelfAttention(nn.Module):
    """Causal softmax(Q K^T / sqrt(K)) V with H query heads over G key/value heads; rotary q, k optional."""

    config: ModelConfig

    def setup(self) -> None:
        c = self.config
        for name, (_, n_out) in attention_shapes(c).items():
            setattr(self, name, Dense(n_out, use_bias=c.bias))
        self.attn_dropout = nn.Dropout(c.attention_dropout)

    def split_heads(self, x: jax.Array, heads: int) -> jax.Array:
        B, T, _ = x.shape
        return x.reshape(B, T, heads, self.config.head_dim).transpose(0, 2, 1, 3)  # (B, heads, T, K)

    def project_qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        c = self.config
        H, G, K = c.num_heads, kv_heads(c), c.head_dim
        if c.fused_qkv:
            qkv = self.c_attn(x)
            q, k, v = qkv[..., : H * K], qkv[..., H * K : (H + G) * K], qkv[..., (H + G) * K :]  # [q | k | v]
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return self.split_heads(q, H), self.split_heads(k, G), self.split_heads(v, G)

    def __call__(self, x, mask, rope, deterministic: bool) -> jax.Array:
        """x (B, T, D); mask (B, T, T) True where allowed; rope: cos, sin (B, T, K) or None."""
        c = self.config
        q, k, v = self.project_qkv(x)  # (B, H, T, K), (B, G, T, K), (B, G, T, K)
        if rope is not None:
            cos, sin = (t[:, None].astype(q.dtype) for t in rope)  # (B, 1, T, K)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        repeats = c.num_heads // kv_heads(c)  # query head h reads key/value head h // repeats
        k, v = jnp.repeat(k, repeats, axis=1), jnp.repeat(v, repeats, axis=1)  # (B, H, T, K)
        scores = jnp.einsum("bhtk,bhsk->bhts", q, k) * c.head_dim**-0.5  # (B, H, T, T)
        fill = mask_fill_value(jnp.dtype(scores.dtype).name)
        scores = jnp.where(mask[:, None], scores, jnp.asarray(fill, scores.dtype))
        probs = jax.nn.softmax(scores.astype(upcast_dtype(scores.dtype)), axis=-1).astype(v.dtype)
        probs = self.attn_dropout(probs, deterministic=deterministic)
        context = jnp.einsum("bhts,bhsk->bhtk", probs, v)  # (B, H, T, K)
        B, _, T, _ = context.shape
        return self.o_proj(context.transpose(0, 2, 1, 3).reshape(B, T, -1))  # (B, T, D)


class MLP(nn.Module):
    """down_proj(act(up_proj x)), or gated: down_proj(act(gate_proj x) * up_proj x): D -> F -> D."""

    config: ModelConfig

    def setup(self) -> None:
        c = self.config
        for leaf in mlp_leaves(c):
            setattr(self, leaf, Dense(c.d_model if leaf == "down_proj" else c.d_ff, use_bias=c.bias))

    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        if c.gated_ffn:
            return self.down_proj(activation(c.activation, self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(activation(c.activation, self.up_proj(x)))


class DecoderLayer(nn.Module):
    config: ModelConfig

    def setup(self) -> None:
        self.attn_norm = make_norm(self.config)
        self.self_attn = CausalSelfAttention(self.config)
        self.mlp_norm = make_norm(self.config)
        self.mlp = MLP(self.config)
        self.dropout = nn.Dropout(self.config.dropout)

    def __call__(self, x, mask, rope, deterministic: bool) -> jax.Array:
        det = deterministic
        x = x + self.dropout(self.self_attn(self.attn_norm(x), mask, rope, det), deterministic=det)
        return x + self.dropout(self.mlp(self.mlp_norm(x)), deterministic=det)


def attention_mask_or_ones(ids: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
    return jnp.ones(ids.shape, dtype=bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)


def position_ids(mask: jax.Array) -> jax.Array:
    """(B, T) bool -> (B, T) cumsum(mask) - 1 clamped at 0 (shared/families/causal_lm.position_ids)."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def causal_padding_mask(mask: jax.Array) -> jax.Array:
    """(B, T) real tokens -> (B, T, T): query t sees key s <= t that is not padding."""
    T = mask.shape[1]
    return jnp.tril(jnp.ones((T, T), dtype=bool))[None] & mask[:, None, :]


class CausalLM(nn.Module):
    """Decoder-only LM: apply(params, ids (B, T), attention_mask (B, T) or None) -> logits (B, T, V)."""

    config: ModelConfig

    def setup(self) -> None:
        c = self.config
        self.embed_tokens = nn.Embed(c.tgt_vocab_size, c.d_model)
        if c.positional == "learned":
            self.pos_embed = nn.Embed(c.max_len, c.d_model)
        self.embed_dropout = nn.Dropout(c.embedding_dropout)
        self.layers = [DecoderLayer(c) for _ in range(c.num_decoder_layers)]
        self.final_norm = make_norm(c)
        if not is_tied(c):
            self.lm_head = Dense(c.tgt_vocab_size, use_bias=False)

    def _deterministic(self, deterministic: bool | None) -> bool:
        return not self.has_rng("dropout") if deterministic is None else deterministic

    def hidden(self, ids, attention_mask=None, deterministic: bool | None = None) -> jax.Array:
        """(B, T) -> final-norm output (B, T, D), before the output projection."""
        c, det = self.config, self._deterministic(deterministic)
        mask = attention_mask_or_ones(ids, attention_mask)
        positions = position_ids(mask)  # (B, T)
        x = self.embed_tokens(ids)  # (B, T, D)
        rope = None
        if c.positional == "learned":
            x = x + self.pos_embed(positions)
        else:
            cos, sin = rope_tables(c)  # numpy constants, folded into the compiled program
            rope = jnp.asarray(cos)[positions], jnp.asarray(sin)[positions]  # (B, T, K) each
        x = self.embed_dropout(x, deterministic=det)
        allowed = causal_padding_mask(mask)
        for layer in self.layers:
            x = layer(x, allowed, rope, det)
        return self.final_norm(x)

    def project(self, y: jax.Array) -> jax.Array:
        """(B, T, D) -> logits (B, T, V): the embedding table (tied) or lm_head."""
        if is_tied(self.config):
            return self.embed_tokens.attend(y)
        return self.lm_head(y)

    def __call__(self, ids, attention_mask=None, deterministic: bool | None = None) -> jax.Array:
        return self.project(self.hidden(ids, attention_mask, deterministic))


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
