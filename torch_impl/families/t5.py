"""The T5 family in PyTorch (twin of jax_impl/t5.py; architecture: shared/families/t5.py).

`T5(config)(src_ids (B, S), tgt_ids (B, T)) -> logits (B, T, V)`, with the same public methods as
torch_impl.Transformer (encode, decode_hidden, project, decode), so decoding, training and LoRA
work on it unchanged. The decoder starts from the pad id, so its self-attention is causal only and
never derived from the target tokens; the source mask is `src_mask` (B, S) when given, else
`src_ids != pad_id` (T5 tokenizers never put the pad id inside a text).
"""

from __future__ import annotations

import torch
from torch import nn

from shared.config.model_config import ModelConfig
from shared.families.t5 import is_tied, relative_position_buckets
from torch_impl.attention import Attention, KVCache
from torch_impl.layers import Dropout, FeedForward, Norm
from torch_impl.vocab_projection import VocabLinear, vocab_linear


class T5Attention(Attention):
    """softmax(Q K^T + position bias, masked) V over H heads: no 1/sqrt(K) scaling, no biases."""

    def __init__(self, config: ModelConfig, relative_bias: bool, kernel: str = "math"):
        super().__init__(config.num_heads, config.num_heads, config.head_dim, None, config.attention_dropout, kernel)
        D, inner = config.d_model, config.num_heads * config.head_dim
        self.config = config
        self.q_proj = nn.Linear(D, inner, bias=False)
        self.k_proj = nn.Linear(D, inner, bias=False)
        self.v_proj = nn.Linear(D, inner, bias=False)
        self.out_proj = nn.Linear(inner, D, bias=False)
        if relative_bias:  # the stack's first layer holds the table every layer uses
            self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_heads)

    def position_bias(self, query_length: int, key_length: int, bidirectional: bool) -> torch.Tensor:
        """(1, H, Tq, Tk) bias looked up from the bucket of each relative position."""
        c = self.config
        buckets = relative_position_buckets(
            query_length, key_length, bidirectional, c.relative_attention_num_buckets, c.relative_attention_max_distance
        )
        table = self.relative_attention_bias.weight
        values = table[torch.as_tensor(buckets, dtype=torch.long, device=table.device)]  # (Tq, Tk, H)
        return values.permute(2, 0, 1)[None]

    def self_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.split_heads(self.q_proj(x)), *self.keys_values(x)

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory (B, S, D) -> k, v (B, H, S, K)."""
        return self.split_heads(self.k_proj(memory)), self.split_heads(self.v_proj(memory))

    def output(self, context: torch.Tensor) -> torch.Tensor:
        return self.out_proj(context)

    def cross_attention(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) attends to precomputed memory keys/values kv (B, H, S, K); mask (B, T|1, S)."""
        return self.output(self.context(self.split_heads(self.q_proj(x)), *kv, mask))

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None
                ) -> torch.Tensor:
        """x (B, T, D) attends to memory (B, S, D); mask (B, T|1, S) True where allowed; bias (1, H, T, S)."""
        if x is memory:
            return self.self_attention(x, mask, bias)
        return self.cross_attention(x, self.keys_values(memory), mask)


class T5FeedForward(FeedForward):
    """wo(dropout(act(wi x))) (v1.0) or wo(dropout(act(wi_0 x) * wi_1 x)) (v1.1, gated), no biases."""

    def __init__(self, config: ModelConfig):
        gated = config.gated_ffn
        super().__init__(config, up="wi_1" if gated else "wi", out="wo", gate="wi_0" if gated else None, bias=False)


class T5EncoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, first: bool, kernel: str = "math"):
        super().__init__()
        self.self_attn = T5Attention(config, relative_bias=first, kernel=kernel)
        self.self_attn_norm = Norm(config)
        self.ffn = T5FeedForward(config)
        self.ffn_norm = Norm(config)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        h = self.self_attn_norm(x)
        x = x + self.dropout(self.self_attn(h, h, mask, bias))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class T5DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, first: bool, kernel: str = "math"):
        super().__init__()
        self.self_attn = T5Attention(config, relative_bias=first, kernel=kernel)
        self.self_attn_norm = Norm(config)
        self.cross_attn = T5Attention(config, relative_bias=False, kernel=kernel)
        self.cross_attn_norm = Norm(config)
        self.ffn = T5FeedForward(config)
        self.ffn_norm = Norm(config)
        self.dropout = Dropout(config.dropout)

    def forward(self, y, memory, self_mask, cross_mask, bias) -> torch.Tensor:
        h = self.self_attn_norm(y)
        y = y + self.dropout(self.self_attn(h, h, self_mask, bias))
        y = y + self.dropout(self.cross_attn(self.cross_attn_norm(y), memory, cross_mask, None))
        return y + self.dropout(self.ffn(self.ffn_norm(y)))

    def step(self, y, cross_kv, cache: KVCache, slot: int, cross_mask, bias, self_mask=None) -> torch.Tensor:
        """forward() for the one position `slot`: y (B, 1, D), its keys/values written into cache.

        self_mask None: every slot 0 .. slot holds an earlier position (causal only: all allowed);
        continuous batching (torch_impl/slots.py) passes its per-row mask.
        """
        h = self.self_attn_norm(y)
        y = y + self.dropout(self.self_attn.self_attention(h, self_mask, bias, cache=cache, slot=slot))
        y = y + self.dropout(self.cross_attn.cross_attention(self.cross_attn_norm(y), cross_kv, cross_mask))
        return y + self.dropout(self.ffn(self.ffn_norm(y)))


