"""The causal_lm family in PyTorch (twin of jax_impl/causal_lm.py; architecture: shared/families/causal_lm.py).

`CausalLM(config)(ids (B, T), attention_mask=None) -> logits (B, T, V)`. attention_mask (B, T) is 1
at real tokens and 0 at padding (left or right); None means no padding. Positions follow the mask
(cumsum - 1, clamped), so a left-padded prompt gets the positions it would have unpadded.
The variants' pieces live here: Mistral's window (in `run`, through attention.causal_window_mask),
Qwen2's q/k/v-only biases, Gemma's (1 + w) norm and scaled embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shared.config.model_config import ModelConfig
from shared.families.causal_lm import attention_shapes, embedding_scale, has_bias, is_tied, kv_heads, rope_tables
from torch_impl.attention import Attention, KVCache, causal_window_mask, upcast_dtype
from torch_impl.layers import Dropout, FeedForward, Norm
from torch_impl.positions import position_ids
from torch_impl.vocab_projection import VocabLinear, vocab_linear


class CausalSelfAttention(Attention):
    """Causal softmax(Q K^T / sqrt(K)) V with H query heads over G key/value heads; rotary q, k optional."""

    def __init__(self, config: ModelConfig, kernel: str = "math"):
        super().__init__(config.num_heads, kv_heads(config), config.head_dim, config.head_dim**-0.5,
                         config.attention_dropout, kernel)
        self.config = config
        for name, (n_in, n_out) in attention_shapes(config).items():
            setattr(self, name, nn.Linear(n_in, n_out, bias=has_bias(config, name)))

    def self_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        H, G, K = self.num_heads, self.num_kv_heads, self.head_dim
        if self.config.fused_qkv:
            q, k, v = self.c_attn(x).split([H * K, G * K, G * K], dim=-1)  # [q | k | v], as HF splits it
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return self.split_heads(q, H), self.split_heads(k, G), self.split_heads(v, G)

    def output(self, context: torch.Tensor) -> torch.Tensor:
        return self.o_proj(context)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rope=None, cache: KVCache | None = None,
                slot: int = 0) -> torch.Tensor:
        """x (B, T, D); mask (B, T, slot + T) True where allowed; rope: cos, sin (B, T, K) or None."""
        return self.self_attention(x, mask, rope=rope, cache=cache, slot=slot)


class MLP(FeedForward):
    """down_proj(act(up_proj x)), or gated: down_proj(act(gate_proj x) * up_proj x): no inner dropout."""

    def __init__(self, config: ModelConfig):
        super().__init__(config, up="up_proj", out="down_proj", gate="gate_proj" if config.gated_ffn else None,
                         dropout=False)


class OnePlusWeightRMSNorm(nn.Module):
    """Gemma's RMS norm: x / sqrt(mean(x^2) + eps) * (1 + w), w stored as HF stores it (zeros: identity).

    As GemmaRMSNorm: statistics, 1 + w and the product in float32 for 16-bit inputs (the input's
    dtype otherwise), rounded once at the end (Llama's rounds before the weight).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.eps = config.norm_eps
        self.weight = nn.Parameter(torch.zeros(config.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_one_plus_weight(x, self.weight, self.eps)


def rms_one_plus_weight(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., D), w (D,) -> x / sqrt(mean(x^2) + eps) * (1 + w), one float32 chain for 16-bit x."""
    h = x.to(upcast_dtype(x.dtype))
    variance = h.pow(2).mean(dim=-1, keepdim=True)  # (..., 1)
    return (h * torch.rsqrt(variance + eps) * (1.0 + w.to(h.dtype))).to(x.dtype)


def norm(config: ModelConfig) -> nn.Module:
    return OnePlusWeightRMSNorm(config) if config.norm_one_plus_weight else Norm(config)


class ScaledEmbedding(nn.Embedding):
    """Gemma's embedding: the table times sqrt(D), a float32 constant cast to the table's dtype (as HF)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config.tgt_vocab_size, config.d_model)
        self.scale = float(embedding_scale(config))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = super().forward(ids)  # (B, T, D)
        return x * torch.tensor(self.scale, dtype=torch.float32).to(x.dtype)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, kernel: str = "math"):
        super().__init__()
        self.attn_norm = norm(config)
        self.self_attn = CausalSelfAttention(config, kernel)
        self.mlp_norm = norm(config)
        self.mlp = MLP(config)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, rope, cache: KVCache | None = None, slot: int = 0
                ) -> torch.Tensor:
        x = x + self.dropout(self.self_attn(self.attn_norm(x), mask, rope, cache, slot))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


