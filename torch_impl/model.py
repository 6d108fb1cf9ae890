"""The PyTorch encoder-decoder Transformer (object-oriented twin of jax_impl/model.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from shared.config import ModelConfig
from torch_impl.layers import (
    Dropout,
    FeedForward,
    MultiHeadAttention,
    Norm,
    OutputBias,
    PositionalEncoding,
    residual,
    upcast_dtype,
)


class EncoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"
        self.self_attn = MultiHeadAttention(config)
        self.self_attn_norm = Norm(config)
        self.ffn = FeedForward(config)
        self.ffn_norm = Norm(config)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        x = residual(x, self.self_attn_norm, lambda h: self.self_attn(h, h, src_mask), self.dropout, self.pre_norm)
        return residual(x, self.ffn_norm, self.ffn, self.dropout, self.pre_norm)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"
        self.self_attn = MultiHeadAttention(config)
        self.self_attn_norm = Norm(config)
        self.cross_attn = MultiHeadAttention(config)
        self.cross_attn_norm = Norm(config)
        self.ffn = FeedForward(config)
        self.ffn_norm = Norm(config)
        self.dropout = Dropout(config.dropout)

    def forward(
        self, y: torch.Tensor, memory: torch.Tensor, self_mask: torch.Tensor, cross_mask: torch.Tensor
    ) -> torch.Tensor:
        y = residual(y, self.self_attn_norm, lambda h: self.self_attn(h, h, self_mask), self.dropout, self.pre_norm)
        y = residual(y, self.cross_attn_norm, lambda h: self.cross_attn(h, memory, cross_mask), self.dropout, self.pre_norm)
        return residual(y, self.ffn_norm, self.ffn, self.dropout, self.pre_norm)


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_encoder_layers))
        self.final_norm = Norm(config) if config.final_norms else None

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, src_mask)
        return self.final_norm(x) if self.final_norm is not None else x


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_decoder_layers))
        self.final_norm = Norm(config) if config.final_norms else None

    def forward(self, y, memory, self_mask, cross_mask) -> torch.Tensor:
        for layer in self.layers:
            y = layer(y, memory, self_mask, cross_mask)
        return self.final_norm(y) if self.final_norm is not None else y


def padding_mask(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, L) ids -> (B, 1, L) keys that may be attended (True = real token)."""
    return (ids != pad_id)[:, None, :]


def causal_mask(tgt_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, T) ids -> (B, T, T): position t sees non-pad positions <= t."""
    T = tgt_ids.shape[1]
    lower = torch.ones(T, T, dtype=torch.bool, device=tgt_ids.device).tril()
    return padding_mask(tgt_ids, pad_id) & lower[None]


class Transformer(nn.Module):
    """Encoder-decoder Transformer: model(src_ids (B, S), tgt_ids (B, T)) -> logits (B, T, V).

    Dropout follows train()/eval() as usual in PyTorch; the Flax twin takes an RNG instead.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        if config.tie_embeddings == "all":
            self.shared_embed = nn.Embedding(config.tgt_vocab_size, config.d_model)
        else:
            self.src_embed = nn.Embedding(config.src_vocab_size, config.d_model)
            self.tgt_embed = nn.Embedding(config.tgt_vocab_size, config.d_model)
        if config.positional == "learned":
            self.pos_embed = nn.Embedding(config.max_len, config.d_model)
        else:
            self.pos_encoding = PositionalEncoding(config)
        self.embed_dropout = Dropout(config.embedding_dropout)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        if config.tie_embeddings == "none":
            self.output_proj = nn.Linear(config.d_model, config.tgt_vocab_size, bias=config.bias)
        elif config.bias:
            self.output_proj = OutputBias(config.tgt_vocab_size)

    # -- embeddings --------------------------------------------------------------------------------
    def _source_table(self) -> nn.Embedding:
        return self.shared_embed if self.config.tie_embeddings == "all" else self.src_embed

    def _target_table(self) -> nn.Embedding:
        return self.shared_embed if self.config.tie_embeddings == "all" else self.tgt_embed

    def _embed(self, table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, D): embedding (* sqrt(D)) + position, then dropout.

        One float32 chain for 16-bit tables, rounded once to the table's dtype (as the Flax twin):
        rounding after the scale and again after the add would put a rounding point where XLA,
        which fuses the chain, has none.
        """
        if ids.shape[1] > self.config.max_len:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds max_len {self.config.max_len}")
        x = table(ids)
        h = x.to(upcast_dtype(x.dtype))
        if self.config.scale_embeddings:
            h = h * math.sqrt(self.config.d_model)
        if self.config.positional == "learned":
            h = h + self.pos_embed(torch.arange(ids.shape[1], device=ids.device)).to(h.dtype)
        else:
            h = self.pos_encoding(h)
        return self.embed_dropout(h.to(x.dtype))

    # -- public API --------------------------------------------------------------------------------
    def encode(self, src_ids: torch.Tensor) -> torch.Tensor:
        """(B, S) -> memory (B, S, D)."""
        return self.encoder(self._embed(self._source_table(), src_ids), padding_mask(src_ids, self.config.pad_id))

    def decode_hidden(self, memory: torch.Tensor, src_ids: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor:
        """memory (B, S, D), src (B, S), tgt (B, T) -> decoder output (B, T, D), before projection."""
        pad = self.config.pad_id
        y = self._embed(self._target_table(), tgt_ids)
        return self.decoder(y, memory, causal_mask(tgt_ids, pad), padding_mask(src_ids, pad))

    def decode(self, memory: torch.Tensor, src_ids: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor:
        """memory (B, S, D), src (B, S), tgt (B, T) -> logits (B, T, V)."""
        return self.project(self.decode_hidden(memory, src_ids, tgt_ids))

    def project(self, y: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> logits (B, T, V), through the output layer or the tied embedding."""
        if self.config.tie_embeddings == "none":
            return self.output_proj(y)
        # A Linear whose weight is the table: the bias joins the float32 accumulator and the
        # logits are rounded once in 16-bit dtypes (y @ W.T + b would round twice).
        return F.linear(y, self._target_table().weight, self.output_proj.bias if self.config.bias else None)

    def forward(self, src_ids: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(src_ids), src_ids, tgt_ids)
