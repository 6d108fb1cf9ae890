"""Mistral, Qwen2 and Gemma, the causal_lm family's variants, against transformers and across the stacks.

The reference is transformers' own MistralForCausalLM / Qwen2ForCausalLM / GemmaForCausalLM
(causal_lm_helpers.hf_model: the config our config_to_hf writes, random weights plus noise), in
float32 and float64 (true_float64: Gemma's norm, which HF takes in float32 even in a float64 model,
computed with its own (1 + w) formula in float64). Tiny shapes (d 32, 2 layers):
  * logits within the scale-aware float32 bound and float64 agreement, both stacks, left-padded;
  * greedy == transformers' generate in both stacks (weights scaled up so attention is peaked);
  * Mistral with a window (4) shorter than the prompts: cached == uncached greedy tokens in both
    stacks, math and fused kernels; without the window the tokens change (the check has teeth);
  * planted bugs (the window ignored, Gemma's (1 + w) read as w) break the logits comparison;
  * a PEFT LoRA adapter on Qwen2 (q/k/v biases under the adapted projections): PEFT's logits and
    byte-equal adapter files, through the existing PEFT tests;
  * every variant option at once (not an HF model): gradients agree across the stacks;
  * the window and Gemma's (1 + w) each planted in one stack only (planted_bugs.SURVIVOR_SEAMS):
    the logits check names that stack.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
import torch

import jax_impl
import torch_impl
from jax_impl.generate import generate as jax_generate
from parity_tests import planted_bugs
from parity_tests import test_causal_lm_peft as peft_tests
from parity_tests.causal_lm_helpers import hf_logits, hf_logits_unpadded, hf_model, left_padded, our_tensors
from parity_tests.test_causal_lm import check_gradients_agree, check_logits_match_transformers
from parity_tests.test_torch_generate import sharpen
from shared.config.model_config import ModelConfig
from shared.decoding.generation import GenerationConfig
from shared.parity.tolerances import compare_stacks
from torch_impl.generate import generate as torch_generate

TINY = dict(d_model=32, num_heads=4, d_ff=48, num_decoder_layers=2, src_vocab_size=61, tgt_vocab_size=61, max_len=32)
WINDOW = 4
VARIANTS = {
    "mistral": ModelConfig.from_preset("mistral-7b", **TINY, num_kv_heads=2, sliding_window=WINDOW),
    "qwen2": ModelConfig.from_preset("qwen2.5-0.5b", **TINY, num_kv_heads=2, pad_id=60, bos_id=60, eos_id=60,
                                     rope_theta=1000000.0),
    # head size 12: 4 heads x 12 = 48 != d_model 32
    "gemma": ModelConfig.from_preset("gemma-2b", **TINY, num_kv_heads=1, head_size=12),
}
LENGTHS = [11, 6]  # longer than the window: the second row left-padded
STEPS = 8


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_logits_match_transformers_in_both_stacks(name: str) -> None:
    check_logits_match_transformers(VARIANTS[name], LENGTHS, seed=3)


def _peaked_hf(config: ModelConfig, seed: int) -> torch.nn.Module:
    return sharpen(hf_model(config, seed))  # every >= 2-D weight times PEAK: attention peaked


def _both_stacks(config: ModelConfig, tensors: dict, ids, mask, setting: GenerationConfig, kernel: str = "math"):
    """(torch_impl tokens, jax_impl tokens) (B, N)."""
    model = torch_impl.build_model(config, attention=kernel)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()})
    ours = torch_generate(model.eval(), ids, mask, setting)
    params = jax_impl.params_from_state_dict(config, tensors)
    theirs = jax_generate(jax_impl.build_model(config, attention=kernel), params, ids, mask, setting)
    return ours, theirs


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_greedy_equals_transformers_generate_in_both_stacks(name: str) -> None:
    config = VARIANTS[name]
    hf = _peaked_hf(config, seed=1)
    ids, mask = left_padded(np.random.default_rng(1), config, [9, 5, 7])
    setting = GenerationConfig(max_new_tokens=STEPS, eos_token_id=())
    ours, theirs = _both_stacks(config, our_tensors(config, hf), ids, mask, setting)
    with torch.no_grad():
        expected = hf.generate(torch.as_tensor(ids), attention_mask=torch.as_tensor(mask), max_new_tokens=STEPS,
                               do_sample=False, eos_token_id=None, pad_token_id=config.pad_id,
                               min_new_tokens=STEPS)[:, ids.shape[1]:].numpy()
    assert len(np.unique(expected)) >= 4, "near-uniform model: the comparison would prove nothing"
    np.testing.assert_array_equal(ours, expected, err_msg=f"{name}: torch_impl vs transformers")
    np.testing.assert_array_equal(theirs, expected, err_msg=f"{name}: jax_impl vs transformers")


@pytest.mark.parametrize("kernel", ["math", "fused"])
def test_a_window_shorter_than_the_prompt_cached_equals_uncached(kernel: str) -> None:
    """Greedy (the window's mask is the same in every row, so beam reordering adds nothing to check)."""
    config = VARIANTS["mistral"]
    tensors = our_tensors(config, _peaked_hf(config, seed=2))
    ids, mask = left_padded(np.random.default_rng(2), config, [10, 3, 7])
    greedy = GenerationConfig(max_new_tokens=STEPS, eos_token_id=())
    cached = _both_stacks(config, tensors, ids, mask, greedy, kernel)
    uncached = _both_stacks(config, tensors, ids, mask, greedy.replace(use_cache=False), kernel)
    for stack, a, b in zip(("torch_impl", "jax_impl"), cached, uncached):
        np.testing.assert_array_equal(a, b, err_msg=f"{stack} {kernel}: cached != uncached")
    np.testing.assert_array_equal(*cached, err_msg=f"{kernel}: torch_impl != jax_impl")
    if kernel == "math":
        unwindowed = _both_stacks(config.replace(sliding_window=None), tensors, ids, mask, greedy, kernel)
        for stack, a, b in zip(("torch_impl", "jax_impl"), cached, unwindowed):
            assert not np.array_equal(a, b), f"{stack}: the window changes no token; the test would not see it ignored"


def _float32_ratios(config: ModelConfig, port: ModelConfig, seed: int = 3) -> dict[str, float]:
    """{stack: float32 logits' ratio to the scale-aware bound} of `port` (our config) against HF's `config`."""
    from parity_tests.test_causal_lm import _f64
    from parity_tests.causal_lm_helpers import jax_logits, torch_logits

    model = hf_model(config, seed)
    tensors = our_tensors(config, model)
    ids, mask = left_padded(np.random.default_rng(seed), config, LENGTHS)
    real = mask.astype(bool)
    hf32 = hf_logits(model, ids, mask, torch.float32)[real]
    hf64 = hf_logits_unpadded(model, ids, mask, torch.float64)[real]
    ours = {"torch_impl": (torch_logits(port, tensors, ids, mask, torch.float32), torch_logits(port, _f64(tensors), ids, mask, None)),
            "jax_impl": (jax_logits(port, tensors, ids, mask, False), jax_logits(port, tensors, ids, mask, True))}
    return {stack: compare_stacks(low[real], hf32, high[real], hf64, "float32").ratio for stack, (low, high) in ours.items()}


PLANTED = {  # bug -> (variant, the port with the bug)
    "sliding window ignored": ("mistral", lambda c: c.replace(sliding_window=None)),
    "Gemma's (1 + w) read as w": ("gemma", lambda c: c.replace(norm_one_plus_weight=False)),
    "Gemma's embeddings not scaled": ("gemma", lambda c: c.replace(scale_embeddings=False)),
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_a_planted_variant_bug_breaks_the_logits_bound(bug: str, capsys) -> None:
    name, plant = PLANTED[bug]
    config = VARIANTS[name]
    ratios = _float32_ratios(config, plant(config))
    assert all(ratio > 1.0 for ratio in ratios.values()), f"{bug} not caught: {ratios}"
    with capsys.disabled():
        print(f"planted {bug}: float32 ratios " + ", ".join(f"{s} {r:.3g}" for s, r in ratios.items()))


def test_a_peft_lora_on_qwen2_reads_and_writes_peft_and_gives_its_logits(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(peft_tests.CASES, "qwen2", (VARIANTS["qwen2"], ["q_proj", "v_proj", "o_proj"]))
    peft_tests.test_a_peft_adapter_over_transformers_gives_its_logits_in_both_stacks(tmp_path / "logits", "qwen2")
    peft_tests.test_our_adapter_is_what_peft_reads_byte_for_byte(tmp_path / "bytes", "qwen2")


def test_every_variant_option_at_once_has_the_same_gradients_in_both_stacks() -> None:
    """Window + q/k/v biases + (1 + w) norm + scaled embeddings + GeGLU + head size != D / H: no HF model
    has them all, so the stacks are checked against each other (float32 bound, float64 agreement)."""
    config = VARIANTS["gemma"].replace(sliding_window=3, qkv_bias=True, num_kv_heads=2, tie_embeddings="none",
                                       num_decoder_layers=1)
    check_gradients_agree(config, [9, 5], seed=4)


# -- code-level plants in ONE stack (planted_bugs.SURVIVOR_SEAMS), killed by the logits check above -------
# One per stack in CI (each recompiles); the other two seams run the same way: SURVIVORS_ALL=1.
SURVIVORS = {  # plant -> the variant whose logits check must fail
    "sliding window ignored (torch)": (planted_bugs.plant_window_ignored_torch, "mistral"),
    "gemma (1 + w) read as w (jax)": (planted_bugs.plant_gemma_weight_without_one_jax, "gemma"),
}
if os.environ.get("SURVIVORS_ALL") == "1":
    SURVIVORS |= {
        "sliding window ignored (jax)": (planted_bugs.plant_window_ignored_jax, "mistral"),
        "gemma (1 + w) read as w (torch)": (planted_bugs.plant_gemma_weight_without_one_torch, "gemma"),
    }


@pytest.mark.parametrize("name", sorted(SURVIVORS))
def test_a_bug_planted_in_one_stack_is_caught(monkeypatch, name: str) -> None:
    plant, variant = SURVIVORS[name]
    jax.clear_caches()  # jitted forwards keyed on the config would otherwise skip the plant
    plant(monkeypatch)
    try:
        with pytest.raises(AssertionError, match="jax_impl" if "jax" in name else "torch_impl"):
            check_logits_match_transformers(VARIANTS[variant], LENGTHS, seed=3)
    finally:
        monkeypatch.undo()
        jax.clear_caches()


def test_gemma_embedding_scale_is_rounded_to_the_hidden_dtype_as_transformers() -> None:
    """bf16, D = 2048: HF multiplies by sqrt(2048) = 45.2548 rounded to bf16 (45.25); both stacks' scaled
    embeddings equal HF's bit for bit, and differ from an unrounded scale (what a port gets wrong)."""
    import jax.numpy as jnp
    from transformers.models.gemma.modeling_gemma import GemmaTextScaledWordEmbedding

    from jax_impl.families.causal_lm import ScaledEmbed
    from shared.families.causal_lm import embedding_scale
    from torch_impl.families.causal_lm import ScaledEmbedding
    from torch_impl.numpy_bridge import to_numpy

    config = VARIANTS["gemma"].replace(d_model=2048, head_size=None, num_heads=8, num_kv_heads=1)
    torch.manual_seed(0)
    hf = GemmaTextScaledWordEmbedding(config.tgt_vocab_size, config.d_model, config.pad_id,
                                      embed_scale=config.d_model**0.5).to(torch.bfloat16)
    ids = torch.arange(config.tgt_vocab_size)[None]  # (1, V)
    with torch.no_grad():
        expected = to_numpy(hf(ids).float())
        ours = ScaledEmbedding(config).to(torch.bfloat16)
        ours.weight.copy_(hf.weight)
        torch_out = to_numpy(ours(ids).float())
    table = jnp.asarray(to_numpy(hf.weight.detach().float()), jnp.bfloat16)
    module = ScaledEmbed(config.tgt_vocab_size, config.d_model, scale=float(embedding_scale(config)))
    jax_out = np.asarray(module.apply({"params": {"embedding": table}}, jnp.asarray(ids.numpy())).astype(jnp.float32))
    np.testing.assert_array_equal(torch_out, expected)
    np.testing.assert_array_equal(jax_out, expected)
    unrounded = to_numpy((hf.weight.detach().double() * config.d_model**0.5).to(torch.bfloat16).float())[None]
    assert not np.array_equal(unrounded, expected), "the bf16 scale changes nothing here: the check has no teeth"
