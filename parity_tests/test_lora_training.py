"""LoRA fine-tuning parity: the two fine-tuning backends follow the same trajectory.

Same frozen base weights, the torch adapter's initial A (B = 0) converted to the JAX pytree, the
same batches, dropout off everywhere (model and LoRA branch): per-step losses, the final adapter and
its Adam moments agree over 50 steps under the scale-aware bound (each stack also runs the whole
trajectory in float64, which measures its own rounding), and a LoRA run checkpointed by one stack
and resumed by the other tracks the uninterrupted run (adapter moments keyed by PEFT keys cross over).
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import pytest

from parity_tests.helpers import assert_all_close
from shared.checkpoints.checkpoint import save_checkpoint
from shared.training.finetune import finetune
from shared.checkpoints.init import initial_tensors
from shared.checkpoints.lora_config import LoRAConfig
from shared.training.train_config import TrainConfig
from shared.training.loop import load_pairs, make_sampler, make_tokenizer
from twinformer.backends import make_backend, make_lora_backend

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


def _lora_run(backend_class, model_config, config, base, lora, batches, adapter=None):
    """(losses, final adapter, Adam moments) of one LoRA backend; float64 `base` runs it all in float64."""
    x64 = next(iter(base.values())).dtype == np.float64
    copy = lambda tensors: None if tensors is None else {k: v.copy() for k, v in tensors.items()}  # noqa: E731 (torch trains in place)
    with jax.enable_x64() if x64 else contextlib.nullcontext():
        backend = backend_class(model_config, config, STEPS, copy(base), lora, adapter_tensors=copy(adapter))
        start = backend.model_tensors()
        losses = np.array([float(backend.train_step(batch)["loss"]) for batch in batches])
        return start, losses, backend.model_tensors(), backend.optimizer_state()


@pytest.mark.parametrize("case", [BOOK, WIDER], ids=["book-qv-adamw", "qv-fc1-saved-output-adam-l2-clip"])
def test_lora_trajectory_50_steps(parity_env, data, case):
    """50 adapter updates from the same base, adapter init and batches: losses, adapters and moments agree."""
    from jax_impl.finetune import LoRAJaxBackend
    from torch_impl.finetune import LoRATorchBackend

    lora, overrides = case
    _, model_config, base, batches = data
    config = _config(parity_env, **overrides)
    start, *torch_run = _lora_run(LoRATorchBackend, model_config, config, base, lora, batches)
    assert any(k.endswith("lora_A.weight") and np.any(v) for k, v in start.items())  # a real init, not zeros
    runs = [torch_run]  # torch, jax, torch float64, jax float64: (losses, adapter, moments) each
    runs.append(_lora_run(LoRAJaxBackend, model_config, config, base, lora, batches, start)[1:])
    base64, start64 = parity_env.reference(base), parity_env.reference(start)
    runs += [_lora_run(cls, model_config, config, base64, lora, batches, start64)[1:] for cls in (LoRATorchBackend, LoRAJaxBackend)]
    losses = [r[0] for r in runs]
    _report(f"LoRA {lora.r}/{lora.alpha} {'+'.join(lora.target_modules)} {overrides['optimizer']}", losses[0], losses[1])
    assert losses[0][-1] < losses[0][0] - 0.3, "the adapter must actually train"
    assert_all_close("lora train: loss trajectory", {"losses": tuple(losses)}, parity_env.precision, "per step")
    adapters = [r[1] for r in runs]
    assert set(adapters[0]) == set(adapters[1]) == set(start)
    quads = {key: tuple(a[key] for a in adapters) for key in sorted(start)}
    assert_all_close("lora train: final adapter", quads, parity_env.precision, f"after {STEPS} steps")
    # The moments by value, not only by key set: a wrong beta, bias correction or decay shows here.
    moments = [r[2] for r in runs]
    assert set(moments[0].exp_avg) == set(moments[1].exp_avg) == set(start)  # the adapter's tensors only
    for which in ("exp_avg", "exp_avg_sq"):
        quads = {key: tuple(getattr(m, which)[key] for m in moments) for key in sorted(start)}
        assert_all_close(f"lora train: Adam {which}", quads, parity_env.precision, f"after {STEPS} steps")


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory, data):
    """The base as checkpoint directories (float32, and its exact float64 copy for the reference runs)
    with its tokenizer, as `twinformer finetune --base` takes it."""
    tokenizer, model_config, base, _ = data
    directories = {}
    for dtype in ("float32", "float64"):
        directory = directories[dtype] = tmp_path_factory.mktemp(f"lora-base-{dtype}")
        save_checkpoint(directory, model_config, {k: v.astype(dtype) for k, v in base.items()})
        tokenizer.save(directory)
    return directories


def _resume_runs(run_dir, first, second, base, lora, config):
    """(uninterrupted run of `first`, `second` resumed at step 6 of `first`'s checkpoint)."""
    quiet = lambda line: None  # noqa: E731
    backends = dict(backend_factory=make_backend, lora_backend_factory=make_lora_backend)
    run = dict(base=base, mode="lora", lora=lora, config=config, progress=False, report=quiet, **backends)
    reference = finetune(first, run_dir / "full", **run)
    half = finetune(first, run_dir / "switched", stop_at=6, **run)
    assert half.step == 6 and half.losses == reference.losses[:6]
    resumed = finetune(second, run_dir / "switched", resume=run_dir / "switched", progress=False, report=quiet,
                       **backends)
    assert resumed.step == 12 and len(resumed.losses) == 6 and resumed.backend.framework == second
    return reference, resumed


@pytest.mark.parametrize("first, second", [("torch", "jax"), ("jax", "torch")])
def test_lora_run_resumed_in_the_other_framework_tracks_the_uninterrupted_run(parity_env, base_dirs, tmp_path, first, second):
    """first fine-tunes 6 of 12 steps and checkpoints the adapter; second resumes; losses and adapter track first's run.

    The bound comes from the same two paths run in float64 (float64 base, adapter and moments).
    """
    lora, overrides = WIDER
    config = _config(parity_env, **{**overrides, "total_steps": 12})
    reference, resumed = _resume_runs(tmp_path, first, second, base_dirs["float32"], lora, config)
    with jax.enable_x64():
        reference64, resumed64 = _resume_runs(tmp_path / "float64", first, second, base_dirs["float64"], lora, config)
    a, b = np.array(reference.losses[6:]), np.array(resumed.losses)
    _report(f"LoRA {first} -> {second} resume", a, b)
    quad = (a, b, np.array(reference64.losses[6:]), np.array(resumed64.losses))
    assert_all_close(f"lora train: resume {first}->{second}", {"losses after resume": quad}, parity_env.precision, "per step")
    runs = [r.backend.model_tensors() for r in (reference, resumed, reference64, resumed64)]
    assert runs[2][next(iter(runs[2]))].dtype == np.float64, "the reference run must be float64"
    quads = {key: tuple(r[key] for r in runs) for key in sorted(runs[0])}
    assert_all_close(f"lora train: resume {first}->{second} final adapter", quads, parity_env.precision, "after 12 steps")
