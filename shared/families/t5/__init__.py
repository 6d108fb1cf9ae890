"""The "t5" family: T5 v1.0 (t5-small...) and T5 v1.1 / FLAN-T5, as transformers' T5ForConditionalGeneration.

Architecture (both stacks: torch_impl/families/t5.py, jax_impl/families/t5.py):
  * one embedding table `shared_embed` for source and target, no positional embedding: each stack's
    first layer holds a relative position bias table (buckets, H), bidirectional in the encoder and
    causal in the decoder, added to the attention scores of every layer of that stack;
  * pre-norm residual blocks with the RMS norm (no mean subtraction, no bias, variance in float32),
    a final norm after each stack; no biases anywhere and no 1/sqrt(K) scaling of the scores;
  * FFN wo(act(wi x)) (v1.0, ReLU) or wo(act(wi_0 x) * wi_1 x) (v1.1, gated tanh-GELU);
  * output: the tied table with decoder output * d_model**-0.5 (tie_embeddings "all", v1.0) or
    an own `output_proj` without rescale ("src_tgt", v1.1);
  * dropout: `embedding_dropout` after the embedding and after each final norm (HF's stack
    dropout), `attention_dropout` on attention probabilities, `dropout` inside the FFN and on each
    sub-layer output (HF has one dropout_rate for all: export needs the three equal);
  * the decoder starts from bos_id = the pad id, so no mask is ever derived from "token == pad" in
    the decoder (it is causal only, as in HF); the source mask comes from explicit masks or lengths.
"""

from __future__ import annotations

from shared.families.family import T5_TOKENIZER, Family
from shared.families.t5.hf import HF, LINEAR_NAMES, aliases, config_to_hf, fallbacks, fields_from_hf, key_table
from shared.families.t5.options import feed_forward_leaves, is_tied, problems
from shared.families.t5.positions import relative_position_buckets
from shared.families.t5.presets import PRESETS
from shared.families.t5.weights import module_specs

FAMILY = Family(
    name="t5", problems=problems, module_specs=module_specs, decoder_only=False, tokenizer=T5_TOKENIZER,
    presets=PRESETS, hf=HF,
)

__all__ = [
    "FAMILY", "HF", "LINEAR_NAMES", "PRESETS", "aliases", "config_to_hf", "fallbacks", "feed_forward_leaves",
    "fields_from_hf", "is_tied", "key_table", "module_specs", "problems", "relative_position_buckets",
]
