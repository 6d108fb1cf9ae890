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
}
