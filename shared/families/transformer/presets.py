"""The transformer family's presets as ModelConfig fields: the book's two models, the original
paper's base model, a test size (shared/config/presets.py builds the configs).

Vocabulary sizes of the book models depend on the data they were trained on; the importers in
`shared.checkpoints.book_import` read them (and the other sizes) from the tensors and take from the preset only
what tensors cannot tell: number of heads, norm epsilon, dropout.
"""

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # Model A, book chapter 3: bias-free projections, the book's own norm, no final norms.
    "book-ch3": dict(
        src_vocab_size=8000,
        tgt_vocab_size=8000,
        d_model=512,
        num_heads=8,
        d_ff=2048,
        num_encoder_layers=6,
        num_decoder_layers=6,
        dropout=0.2,
        attention_dropout=0.2,
        embedding_dropout=0.1,
        max_len=5000,
        pad_id=0,
        bias=False,
        norm_placement="post",
        norm_kind="book",
        norm_eps=1e-5,
        activation="relu",
        final_norms=False,
        scale_embeddings=False,
        tie_embeddings="none",
        positional="sinusoid",
    ),
    # Model B, book chapter 4: a wrapper around torch.nn.Transformer(batch_first=True).
    "book-ch4": dict(
        src_vocab_size=8000,
        tgt_vocab_size=8000,
        d_model=256,
        num_heads=4,
        d_ff=256,
        num_encoder_layers=3,
        num_decoder_layers=3,
        dropout=0.25,
        attention_dropout=0.25,
        embedding_dropout=0.25,
        max_len=256,
        pad_id=0,
        bias=True,
        norm_placement="post",
        norm_kind="layernorm",
        norm_eps=1e-5,
        activation="relu",
        final_norms=True,  # nn.Transformer adds a LayerNorm after each stack
        scale_embeddings=False,
        tie_embeddings="none",
        positional="sinusoid",
    ),
    # "Attention Is All You Need", base model: shared 37k BPE vocabulary, tied embeddings.
    "base": dict(
        src_vocab_size=37000,
        tgt_vocab_size=37000,
        d_model=512,
        num_heads=8,
        d_ff=2048,
        num_encoder_layers=6,
        num_decoder_layers=6,
        dropout=0.1,
        attention_dropout=0.0,
        embedding_dropout=0.1,
        max_len=512,
        bias=True,
        norm_placement="post",
        norm_kind="layernorm",
        norm_eps=1e-6,
        activation="relu",
        final_norms=False,
        scale_embeddings=True,
        tie_embeddings="all",
        positional="sinusoid",
    ),
    # Small enough for property tests and CI: every option still exercised by overrides.
    "tiny": dict(
        src_vocab_size=61,
        tgt_vocab_size=67,
        d_model=32,
        num_heads=4,
        d_ff=48,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dropout=0.0,
        attention_dropout=0.0,
        embedding_dropout=0.0,
        max_len=64,
    ),
}
