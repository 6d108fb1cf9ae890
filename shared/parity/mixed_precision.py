"""Where each op computes and where it rounds, when activations are stored in 16 bits.

One policy for both stacks (docs/ROUNDING.md has the audit behind it). It covers two modes:

- 16-bit weights ("bfloat16" / "float16" parity runs): parameters and activations are 16-bit.
- bf16-mixed training (`TrainConfig.precision = "bf16-mixed"`): parameters, gradients and Adam
  moments stay float32 (the master copy); matmuls run in bfloat16. PyTorch gets this from
  `torch.autocast(dtype=torch.bfloat16)` (which casts the inputs of linear/matmul/einsum); the Flax
  modules take the same decisions explicitly through their `dtype` field (the compute dtype).

The rule behind every row: an op reads its inputs, widens them to float32, runs its whole
elementwise chain in float32 and rounds ONCE, to its output dtype, at the end. Two stacks that
follow it round at the same points, so kernel fusion (XLA keeps a fused chain in float32 between
ops; PyTorch eager rounds after every op) can no longer move a rounding point, and constants
(sqrt(D), 1/sqrt(K), 1/(1-p)) are float32 in both stacks, never rounded to 16 bits first.

`MIXED_POLICY` is checked against both stacks by parity_tests/test_bf16_mixed.py: every module's
output dtype under bf16-mixed must be the one its row says.
"""

from __future__ import annotations

from dataclasses import dataclass

TRAIN_PRECISIONS = ("float32", "tf32", "bf16-mixed")
# The dtype matmuls compute in, per training precision (None: the parameters' own dtype).
COMPUTE_DTYPE: dict[str, str | None] = {"float32": None, "tf32": None, "bf16-mixed": "bfloat16"}
# How float32 matmuls (those outside the bf16 compute: none in the model, but e.g. the loss's) run.
MATMUL_PRECISION: dict[str, str] = {"float32": "float32", "tf32": "tf32", "bf16-mixed": "float32"}


@dataclass(frozen=True)
class OpRule:
    """One op of the model: the dtype it computes in and the dtype it rounds its output to."""

    op: str  # module or op (torch module-path suffix in parentheses where it is a module)
    computes_in: str
    output: str  # under bf16-mixed ("stream" = the residual stream's dtype: float32)
    why: str


MIXED_POLICY: tuple[OpRule, ...] = (
    OpRule("embedding lookup (src_embed, tgt_embed, shared_embed, pos_embed)", "float32", "float32",
           "a lookup of float32 master weights: exact, nothing to gain from bf16"),
    OpRule("embedding chain: lookup * sqrt(D) + position (embed_dropout)", "float32", "float32",
           "the residual stream starts here; sqrt(D) and the sinusoid stay float32 constants"),
    OpRule("Linear / Dense (q_proj, k_proj, v_proj, out_proj, fc1, fc2, output_proj)", "bfloat16 inputs, float32 accumulate",
           "bfloat16", "torch.autocast's linear: input, weight and bias cast to bf16, + bias in the float32 "
           "accumulator, rounded once"),
    OpRule("tied output projection (logits)", "bfloat16 inputs, float32 accumulate", "bfloat16",
           "the same recipe as a Linear whose weight is the embedding table (F.linear in torch)"),
    OpRule("attention scores q.k^T", "bfloat16 inputs, float32 accumulate", "bfloat16", "autocast's einsum/bmm"),
    OpRule("scale 1/sqrt(K), mask, softmax (attention probabilities)", "float32", "bfloat16",
           "one float32 chain from the rounded scores; probabilities rounded once to v's dtype"),
    OpRule("probabilities @ v (context)", "bfloat16 inputs, float32 accumulate", "bfloat16", "autocast's einsum/bmm"),
    OpRule("activation (relu, gelu, gelu_tanh)", "float32", "bfloat16",
           "torch's bf16 GELU kernel widens internally and rounds once; Flax's jax.nn.gelu on bf16 "
           "would round after each of its ~6 ops, so both widen explicitly"),
    OpRule("dropout (attn_dropout, dropout, embed_dropout)", "float32", "input dtype",
           "x * keep * float32(1/(1-p)), rounded once: torch's kernel formula (Flax's own divides by "
           "keep_prob, which a bf16 input would round to bf16 first)"),
    OpRule("residual add x + drop(f(x)) (layers.N)", "float32", "stream",
           "the float32 stream plus a bf16 sub-layer output (widened, exact)"),
    OpRule("norms (self_attn_norm, cross_attn_norm, ffn_norm, final_norm)", "float32", "input dtype",
           "statistics in float32; in bf16-mixed the input is the float32 stream"),
    OpRule("loss: log-softmax cross-entropy", "float32", "float32", "logits widened before the loss in both stacks"),
    OpRule("gradients, Adam moments, update, weights", "float32", "float32",
           "the master copy: autograd returns float32 gradients through the casts, optax likewise"),
)


def mixed_output_dtype(module: str) -> str:
    """The output dtype MIXED_POLICY gives a module (torch module-path spelling) under bf16-mixed."""
    leaf = module.rsplit(".", 1)[-1]
    if module == "logits" or leaf in {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "output_proj",
                                      "self_attn", "cross_attn", "ffn", "attn_dropout"}:
        return "bfloat16"  # matmul outputs and what wraps them (attention, FFN: their last op is a Linear)
    if leaf == "dropout":  # inside the FFN (after the activation) and on sub-layer outputs
        return "bfloat16"
    return "float32"  # embeddings, embed_dropout, norms, layers (the stream), encoder, decoder


def compute_dtype(precision: str) -> str | None:
    if precision not in COMPUTE_DTYPE:
        raise ValueError(f"unknown training precision {precision!r}; expected one of {', '.join(TRAIN_PRECISIONS)}")
    return COMPUTE_DTYPE[precision]

