"""LoRA fine-tuning parity: the two fine-tuning backends follow the same trajectory.

Same frozen base weights, the torch adapter's initial A (B = 0) converted to the JAX pytree, the
same batches, dropout off everywhere (model and LoRA branch): per-step losses agree under the run's
tolerance row over 50 steps, and a LoRA run checkpointed by one stack and resumed by the other
tracks the uninterrupted run (adapter moments keyed by PEFT keys cross over exactly).
"""

from __future__ import annotations

import numpy as np
import pytest

from parity_tests.helpers import assert_all_close
from shared.checkpoint import save_checkpoint
from shared.finetune import finetune
from shared.init import initial_tensors
from shared.lora_config import LoRAConfig
from shared.train_config import TrainConfig
from shared.training_loop import load_pairs, make_sampler, make_tokenizer

STEPS = 50
# One layer each side (the LoRA math is per layer; a second layer only doubles compile time), no dropout.
MODEL = {"dropout": 0.0, "attention_dropout": 0.0, "embedding_dropout": 0.0, "num_encoder_layers": 1, "num_decoder_layers": 1}
# The book's LoRA (r 16, alpha 32, q/v projections, lr 1e-3) with its dropout off, plus a variant
# that also adapts fc1, trains output_proj fully, clips, and decays weights the L2 way (adam).
BOOK = (LoRAConfig(dropout=0.0), dict(optimizer="adamw"))
WIDER = (
    LoRAConfig(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj", "fc1"), modules_to_save=("output_proj",)),
    dict(optimizer="adam", weight_decay=0.01, clip_norm=0.5, schedule="inverse_sqrt", warmup_steps=5),
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(env, **overrides) -> TrainConfig:
    if env.precision == "bfloat16":
        pytest.skip("training keeps float32 weights; the bfloat16 row covers forward passes only")
    base = dict(
        model_overrides=MODEL, vocab_size=64, batch_size=16, max_len=16, pad_to_multiple=16,
        src_lang="xb", tgt_lang="xa", total_steps=STEPS, lr=1e-3, seed=0, log_every=1, bleu_sentences=0,
        keep_last=None, device=env.device, precision="tf32" if env.precision == "tf32" else "float32",
    )  # fmt: skip
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def data():
    """Tokenizer, base model config and weights, the first STEPS fine-tuning batches (toy task, xb -> xa)."""
    config = TrainConfig(model_overrides=MODEL, vocab_size=64, batch_size=16, max_len=16, pad_to_multiple=16,
                         src_lang="xb", tgt_lang="xa")  # fmt: skip
    pairs = load_pairs(config, "train")[: 16 * STEPS]
    tokenizer = make_tokenizer(config, pairs)
    model_config = config.resolve_model_config(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    batches = [b for _, b in zip(range(STEPS), make_sampler(config, tokenizer, pairs).stream())]
    return tokenizer, model_config, initial_tensors(model_config, seed=7), batches


def _report(name: str, torch_losses: np.ndarray, jax_losses: np.ndarray) -> None:
    diff = np.abs(torch_losses - jax_losses)
    print(
        f"\n{name}: max |torch - jax| per-step loss difference {diff.max():.2e} (step {int(diff.argmax()) + 1}); "
        f"loss {torch_losses[0]:.4f} -> {torch_losses[-1]:.4f}; by step: " + " ".join(f"{d:.1e}" for d in diff)
    )


@pytest.mark.parametrize("case", [BOOK, WIDER], ids=["book-qv-adamw", "qv-fc1-saved-output-adam-l2-clip"])
def test_lora_trajectory_50_steps(parity_env, data, case):
    """50 adapter updates from the same base, adapter init and batches: per-step losses agree."""
    from jax_impl.finetune import LoRAJaxBackend
    from torch_impl.finetune import LoRATorchBackend

    lora, overrides = case
    _, model_config, base, batches = data
    config = _config(parity_env, **overrides)
    torch_backend = LoRATorchBackend(model_config, config, STEPS, base, lora)
    start = torch_backend.model_tensors()
    jax_backend = LoRAJaxBackend(model_config, config, STEPS, base, lora, adapter_tensors=start)
    assert any(k.endswith("lora_A.weight") and np.any(v) for k, v in start.items())  # a real init, not zeros
    losses = [np.array([float(b.train_step(batch)["loss"]) for batch in batches]) for b in (torch_backend, jax_backend)]
    _report(f"LoRA {lora.r}/{lora.alpha} {'+'.join(lora.target_modules)} {overrides['optimizer']}", *losses)
    assert losses[0][-1] < losses[0][0] - 0.3, "the adapter must actually train"
    assert_all_close("lora train: loss trajectory", {"losses": tuple(losses)}, parity_env.tol, "per step")

    final_t, final_j = torch_backend.model_tensors(), jax_backend.model_tensors()
    drift = {k: float(np.abs(final_t[k] - final_j[k]).max()) for k in final_t}
    print(f"adapter tensors after {STEPS} steps: max |torch - jax| {max(drift.values()):.2e} ({max(drift, key=drift.get)})")
    # Adam turns rounding noise into lr-sized steps where a gradient is ~0; a formula difference
    # would move tensors by ~lr (1e-3) per step, so 100x the row's atol still tells them apart.
    assert max(drift.values()) < 100 * parity_env.tol.atol
    moments_t, moments_j = torch_backend.optimizer_state(), jax_backend.optimizer_state()
    assert set(moments_t.exp_avg) == set(moments_j.exp_avg) == set(start)  # the adapter's tensors only


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, data):
    """The base as a checkpoint directory with its tokenizer, as `twinformer finetune --base` takes it."""
    tokenizer, model_config, base, _ = data
    directory = tmp_path_factory.mktemp("lora-base")
    save_checkpoint(directory, model_config, base)
    tokenizer.save(directory)
    return directory


@pytest.mark.parametrize("first, second", [("torch", "jax"), ("jax", "torch")])
def test_lora_run_resumed_in_the_other_framework_tracks_the_uninterrupted_run(parity_env, base_dir, tmp_path, first, second):
    """first fine-tunes 6 of 12 steps and checkpoints the adapter; second resumes; losses track first's run."""
    lora, overrides = WIDER
    config = _config(parity_env, **{**overrides, "total_steps": 12})
    quiet = lambda line: None
    run = dict(base=base_dir, mode="lora", lora=lora, config=config, progress=False, report=quiet)
    reference = finetune(first, tmp_path / "full", **run)
    half = finetune(first, tmp_path / "switched", stop_at=6, **run)
    assert half.step == 6 and half.losses == reference.losses[:6]
    resumed = finetune(second, tmp_path / "switched", resume=tmp_path / "switched", progress=False, report=quiet)
    assert resumed.step == 12 and len(resumed.losses) == 6 and resumed.backend.framework == second
    a, b = np.array(reference.losses[6:]), np.array(resumed.losses)
    _report(f"LoRA {first} -> {second} resume", a, b)
    assert_all_close(f"lora train: resume {first}->{second}", {"losses after resume": (a, b)}, parity_env.tol, "per step")
    ref_t, res_t = reference.backend.model_tensors(), resumed.backend.model_tensors()
    assert max(float(np.abs(ref_t[k] - res_t[k]).max()) for k in ref_t) < 100 * parity_env.tol.atol
