"""The t5 family's presets as ModelConfig fields (shared/config/presets.py builds the configs)."""

from typing import Any


def _t5(**sizes: Any) -> dict[str, Any]:
    """T5 / FLAN-T5 shapes (google/t5-*, google/flan-t5-*: 32128 tokens, d_kv 64, 512 positions)."""
    return dict(
        src_vocab_size=32128, tgt_vocab_size=32128, head_size=64, max_len=512,
        dropout=0.1, attention_dropout=0.1, embedding_dropout=0.1, pad_id=0, bos_id=0, eos_id=1,
        bias=False, norm_placement="pre", norm_kind="rms", norm_eps=1e-6, final_norms=True,
        scale_embeddings=False, positional="relative", relative_attention_num_buckets=32,
        relative_attention_max_distance=128, **sizes,
    )


PRESETS: dict[str, dict[str, Any]] = {
    # T5 v1.0 (Raffel et al.): ReLU FFN, output tied to the embedding with a d_model**-0.5 rescale.
    "t5-small": _t5(d_model=512, num_heads=8, d_ff=2048, num_encoder_layers=6, num_decoder_layers=6,
                    activation="relu", gated_ffn=False, tie_embeddings="all"),
    # T5 v1.1 / FLAN-T5: gated tanh-GELU FFN, an own output layer; the book's chapters 5 and 6 use base.
    "flan-t5-small": _t5(d_model=512, num_heads=6, d_ff=1024, num_encoder_layers=8, num_decoder_layers=8,
                         activation="gelu_tanh", gated_ffn=True, tie_embeddings="src_tgt"),
    "flan-t5-base": _t5(d_model=768, num_heads=12, d_ff=2048, num_encoder_layers=12, num_decoder_layers=12,
                        activation="gelu_tanh", gated_ffn=True, tie_embeddings="src_tgt"),
}


