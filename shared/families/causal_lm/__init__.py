"""The "causal_lm" family: decoder-only language models, GPT-2 and Llama-style (transformers'
GPT2LMHeadModel and LlamaForCausalLM), and Llama's variants Mistral, Qwen2 and Gemma.

Architecture (both stacks: torch_impl/families/causal_lm.py, jax_impl/families/causal_lm.py):
  * `embed_tokens` (V, D), plus `pos_embed` (max_len, D) for learned positions (GPT-2), or rotary
    embeddings of q and k (Llama: HF's rotate_half layout, first half of each head's dims paired
    with the second half, frequencies rope_theta ** (-2i / K));
  * num_decoder_layers pre-norm blocks (LayerNorm or RMS norm), each
    x + drop(o_proj(attn(attn_norm x))), then x + drop(mlp(mlp_norm x)), and a `final_norm`;
  * attention: causal, scaled by 1/sqrt(K), H query heads sharing G = num_kv_heads key/value heads
    (grouped-query; G = H is plain multi-head). Projections are either one fused `c_attn`
    D -> (H + 2G) K (GPT-2; fused_qkv, so a LoRA on c_attn has PEFT's shapes) or separate
    q_proj/k_proj/v_proj (Llama). The fused output is laid out [q | k | v], as HF's split does;
  * MLP: down_proj(act(up_proj x)) (GPT-2: c_fc/c_proj, tanh GELU) or, gated (Llama's SwiGLU),
    down_proj(act(gate_proj x) * up_proj x);
  * output: the embedding table (tie_embeddings "tgt_out", GPT-2) or an own `lm_head` (Llama), never
    a bias;
  * variants, each an option of this family (shared/families/causal_lm/options.py):
    Mistral: `sliding_window` W, query at slot t sees keys at slots t - W < s <= t (HF's
    sliding_window_overlay; the slots of a left-padded row are contiguous, so this is the same
    window in positions), for the uncached forward and every cached step;
    Qwen2: `qkv_bias`, biases on q/k/v_proj only; Gemma: `norm_one_plus_weight` (RMS norm times
    (1 + w), the product rounded once as GemmaRMSNorm), `scale_embeddings` (embeddings times
    sqrt(D) rounded to float32 then to the hidden dtype, as HF's embed_scale buffer), GeGLU (gated,
    gelu_tanh) and head_size != d_model / num_heads;
  * padding: an attention_mask (B, T) marks real tokens; positions are cumsum(mask) - 1 clamped to
    >= 0 (what HF's generate passes), so a left-padded row gets the positions of the unpadded row.

HF checkpoints: GPT-2 keeps its Conv1D weights as (in, out); ours are Linear (out, in), so those
keys are transposed on the way in and out (`transposed_keys`, an exact operation, so round trips
stay byte-equal). c_attn stays fused in ours (a documented choice: PEFT adapters on c_attn then
have the same A and B as ours).
"""

from shared.families.causal_lm.hf import (
    HF, aliases, config_to_hf, fallbacks, fields_from_hf, is_gpt2, key_table, module_table, transposed_keys,
)
from shared.families.causal_lm.options import attention_shapes, has_bias, is_tied, kv_heads, mlp_leaves, problems
from shared.families.causal_lm.positions import embedding_scale, position_ids, rope_tables
from shared.families.causal_lm.presets import PRESETS
from shared.families.causal_lm.weights import module_specs
from shared.families.family import BPE_TOKENIZER, Family

FAMILY = Family(
    name="causal_lm", problems=problems, module_specs=module_specs, decoder_only=True, tokenizer=BPE_TOKENIZER,
    # grouped-query attention, the rotary base and GPT-2's fused projection: the defaults elsewhere
    own_options={"num_kv_heads": None, "rope_theta": 10000.0, "fused_qkv": False, "rope_scaling": None,
                 # the variants: Mistral's window, Qwen2's q/k/v biases, Gemma's (1 + w) norm
                 "sliding_window": None, "qkv_bias": False, "norm_one_plus_weight": False},
    presets=PRESETS, hf=HF,
)

__all__ = [
    "FAMILY", "HF", "PRESETS", "aliases", "attention_shapes", "config_to_hf", "embedding_scale", "fallbacks",
    "fields_from_hf", "has_bias",
    "is_gpt2", "is_tied", "key_table", "kv_heads", "mlp_leaves", "module_specs", "module_table", "position_ids",
    "problems", "rope_tables", "transposed_keys",
]
