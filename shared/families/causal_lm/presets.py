"""The causal_lm family's presets as ModelConfig fields (shared/config/presets.py builds the configs)."""

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # GPT-2 small (124M): learned positions, LayerNorm, tanh GELU, fused c_attn, head tied to wte.
    "gpt2": dict(
        src_vocab_size=50257, tgt_vocab_size=50257, d_model=768, num_heads=12, d_ff=3072,
        num_encoder_layers=0, num_decoder_layers=12, dropout=0.1, attention_dropout=0.1, embedding_dropout=0.1,
        max_len=1024, pad_id=50256, bos_id=50256, eos_id=50256, bias=True, norm_placement="pre",
        norm_kind="layernorm", norm_eps=1e-5, activation="gelu_tanh", final_norms=True, positional="learned",
        tie_embeddings="tgt_out", fused_qkv=True,
    ),
    # A small Llama-style model (55M, 33M of them its 32k-token tables): RMS norm, rotary, SwiGLU, 8 query
    # heads over 2 key/value heads, untied head, no biases.
    "llama-small": dict(
        src_vocab_size=32000, tgt_vocab_size=32000, d_model=512, num_heads=8, num_kv_heads=2,
        d_ff=1376, num_encoder_layers=0, num_decoder_layers=8, dropout=0.0, attention_dropout=0.0,
        embedding_dropout=0.0, max_len=2048, pad_id=0, bos_id=1, eos_id=2, bias=False, norm_placement="pre",
        norm_kind="rms", norm_eps=1e-6, activation="silu", gated_ffn=True, final_norms=True, positional="rotary",
        rope_theta=10000.0, tie_embeddings="none",
    ),
    # Mistral-7B (v0.1): Llama-shaped with 32 query heads over 8 key/value heads and a 4096-token sliding window.
    "mistral-7b": dict(
        src_vocab_size=32000, tgt_vocab_size=32000, d_model=4096, num_heads=32, num_kv_heads=8, d_ff=14336,
        num_encoder_layers=0, num_decoder_layers=32, dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0,
        max_len=32768, pad_id=2, bos_id=1, eos_id=2, bias=False, norm_placement="pre", norm_kind="rms", norm_eps=1e-5,
        activation="silu", gated_ffn=True, final_norms=True, positional="rotary", rope_theta=10000.0,
        tie_embeddings="none", sliding_window=4096,
    ),
    # Qwen2.5-0.5B: biases on q/k/v only, 14 query heads over 2 key/value heads, rope theta 1e6, tied head.
    "qwen2.5-0.5b": dict(
        src_vocab_size=151936, tgt_vocab_size=151936, d_model=896, num_heads=14, num_kv_heads=2, d_ff=4864,
        num_encoder_layers=0, num_decoder_layers=24, dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0,
        max_len=32768, pad_id=151643, bos_id=151643, eos_id=151643, bias=False, qkv_bias=True, norm_placement="pre",
        norm_kind="rms", norm_eps=1e-6, activation="silu", gated_ffn=True, final_norms=True, positional="rotary",
        rope_theta=1000000.0, tie_embeddings="tgt_out",
    ),
    # Gemma-2B: GeGLU (tanh GELU), RMS norm times (1 + w), embeddings times sqrt(D), 8 query heads of size
    # 256 over 1 key/value head, tied head. (Its head size is D / H; Gemma-7B's is not: 16 x 256 != 3072,
    # head_size=256 there.)
    "gemma-2b": dict(
        src_vocab_size=256000, tgt_vocab_size=256000, d_model=2048, num_heads=8, num_kv_heads=1,
        d_ff=16384, num_encoder_layers=0, num_decoder_layers=18, dropout=0.0, attention_dropout=0.0,
        embedding_dropout=0.0, max_len=8192, pad_id=0, bos_id=2, eos_id=1, bias=False, norm_placement="pre",
        norm_kind="rms", norm_eps=1e-6, norm_one_plus_weight=True, scale_embeddings=True, activation="gelu_tanh",
        gated_ffn=True, final_norms=True, positional="rotary", rope_theta=10000.0, tie_embeddings="tgt_out",
    ),
}