def attention_mask_or_ones(ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(ids, dtype=torch.bool) if attention_mask is None else attention_mask.to(torch.bool)


def causal_padding_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) real tokens -> (B, T, T): query t sees key s <= t that is not padding."""
    T = mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=mask.device).tril()
    return causal[None] & mask[:, None, :]


class CausalLM(nn.Module):
    """Decoder-only LM: model(ids (B, T), attention_mask (B, T) or None) -> logits (B, T, V)."""

    def __init__(self, config: ModelConfig, attention: str = "math"):
        super().__init__()
        self.config = config
        if config.scale_embeddings:
            self.embed_tokens = ScaledEmbedding(config)
        else:
            self.embed_tokens = nn.Embedding(config.tgt_vocab_size, config.d_model)
        if config.positional == "learned":
            self.pos_embed = nn.Embedding(config.max_len, config.d_model)
        else:  # rotary: derived tables (non-persistent buffers), one numpy definition for both stacks
            cos, sin = rope_tables(config)
            self.register_buffer("rope_cos", torch.from_numpy(cos), persistent=False)  # (max_len, K)
            self.register_buffer("rope_sin", torch.from_numpy(sin), persistent=False)
        self.embed_dropout = Dropout(config.embedding_dropout)
        self.layers = nn.ModuleList(DecoderLayer(config, attention) for _ in range(config.num_decoder_layers))
        self.final_norm = norm(config)
        if not is_tied(config):
            self.lm_head = VocabLinear(config.d_model, config.tgt_vocab_size, bias=False)

    def rebuild_buffers(self) -> None:
        """Recompute the derived rotary tables (after building on the meta device)."""
        if self.config.positional == "rotary":
            cos, sin = rope_tables(self.config)
            self.rope_cos, self.rope_sin = torch.from_numpy(cos), torch.from_numpy(sin)

    def hidden(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) -> final-norm output (B, T, D), before the output projection."""
        mask = attention_mask_or_ones(ids, attention_mask)
        return self.run(ids, position_ids(mask), causal_padding_mask(mask))

    def run(self, ids: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor,
            caches: list[KVCache] | None = None, slot: int = 0) -> torch.Tensor:
        """ids, positions (B, T) at cache slots slot .. slot + T - 1; allowed (B, T, slot + T) -> (B, T, D).

        Without caches (slot 0) the layers attend over these T tokens alone; with them (one per
        layer) each layer writes its keys/values to the slots and attends over slots 0 .. slot + T - 1.
        A sliding window (Mistral) hides, here for every caller, the keys W or more slots back.
        """
        window = self.config.sliding_window
        if window is not None:
            T = ids.shape[1]
            allowed = allowed & causal_window_mask(T, slot + T, slot, window, ids.device)  # (B, T, slot + T)
        x = self.embed_tokens(ids)  # (B, T, D)
        rope = None
        if self.config.positional == "learned":
            x = x + self.pos_embed(positions)
        else:
            rope = self.rope_cos[positions], self.rope_sin[positions]  # (B, T, K) each
        x = self.embed_dropout(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, allowed, rope, None if caches is None else caches[i], slot)
        return self.final_norm(x)

    def project(self, y: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> logits (B, T, V): the embedding table (tied) or lm_head."""
        if is_tied(self.config):
            return vocab_linear(y, self.embed_tokens.weight)
        return self.lm_head(y)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.project(self.hidden(ids, attention_mask))


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Causal-LM loss: mean over real positions t+1 of -log p(ids[t+1] | ids[:t+1]) (float32 softmax).

    logits (B, T, V), ids (B, T), attention_mask (B, T) or None; a target counts when both it and
    the position predicting it are real tokens.
    """
    mask = attention_mask_or_ones(ids, attention_mask)
    keep = (mask[:, 1:] & mask[:, :-1]).float()  # (B, T-1)
    compute = upcast_dtype(logits.dtype)  # float32 for 16-bit logits, float64 stays float64
    nll = F.cross_entropy(logits[:, :-1].to(compute).flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    return (nll * keep.flatten()).sum() / keep.sum().clamp(min=1.0)
