"""The PyTorch encoder-decoder Transformer (object-oriented twin of jax_impl/model.py)."""

from __future__ import annotations

import math

import torch
from torch import nn

from shared.config.model_config import ModelConfig
from torch_impl.attention import Attention, write_row_slots
from torch_impl.layers import (
    Dropout,
    FeedForward,
    MultiHeadAttention,
    Norm,
    OutputBias,
    PositionalEncoding,
    check_kernel,
    residual,
    upcast_dtype,
)
from torch_impl.vocab_projection import VocabLinear, vocab_linear


class EncoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, attention: str = "math"):
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"
        self.self_attn = MultiHeadAttention(config, attention)
        self.self_attn_norm = Norm(config)
        self.ffn = FeedForward(config)
        self.ffn_norm = Norm(config)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        x = residual(x, self.self_attn_norm, lambda h: self.self_attn(h, h, src_mask), self.dropout, self.pre_norm)
        return residual(x, self.ffn_norm, self.ffn, self.dropout, self.pre_norm)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, attention: str = "math"):
        super().__init__()
        self.pre_norm = config.norm_placement == "pre"
        self.self_attn = MultiHeadAttention(config, attention)
        self.self_attn_norm = Norm(config)
        self.cross_attn = MultiHeadAttention(config, attention)
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

    def step(self, y: torch.Tensor, layer_cache: dict, t: int, self_mask: torch.Tensor, cross_mask: torch.Tensor) -> torch.Tensor:
        """forward() for the one position t: y (B, 1, D) -> (B, 1, D), given the cached keys/values.

        t is an int (every row at slot t), or a (B,) tensor of per-row slots (continuous batching,
        twinformer/serving/batching.py), self_mask (B, 1, N) then covering all N slots.

        Writes this position's self-attention key and value into layer_cache (slot t) and attends
        over slots 0..t; cross-attention reads the keys/values of the memory computed once.
        """
        k_cache, v_cache = layer_cache["self_k"], layer_cache["self_v"]  # (B, H, N, K)

        def self_block(h: torch.Tensor) -> torch.Tensor:
            q, k, v = self.self_attn.self_qkv(h)  # (B, H, 1, K)
            if isinstance(t, torch.Tensor):  # t (B,): row b at its own slot t[b]; self_mask (B, 1, N) hides the rest
                write_row_slots(k_cache, v_cache, k, v, t)
                return self.self_attn.attend(q, k_cache, v_cache, self_mask)
            k_cache[:, :, t] = k[:, :, 0]
            v_cache[:, :, t] = v[:, :, 0]
            return self.self_attn.attend(q, k_cache[:, :, : t + 1], v_cache[:, :, : t + 1], self_mask)

        def cross_block(h: torch.Tensor) -> torch.Tensor:
            q = self.cross_attn.queries(h)  # (B, H, 1, K)
            return self.cross_attn.attend(q, layer_cache["cross_k"], layer_cache["cross_v"], cross_mask)

        y = residual(y, self.self_attn_norm, self_block, self.dropout, self.pre_norm)
        y = residual(y, self.cross_attn_norm, cross_block, self.dropout, self.pre_norm)
        return residual(y, self.ffn_norm, self.ffn, self.dropout, self.pre_norm)


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig, attention: str = "math"):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(config, attention) for _ in range(config.num_encoder_layers))
        self.final_norm = Norm(config) if config.final_norms else None

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, src_mask)
        return self.final_norm(x) if self.final_norm is not None else x


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig, attention: str = "math"):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(config, attention) for _ in range(config.num_decoder_layers))
        self.final_norm = Norm(config) if config.final_norms else None

    def forward(self, y, memory, self_mask, cross_mask) -> torch.Tensor:
        for layer in self.layers:
            y = layer(y, memory, self_mask, cross_mask)
        return self.final_norm(y) if self.final_norm is not None else y

    def step(self, y: torch.Tensor, cache: dict, t: int, self_mask: torch.Tensor, cross_mask: torch.Tensor) -> torch.Tensor:
        """forward() for position t alone: y (B, 1, D) -> (B, 1, D); updates cache["layers"]."""
        for layer, layer_cache in zip(self.layers, cache["layers"]):
            y = layer.step(y, layer_cache, t, self_mask, cross_mask)
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
    `attention` picks the attention kernel ("math" or "fused", see layers.MultiHeadAttention);
    it changes neither the parameters nor the checkpoint.
    """

    def __init__(self, config: ModelConfig, attention: str = "math"):
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
        self.encoder = Encoder(config, attention)
        self.decoder = Decoder(config, attention)
        if config.tie_embeddings == "none":
            self.output_proj = VocabLinear(config.d_model, config.tgt_vocab_size, bias=config.bias)
        elif config.bias:
            self.output_proj = OutputBias(config.tgt_vocab_size)

    # -- embeddings --------------------------------------------------------------------------------
    def _source_table(self) -> nn.Embedding:
        return self.shared_embed if self.config.tie_embeddings == "all" else self.src_embed

    def _target_table(self) -> nn.Embedding:
        return self.shared_embed if self.config.tie_embeddings == "all" else self.tgt_embed

    def _embed(self, table: nn.Embedding, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """(B, L) ids at positions start .. start + L - 1 -> (B, L, D): embedding (* sqrt(D)) +
        position, then dropout.

        One float32 chain for 16-bit tables, rounded once to the table's dtype (as the Flax twin):
        rounding after the scale and again after the add would put a rounding point where XLA,
        which fuses the chain, has none.
        """
        if start + ids.shape[1] > self.config.max_len:
            raise ValueError(f"sequence length {start + ids.shape[1]} exceeds max_len {self.config.max_len}")
        x = table(ids)
        h = x.to(upcast_dtype(x.dtype))
        if self.config.scale_embeddings:
            h = h * math.sqrt(self.config.d_model)
        if self.config.positional == "learned":
            h = h + self.pos_embed(torch.arange(start, start + ids.shape[1], device=ids.device)).to(h.dtype)
        else:
            h = self.pos_encoding(h, start)
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
        return vocab_linear(y, self._target_table().weight, self.output_proj.bias if self.config.bias else None)

    def forward(self, src_ids: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(src_ids), src_ids, tgt_ids)

    # -- incremental decoding (the KV cache; the loop is torch_impl/generate.py) ----------------------
    def start_cache(self, src_ids: torch.Tensor, steps: int, copies: int = 1) -> dict:
        """src (B, S) -> a decoding cache for B*C rows (row b*C + c is copy c of source row b).

        The source is encoded once; each decoder layer's cross-attention keys/values are computed
        once from the memory; self-attention keys/values get N empty slots (B*C, H, N, K).
        """
        memory = self.encode(src_ids).repeat_interleave(copies, dim=0)  # (B*C, S, D)
        src_ok = (src_ids != self.config.pad_id).repeat_interleave(copies, dim=0)  # (B*C, S)
        rows, H, K = memory.shape[0], self.config.num_heads, self.config.head_dim
        layers = []
        for layer in self.decoder.layers:
            cross_k, cross_v = layer.cross_attn.keys_values(memory)  # (B*C, H, S, K)
            empty = memory.new_zeros(rows, H, steps, K)  # (B*C, H, N, K)
            layers.append({"self_k": empty, "self_v": empty.clone(), "cross_k": cross_k, "cross_v": cross_v})
        key_ok = torch.zeros(rows, steps, dtype=torch.bool, device=memory.device)  # (B*C, N)
        return {"layers": layers, "key_ok": key_ok, "src_ok": src_ok, "filled": 0}

    def decode_step(self, cache: dict, tokens: torch.Tensor, t: int) -> tuple[torch.Tensor, dict]:
        """Feed tokens (B,) at position t (BOS at 0) -> next-token logits (B, V), the updated cache.

        decode(...)[:, t] of the prefix fed so far, computed from the cache: the same masks (a PAD
        token's key is hidden from later positions), the same layers, one position at a time.
        """
        cache["key_ok"][:, t] = tokens != self.config.pad_id
        self_mask = cache["key_ok"][:, None, : t + 1]  # (B, 1, t+1): slots <= t holding a token
        cross_mask = cache["src_ok"][:, None, :]  # (B, 1, S)
        y = self._embed(self._target_table(), tokens[:, None], start=t)  # (B, 1, D)
        y = self.decoder.step(y, cache, t, self_mask, cross_mask)
        cache["filled"] = t + 1  # slots 0..t hold keys/values (a Python int: no device sync to read it)
        return self.project(y)[:, 0, :], cache  # (B, V)


def reorder_cache(cache: dict, rows: torch.Tensor) -> dict:
    """Row i of the result continues row rows[i] (B,): beam search moving hypotheses to new slots.

    Rows must stay within their source row's copies, so the cross-attention keys/values (equal
    across copies) are kept as they are; only the per-hypothesis state is gathered, and of the
    self-attention slots only those filled so far (later ones are written before they are read).
    """
    filled = cache["filled"]

    def gather(slots: torch.Tensor) -> torch.Tensor:  # (B*C, H, N, K)
        out = torch.empty_like(slots)
        out[:, :, :filled] = slots[:, :, :filled].index_select(0, rows)
        return out

    layers = [dict(layer, self_k=gather(layer["self_k"]), self_v=gather(layer["self_v"])) for layer in cache["layers"]]
    return dict(cache, layers=layers, key_ok=cache["key_ok"].index_select(0, rows))


def set_attention_kernel(model: nn.Module, kernel: str) -> nn.Module:
    """Switch every attention module of `model` to kernel "math" or "fused" (weights untouched)."""
    check_kernel(kernel)
    switched = 0
    for module in model.modules():
        if isinstance(module, Attention):
            module.kernel, switched = kernel, switched + 1
    if kernel != "math" and not switched:
        raise ValueError(f"{type(model).__name__} has no attention module with a {kernel!r} kernel")
    return model
