"""Reference re-implementations of the book's two models in PyTorch, used only by tests.

They reproduce the book's module names (so their state dicts carry the book's keys, see
docs/BOOK_MODELS.md) and its numerics (-inf masking, the unbiased-std norm, a float32
sinusoid buffer), independently of torch_impl, so importing their weights into our stacks and
comparing logits tests the importers and our models against the book's own definitions.
Axis letters: B batch, S source length, T target length, D model width, H heads, K head size.
"""

from __future__ import annotations

import math

import torch
from torch import nn

PAD_ID = 0


def book_sinusoid(max_len: int, d_model: int) -> torch.Tensor:
    """(1, max_len, D) interleaved sinusoid computed as the book did: in float32 torch."""
    position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)  # (L, 1)
    div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(position * div_term)
    table[:, 1::2] = torch.cos(position * div_term)
    return table.unsqueeze(0)


class BookPositionalEncoding(nn.Module):
    """x + pe_table[:, :L], then dropout; pe_table is a (persistent) buffer, as in the book."""

    def __init__(self, d_model: int, dropout: float, max_len: int):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pe_table", book_sinusoid(max_len, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x + self.pe_table[:, : x.shape[1]])


# --------------------------------------------------------------------------------------------------
# Model A: the "from scratch" encoder-decoder of chapter 3


class BookNorm(nn.Module):
    """gamma * (x - mean) / (std + eps) + beta, std UNBIASED (n - 1), eps outside the root."""

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(d_model))
        self.beta = nn.Parameter(torch.zeros(d_model))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)  # torch's default is the unbiased estimator
        return self.gamma * (x - mean) / (std + self.eps) + self.beta


class BookMultiHeadAttention(nn.Module):
    """Bias-free W_Q/W_K/W_V/fc; masked scores set to -inf; returns ln(fc(context) + input_Q)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float, eps: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.W_Q = nn.Linear(d_model, d_model, bias=False)
        self.W_K = nn.Linear(d_model, d_model, bias=False)
        self.W_V = nn.Linear(d_model, d_model, bias=False)
        self.fc = nn.Linear(d_model, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.ln = BookNorm(d_model, eps)

    def forward(self, input_q, input_k, input_v, attn_mask):
        """attn_mask (B, Lq, Lk) is True where attention is NOT allowed (the book's convention)."""
        B = input_q.shape[0]
        q = self.W_Q(input_q).view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, Lq, K)
        k = self.W_K(input_k).view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, Lk, K)
        v = self.W_V(input_v).view(B, -1, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, Lk, K)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (B, H, Lq, Lk)
        scores = scores.masked_fill(attn_mask[:, None], float("-inf"))
        attn = self.dropout(torch.softmax(scores, dim=-1))
        context = torch.matmul(attn, v).transpose(1, 2).reshape(B, -1, self.num_heads * self.head_dim)
        return self.ln(self.dropout(self.fc(context)) + input_q)  # (B, Lq, D)


