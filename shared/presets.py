"""Named model configurations: the book's two models, the original paper's base model, a test size.

Vocabulary sizes of the book models depend on the data they were trained on; the importers in
`shared.book_import` read them (and the other sizes) from the tensors and take from the preset only
what tensors cannot tell: number of heads, norm epsilon, dropout.
"""

from shared.config import ModelConfig

PRESETS: dict[str, ModelConfig] = {
    # Model A, book chapter 3: bias-free projections, the book's own norm, no final norms.
    "book-ch3": ModelConfig(
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
    "book-ch4": ModelConfig(
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
    "base": ModelConfig(
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
    "tiny": ModelConfig(
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


def _t5(**sizes) -> ModelConfig:
    """T5 / FLAN-T5 shapes (google/t5-*, google/flan-t5-*: 32128 tokens, d_kv 64, 512 positions)."""
    return ModelConfig(
        family="t5", src_vocab_size=32128, tgt_vocab_size=32128, head_size=64, max_len=512,
        dropout=0.1, attention_dropout=0.1, embedding_dropout=0.1, pad_id=0, bos_id=0, eos_id=1,
        bias=False, norm_placement="pre", norm_kind="rms", norm_eps=1e-6, final_norms=True,
        scale_embeddings=False, positional="relative", relative_attention_num_buckets=32,
        relative_attention_max_distance=128, **sizes,
    )


PRESETS.update({
    # T5 v1.0 (Raffel et al.): ReLU FFN, output tied to the embedding with a d_model**-0.5 rescale.
    "t5-small": _t5(d_model=512, num_heads=8, d_ff=2048, num_encoder_layers=6, num_decoder_layers=6,
                    activation="relu", gated_ffn=False, tie_embeddings="all"),
    # T5 v1.1 / FLAN-T5: gated tanh-GELU FFN, an own output layer; the book's chapters 5 and 6 use base.
    "flan-t5-small": _t5(d_model=512, num_heads=6, d_ff=1024, num_encoder_layers=8, num_decoder_layers=8,
                         activation="gelu_tanh", gated_ffn=True, tie_embeddings="src_tgt"),
    "flan-t5-base": _t5(d_model=768, num_heads=12, d_ff=2048, num_encoder_layers=12, num_decoder_layers=12,
                        activation="gelu_tanh", gated_ffn=True, tie_embeddings="src_tgt"),
})


PRESETS.update({
    # GPT-2 small (124M): learned positions, LayerNorm, tanh GELU, fused c_attn, head tied to wte.
    "gpt2": ModelConfig(
        family="causal_lm", src_vocab_size=50257, tgt_vocab_size=50257, d_model=768, num_heads=12, d_ff=3072,
        num_encoder_layers=0, num_decoder_layers=12, dropout=0.1, attention_dropout=0.1, embedding_dropout=0.1,
        max_len=1024, pad_id=50256, bos_id=50256, eos_id=50256, bias=True, norm_placement="pre",
        norm_kind="layernorm", norm_eps=1e-5, activation="gelu_tanh", final_norms=True, positional="learned",
        tie_embeddings="tgt_out", fused_qkv=True,
    ),
    # A small Llama-style model (55M, 33M of them its 32k-token tables): RMS norm, rotary, SwiGLU, 8 query
    # heads over 2 key/value heads, untied head, no biases.
    "llama-small": ModelConfig(
        family="causal_lm", src_vocab_size=32000, tgt_vocab_size=32000, d_model=512, num_heads=8, num_kv_heads=2,
        d_ff=1376, num_encoder_layers=0, num_decoder_layers=8, dropout=0.0, attention_dropout=0.0,
        embedding_dropout=0.0, max_len=2048, pad_id=0, bos_id=1, eos_id=2, bias=False, norm_placement="pre",
        norm_kind="rms", norm_eps=1e-6, activation="silu", gated_ffn=True, final_norms=True, positional="rotary",
        rope_theta=10000.0, tie_embeddings="none",
    ),
})