class T5Stack(nn.Module):
    """dropout(embeddings) -> layers -> final RMS norm -> dropout, with the first layer's position bias."""

    def __init__(self, config: ModelConfig, layer_class, num_layers: int, kernel: str = "math"):
        super().__init__()
        self.layers = nn.ModuleList(layer_class(config, first=i == 0, kernel=kernel) for i in range(num_layers))
        self.final_norm = Norm(config)
        self.dropout = Dropout(config.embedding_dropout)  # on the embeddings and after final_norm

    def position_bias(self, query_length: int, key_length: int, bidirectional: bool) -> torch.Tensor | None:
        if not len(self.layers):
            return None
        return self.layers[0].self_attn.position_bias(query_length, key_length, bidirectional)


class T5Encoder(T5Stack):
    def __init__(self, config: ModelConfig, kernel: str = "math"):
        super().__init__(config, T5EncoderLayer, config.num_encoder_layers, kernel)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        bias = self.position_bias(x.shape[1], x.shape[1], bidirectional=True)  # (1, H, S, S)
        x = self.dropout(x)
        for layer in self.layers:
            x = layer(x, mask, bias)
        return self.dropout(self.final_norm(x))


class T5Decoder(T5Stack):
    def __init__(self, config: ModelConfig, kernel: str = "math"):
        super().__init__(config, T5DecoderLayer, config.num_decoder_layers, kernel)

    def forward(self, y, memory, self_mask, cross_mask) -> torch.Tensor:
        bias = self.position_bias(y.shape[1], y.shape[1], bidirectional=False)  # (1, H, T, T)
        y = self.dropout(y)
        for layer in self.layers:
            y = layer(y, memory, self_mask, cross_mask, bias)
        return self.dropout(self.final_norm(y))

    def step(self, y, cross_kv: list, caches: list[KVCache], slot: int, cross_mask, bias, self_mask=None) -> torch.Tensor:
        """forward() for position `slot` alone: y (B, 1, D) -> (B, 1, D); bias (1, H, 1, slot + 1)."""
        y = self.dropout(y)
        for layer, kv, cache in zip(self.layers, cross_kv, caches):
            y = layer.step(y, kv, cache, slot, cross_mask, bias, self_mask)
        return self.dropout(self.final_norm(y))


def source_mask(src_ids: torch.Tensor, pad_id: int, src_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, S) -> (B, 1, S) keys that may be attended: the explicit mask, else the non-pad positions."""
    keep = (src_ids != pad_id) if src_mask is None else src_mask.to(torch.bool)
    return keep[:, None, :]


def causal_mask(length: int, device) -> torch.Tensor:
    """(1, T, T): position t sees positions <= t. Never from the tokens: the start token is the pad id."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()[None]


class T5(nn.Module):
    """T5 encoder-decoder: model(src_ids (B, S), tgt_ids (B, T), src_mask=None) -> logits (B, T, V)."""

    def __init__(self, config: ModelConfig, attention: str = "math"):
        super().__init__()
        self.config = config
        self.shared_embed = nn.Embedding(config.tgt_vocab_size, config.d_model)
        self.encoder = T5Encoder(config, attention)
        self.decoder = T5Decoder(config, attention)
        if not is_tied(config):
            self.output_proj = VocabLinear(config.d_model, config.tgt_vocab_size, bias=False)

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S) -> memory (B, S, D)."""
        return self.encoder(self.shared_embed(src_ids), source_mask(src_ids, self.config.pad_id, src_mask))

    def decode_hidden(self, memory, src_ids, tgt_ids, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """memory (B, S, D), src (B, S), tgt (B, T) -> decoder output (B, T, D), before projection."""
        y = self.shared_embed(tgt_ids)
        cross = source_mask(src_ids, self.config.pad_id, src_mask)
        return self.decoder(y, memory, causal_mask(tgt_ids.shape[1], tgt_ids.device), cross)

    def decode(self, memory, src_ids, tgt_ids, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """memory (B, S, D), src (B, S), tgt (B, T) -> logits (B, T, V)."""
        return self.project(self.decode_hidden(memory, src_ids, tgt_ids, src_mask))

    def project(self, y: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> logits (B, T, V): the tied table after a d_model**-0.5 rescale, or output_proj."""
        if is_tied(self.config):
            return vocab_linear(y * self.config.d_model**-0.5, self.shared_embed.weight)
        return self.output_proj(y)

    def forward(self, src_ids: torch.Tensor, tgt_ids: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.encode(src_ids, src_mask), src_ids, tgt_ids, src_mask)