class BookFeedForward(nn.Module):
    """ln(x + fc(x)), fc = Sequential(Linear, ReLU, Dropout, Linear), bias-free (keys fc.0 / fc.3)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float, eps: float):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(d_model, d_ff, bias=False), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model, bias=False)
        )
        self.dropout = nn.Dropout(dropout)
        self.ln = BookNorm(d_model, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.dropout(self.fc(x)) + x)


class BookEncoderLayer(nn.Module):
    def __init__(self, d_model, num_heads, d_ff, dropout, eps):
        super().__init__()
        self.enc_self_attn = BookMultiHeadAttention(d_model, num_heads, dropout, eps)
        self.pos_ffn = BookFeedForward(d_model, d_ff, dropout, eps)

    def forward(self, x, self_mask):
        return self.pos_ffn(self.enc_self_attn(x, x, x, self_mask))


class BookDecoderLayer(nn.Module):
    def __init__(self, d_model, num_heads, d_ff, dropout, eps):
        super().__init__()
        self.dec_self_attn = BookMultiHeadAttention(d_model, num_heads, dropout, eps)
        self.dec_enc_attn = BookMultiHeadAttention(d_model, num_heads, dropout, eps)
        self.pos_ffn = BookFeedForward(d_model, d_ff, dropout, eps)

    def forward(self, y, memory, self_mask, cross_mask):
        y = self.dec_self_attn(y, y, y, self_mask)
        y = self.dec_enc_attn(y, memory, memory, cross_mask)
        return self.pos_ffn(y)


class BookEncoder(nn.Module):
    def __init__(self, src_vocab, d_model, num_heads, d_ff, num_layers, dropout, pos_dropout, max_len, eps):
        super().__init__()
        self.src_emb = nn.Embedding(src_vocab, d_model)
        self.pos_emb = BookPositionalEncoding(d_model, pos_dropout, max_len)
        self.layers = nn.ModuleList(BookEncoderLayer(d_model, num_heads, d_ff, dropout, eps) for _ in range(num_layers))

    def forward(self, src):
        x = self.pos_emb(self.src_emb(src))  # not scaled by sqrt(D), as in the book
        mask = pad_mask(src, src)
        for layer in self.layers:
            x = layer(x, mask)
        return x


class BookDecoder(nn.Module):
    def __init__(self, tgt_vocab, d_model, num_heads, d_ff, num_layers, dropout, pos_dropout, max_len, eps):
        super().__init__()
        self.tgt_emb = nn.Embedding(tgt_vocab, d_model)
        self.pos_emb = BookPositionalEncoding(d_model, pos_dropout, max_len)
        self.layers = nn.ModuleList(BookDecoderLayer(d_model, num_heads, d_ff, dropout, eps) for _ in range(num_layers))

    def forward(self, tgt, src, memory):
        y = self.pos_emb(self.tgt_emb(tgt))
        self_mask = pad_mask(tgt, tgt) | subsequent_mask(tgt)
        cross_mask = pad_mask(tgt, src)
        for layer in self.layers:
            y = layer(y, memory, self_mask, cross_mask)
        return y


def pad_mask(seq_q: torch.Tensor, seq_k: torch.Tensor) -> torch.Tensor:
    """(B, Lq, Lk): True where the key is padding."""
    return (seq_k == PAD_ID)[:, None, :].expand(-1, seq_q.shape[1], -1)


def subsequent_mask(seq: torch.Tensor) -> torch.Tensor:
    """(1, L, L): True above the diagonal (future positions)."""
    L = seq.shape[1]
    return torch.triu(torch.ones(L, L, dtype=torch.bool, device=seq.device), diagonal=1)[None]


class BookModelA(nn.Module):
    """The chapter-3 Transformer: model(src (B, S), tgt (B, T)) -> logits (B, T, V_tgt)."""

    def __init__(self, src_vocab=8000, tgt_vocab=8000, d_model=512, num_heads=8, d_ff=2048,
                 num_layers=6, dropout=0.2, pos_dropout=0.1, max_len=5000, eps=1e-5):
        super().__init__()
        args = (d_model, num_heads, d_ff, num_layers, dropout, pos_dropout, max_len, eps)
        self.encoder = BookEncoder(src_vocab, *args)
        self.decoder = BookDecoder(tgt_vocab, *args)
        self.projection = nn.Linear(d_model, tgt_vocab, bias=False)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        return self.projection(self.decoder(tgt, src, self.encoder(src)))


# --------------------------------------------------------------------------------------------------
# Model B: the chapter-4 wrapper around torch.nn.Transformer


class BookModelB(nn.Module):
    """source/target embeddings + sinusoid -> the REAL nn.Transformer(batch_first=True) -> output_layer."""

    def __init__(self, src_vocab=8000, tgt_vocab=8000, d_model=256, num_heads=4, num_encoder_layers=3,
                 num_decoder_layers=3, dim_feedforward=256, dropout=0.25, max_len=256):
        super().__init__()
        self.source_embedding = nn.Embedding(src_vocab, d_model)
        self.target_embedding = nn.Embedding(tgt_vocab, d_model)
        self.positional_encoding = BookPositionalEncoding(d_model, dropout, max_len)
        self.transformer = nn.Transformer(
            d_model=d_model,
            nhead=num_heads,
            num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            batch_first=True,
        )
        self.output_layer = nn.Linear(d_model, tgt_vocab)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """src (B, S), tgt (B, T) -> logits (B, T, V_tgt), with the masks the book passes."""
        tgt_mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1], device=tgt.device)  # (T, T) -inf above
        src_padding = src == PAD_ID  # (B, S) True = padding
        out = self.transformer(
            self.positional_encoding(self.source_embedding(src)),
            self.positional_encoding(self.target_embedding(tgt)),
            tgt_mask=tgt_mask,
            src_key_padding_mask=src_padding,
            tgt_key_padding_mask=tgt == PAD_ID,
            memory_key_padding_mask=src_padding,
        )  # (B, T, D)
        return self.output_layer(out)
