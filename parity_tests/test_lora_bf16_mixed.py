"""bf16-mixed LoRA fine-tuning: the JAX backend follows torch's (autocast over PEFT) step for step.

Both stacks keep the frozen base and the adapter as float32 masters (Adam moments float32) and run
every matmul in bf16, the adapter's lora_A/lora_B included (torch.autocast casts PEFT's Linears as
any other; jax_impl/lora.py runs the branch through `linear`, the same rule). Same base, the torch
adapter's initial A with a random B, the same batches, dropout off; per-step losses and the final adapter are held
to shared/parity/tolerances.compare_stacks under bf16 storage, each stack's own rounding measured by
its float64 run of the same trajectory (parity_tests/test_bf16_mixed.py does the same for full
training). A planted formula difference (JAX scaling by rsLoRA's alpha / sqrt(r), torch by alpha / r) must
break the bound.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from parity_tests.test_bf16_mixed import PRECISION
from parity_tests.test_lora_training import MODEL
from shared.checkpoints.init import initial_tensors
from shared.checkpoints.lora_config import LoRAConfig
from shared.parity.tolerances import compare_stacks
from shared.training.loop import load_pairs, make_sampler, make_tokenizer
from shared.training.train_config import TrainConfig

STEPS = 10
# q/v and fc1 adapted, output_proj trained whole (modules_to_save: a bf16 matmul on a trained master)
LORA = LoRAConfig(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj", "fc1"), modules_to_save=("output_proj",))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(precision: str) -> TrainConfig:
    return TrainConfig(
        model_overrides=MODEL, vocab_size=64, batch_size=16, max_len=16, pad_to_multiple=16, src_lang="xb",
        tgt_lang="xa", total_steps=STEPS, optimizer="adamw", lr=3e-3, weight_decay=0.01, clip_norm=1.0, seed=0,
        log_every=1, bleu_sentences=0, keep_last=None, device="cpu", precision=precision,
    )  # fmt: skip


@pytest.fixture(scope="module")
def setup(parity_env):
    if parity_env.device != "cpu":
        pytest.skip("the trajectory runs are sized for the CPU suite")
    config = _config("bf16-mixed")
    pairs = load_pairs(config, "train")[: 16 * STEPS]
    tokenizer = make_tokenizer(config, pairs)
    model_config = config.resolve_model_config(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    batches = [b for _, b in zip(range(STEPS), make_sampler(config, tokenizer, pairs).stream())]
    base = initial_tensors(model_config, seed=7)
    from torch_impl.finetune import LoRATorchBackend

    start = _copy(LoRATorchBackend(model_config, _config("float32"), STEPS, _copy(base), LORA).model_tensors())
    # PEFT starts B at zero (a branch that adds nothing yet); a random B makes the branch, its bf16
    # matmuls and its scaling count from the first step, where a short trajectory can see them.
    rng = np.random.default_rng(0)
    for key in (k for k in start if "lora_B" in k):
        start[key] = rng.normal(0.0, 0.2, start[key].shape).astype(np.float32)
    return model_config, batches, base, start


def _copy(tensors):
    return {k: np.array(v, copy=True) for k, v in tensors.items()}  # torch trains the arrays it is given in place


def _run(framework: str, precision: str, setup, float64: bool = False):
    """(per-step losses, final adapter) of one LoRA backend from the shared base and adapter init."""
    from jax_impl.finetune import LoRAJaxBackend
    from torch_impl.finetune import LoRATorchBackend

    model_config, batches, base, start = setup
    widen = (lambda t: {k: v.astype(np.float64) for k, v in t.items()}) if float64 else _copy
    cls = LoRATorchBackend if framework == "torch" else LoRAJaxBackend
    with jax.enable_x64(float64):
        backend = cls(model_config, _config(precision), STEPS, widen(base), LORA, adapter_tensors=widen(start))
        losses = np.array([float(backend.train_step(batch)["loss"]) for batch in batches])
        return losses, _copy(backend.model_tensors())


def _worst_ratio(torch_mixed, jax_mixed, torch64, jax64) -> tuple[float, str]:
    """The largest compare_stacks ratio over the losses and every adapter tensor, and where."""
    pairs = {"per-step loss": (torch_mixed[0], jax_mixed[0], torch64[0], jax64[0])}
    pairs.update({key: (torch_mixed[1][key], jax_mixed[1][key], torch64[1][key], jax64[1][key]) for key in torch64[1]})
    ratios = {name: compare_stacks(*quad, PRECISION).ratio for name, quad in pairs.items()}
    worst = max(ratios, key=ratios.get)
    return ratios[worst], worst


@pytest.fixture(scope="module")
def references(setup):
    """The float64 trajectories of both stacks (their difference checks the formulas)."""
    return _run("torch", "float32", setup, float64=True), _run("jax", "float32", setup, float64=True)


def test_bf16_mixed_lora_trajectory_agrees_across_stacks(setup, references):
    torch_mixed, jax_mixed = _run("torch", "bf16-mixed", setup), _run("jax", "bf16-mixed", setup)
    torch64, jax64 = references
    assert np.abs(torch64[0] - jax64[0]).max() < 1e-6, "the float64 runs (the formulas) differ"
    assert torch_mixed[0][-1] < torch_mixed[0][0] - 0.2, "the adapter must actually train"
    assert all(v.dtype == np.float32 for v in (*torch_mixed[1].values(), *jax_mixed[1].values())), "float32 masters"
    ratio, worst = _worst_ratio(torch_mixed, jax_mixed, torch64, jax64)
    print(f"\nbf16-mixed LoRA {STEPS} steps: worst ratio to the bound {ratio:.3f} ({worst}); "
          f"max |torch - jax| loss {np.abs(torch_mixed[0] - jax_mixed[0]).max():.2e}")
    assert ratio <= 1.0, f"bf16-mixed LoRA: {worst} exceeds the scale-aware bound ({ratio:.3g}x)"


def test_bound_catches_rslora_scaling_in_one_stack(setup, references, monkeypatch):
    """A formula difference: JAX's branch scaled by rsLoRA's alpha / sqrt(r) (= 2 alpha / r at r = 4)
    while torch's PEFT keeps alpha / r: the use_rslora flag honoured by one stack only."""
    from jax_impl import finetune as jax_finetune

    monkeypatch.setattr(LoRAConfig, "scaling", property(lambda self: self.alpha / np.sqrt(self.r)))
    jax_finetune._compiled.cache_clear()  # the jitted steps bake the scaling in: retrace with the plant
    try:
        # A formula bug moves the stack's float64 run too, so it cannot widen its own bound.
        jax_planted, jax64_planted = _run("jax", "bf16-mixed", setup), _run("jax", "float32", setup, float64=True)
        ratio, worst = _worst_ratio(_run("torch", "bf16-mixed", setup), jax_planted, references[0], jax64_planted)
    finally:
        jax_finetune._compiled.cache_clear()  # no planted step left for later tests
    print(f"\nplanted rsLoRA scaling (jax): worst ratio {ratio:.3g} ({worst})")
    assert ratio > 1.0, f"the bound must catch the rsLoRA scaling in one stack (worst ratio {ratio:.3g})"
