"""The book's model B (chapter 4) on the real torch.nn.Transformer: the benchmarks' speed reference.

Source/target embeddings (not scaled) + interleaved sinusoid + dropout -> nn.Transformer(batch_first=True)
-> output Linear, with the masks the book passes: a float causal `tgt_mask` (-inf above the diagonal)
and boolean key-padding masks for source, target and memory. Sizes come from a ModelConfig (the
`book-ch4` preset by default), so the reference and our stacks are built from one description.
parity_tests/book_models.py holds the same model for the importer tests (book key names); this copy
exists so the benchmarks do not import from a test package.
"""

from __future__ import annotations

import torch
from torch import nn

from shared.config.model_config import ModelConfig
from shared.parity.numerics import sinusoid_table


class ReferenceNNTransformer(nn.Module):
    """model(src_ids (B, S), tgt_ids (B, T)) -> logits (B, T, V), built on torch.nn.Transformer."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        problems = _unsupported(config)
        if problems:
            raise ValueError("torch.nn.Transformer cannot express this config:\n  - " + "\n  - ".join(problems))
        self.pad_id = config.pad_id
        self.source_embedding = nn.Embedding(config.src_vocab_size, config.d_model)
        self.target_embedding = nn.Embedding(config.tgt_vocab_size, config.d_model)
        # (1, max_len, D), a buffer as in the book (same values as our shared sinusoid).
        self.register_buffer("pe_table", torch.from_numpy(sinusoid_table(config.max_len, config.d_model))[None])
        self.embed_dropout = nn.Dropout(config.embedding_dropout)
        self.transformer = nn.Transformer(
            d_model=config.d_model,
            nhead=config.num_heads,
            num_encoder_layers=config.num_encoder_layers,
            num_decoder_layers=config.num_decoder_layers,
            dim_feedforward=config.d_ff,
            dropout=config.dropout,
            activation=config.activation,
            layer_norm_eps=config.norm_eps,
            batch_first=True,
            norm_first=config.norm_placement == "pre",
        )
        self.output_layer = nn.Linear(config.d_model, config.tgt_vocab_size)

    def _embed(self, table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        x = table(ids)  # (B, L, D)
        return self.embed_dropout(x + self.pe_table[:, : ids.shape[1]].to(x.dtype))

    def forward(self, src_ids: torch.Tensor, tgt_ids: torch.Tensor) -> torch.Tensor:
        T = tgt_ids.shape[1]
        tgt_mask = nn.Transformer.generate_square_subsequent_mask(T, device=tgt_ids.device, dtype=self.pe_table.dtype)  # (T, T)
        src_padding = src_ids == self.pad_id  # (B, S) True = padding
        hidden = self.transformer(
            self._embed(self.source_embedding, src_ids),
            self._embed(self.target_embedding, tgt_ids),
            tgt_mask=tgt_mask,
            src_key_padding_mask=src_padding,
            tgt_key_padding_mask=tgt_ids == self.pad_id,
            memory_key_padding_mask=src_padding,
        )  # (B, T, D)
        return self.output_layer(hidden)  # (B, T, V)


def _unsupported(config: ModelConfig) -> list[str]:
    """The config choices nn.Transformer has no switch for, each as a problem line."""
    required = {"norm_kind": "layernorm", "final_norms": True, "bias": True, "scale_embeddings": False,
                "tie_embeddings": "none", "positional": "sinusoid"}
    found = [f"{name} must be {value!r}, got {getattr(config, name)!r}"
             for name, value in required.items() if getattr(config, name) != value]
    if config.activation not in ("relu", "gelu"):  # nn.Transformer's "gelu" is the exact erf GELU
        found.append(f"activation must be 'relu' or 'gelu', got {config.activation!r}")
    if config.attention_dropout != config.dropout:
        found.append(f"attention_dropout ({config.attention_dropout}) must equal dropout ({config.dropout})")
    return found
