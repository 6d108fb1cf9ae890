"""Training parity: the same init, the same batches and dropout off give the same losses in both stacks.

Covered: the masked (label-smoothed) cross-entropy, the global-norm clipping rule, 50-step Adam
trajectories (the book's settings: lr 1e-3, betas 0.9/0.98, eps 1e-9), an AdamW + clipping +
label smoothing + warmup/cosine trajectory, and runs that switch framework mid-way through a
checkpoint (torch -> jax and jax -> torch), which must track the uninterrupted run.

Each trajectory runs in both stacks at the precision under test AND in float64 from the same init
and batches; per-step losses and final weights are held to the scale-aware bound of
shared/parity/tolerances.py (each stack's own distance from its float64 trajectory).

Pitfall 7 is measured rather than excluded: the gradient of each attention key bias is zero in
exact arithmetic (softmax ignores a shift shared by all keys), so in float32 each stack's rounding
noise there (~1e-8) is normalised by Adam (eps 1e-9) into a full lr-sized step of random sign,
while in float64 the noise (~1e-17) stays far below eps and the bias barely moves. The float32 run's
distance from its own float64 run is therefore ~lr per step on those biases, the two stacks' random
walks differ by at most the sum of the two, and the bound (C_OWN x the larger own error) covers
them with no special case: a formula difference elsewhere still stands out, because there the
own errors stay at rounding size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import contextlib

import jax

from parity_tests.helpers import assert_all_close, float64_backend
from shared.training.train_config import TrainConfig
from shared.training.loop import load_pairs, make_sampler, make_tokenizer, train
from twinformer.backends import make_backend

STEPS = 50


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(env, **overrides) -> TrainConfig:
    if env.precision == "bfloat16":
        pytest.skip("training keeps float32 weights; the bfloat16 row covers forward passes only")
    base = dict(
        model_overrides={"dropout": 0.0, "attention_dropout": 0.0, "embedding_dropout": 0.0},
        vocab_size=64, batch_size=16, max_len=16, pad_to_multiple=16,  # one batch shape: one compile
        total_steps=STEPS, lr=1e-3, betas=(0.9, 0.98), eps=1e-9, seed=0,
        device=env.device, precision="tf32" if env.precision == "tf32" else "float32",
        log_every=1, bleu_sentences=0, keep_last=None,
    )  # fmt: skip
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def data():
    """Tokenizer and the first STEPS batches of a small slice of the toy task."""
    return toy_batches()


def toy_batches():
    """(tokenizer, the first STEPS batches of a small slice of the toy task)."""
    config = TrainConfig(vocab_size=64, batch_size=16, max_len=16, pad_to_multiple=16)
    pairs = load_pairs(config, "train")[: 16 * STEPS]
    tokenizer = make_tokenizer(config, pairs)
    batches = [b for _, b in zip(range(STEPS), make_sampler(config, tokenizer, pairs).stream())]
    return tokenizer, batches


def _trajectory(backend_class, model_config, config: TrainConfig, init: dict, batches):
    """(per-step losses, final weights) of one backend; float64 `init` runs the whole trajectory in float64."""
    x64 = next(iter(init.values())).dtype == np.float64
    init = {key: value.copy() for key, value in init.items()}  # torch trains in place in memory it shares with numpy
    with jax.enable_x64() if x64 else contextlib.nullcontext():
        backend = backend_class(model_config, config, STEPS, init)
        losses = np.array([float(backend.train_step(batch)["loss"]) for batch in batches])
        return losses, backend.model_tensors()


def _trajectories(env, config: TrainConfig, batches):
    """Both stacks' (losses, final weights) from the same (torch-made) init: at the run's precision, then in float64.

    Returns [torch, jax, torch float64, jax float64], the order compare() takes.
    """
    from jax_impl.training import JaxBackend
    from torch_impl.checkpoint import state_dict_numpy
    from torch_impl.families.transformer import Transformer
    from torch_impl.training import TorchBackend

    tokenizer, batches = batches
    model_config = config.resolve_model_config(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    torch.manual_seed(1234)
    init = state_dict_numpy(Transformer(model_config))
    reference = env.reference(init)
    return [
        _trajectory(cls, model_config, config, start, batches)
        for start in (init, reference)
        for cls in (TorchBackend, JaxBackend)
    ]


def _weight_quads(runs) -> dict:
    """{tensor: (torch, jax, torch float64, jax float64)} of the final weights of four runs."""
    weights = [w for _, w in runs]
    return {key: tuple(w[key] for w in weights) for key in sorted(weights[0])}


def _report(name: str, torch_losses: np.ndarray, jax_losses: np.ndarray) -> None:
    diff = np.abs(torch_losses - jax_losses)
    print(
        f"\n{name}: max |torch - jax| per-step loss difference {diff.max():.2e} (step {int(diff.argmax()) + 1}); "
        f"loss {torch_losses[0]:.4f} -> {torch_losses[-1]:.4f}; by step: " + " ".join(f"{d:.1e}" for d in diff)
    )


def test_masked_cross_entropy_matches(parity_env):
    """Both losses equal a float64 reference of torch's formula, with and without label smoothing."""
    import jax.numpy as jnp

    from jax_impl.training import masked_cross_entropy as jax_xent
    from torch_impl.training import masked_cross_entropy as torch_xent

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (3, 7, 11)).astype(np.float32)  # (B, T, V)
    targets = rng.integers(1, 11, (3, 7)).astype(np.int32)
    targets[0, 4:] = 0  # padding is ignored
    targets[2, 1:] = 0
    for smoothing in (0.0, 0.1, 0.3):
        logp = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
        nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
        per_token = (1 - smoothing) * nll - smoothing * logp.mean(-1)
        mask = targets != 0
        reference = np.array(per_token[mask].mean())
        t = torch_xent(torch.from_numpy(logits), torch.from_numpy(targets), 0, smoothing).numpy()
        j = np.asarray(jax_xent(jnp.asarray(logits), jnp.asarray(targets), 0, smoothing))
        t64 = torch_xent(torch.from_numpy(logits.astype(np.float64)), torch.from_numpy(targets), 0, smoothing).numpy()
        with jax.enable_x64():
            j64 = np.asarray(jax_xent(jnp.asarray(logits.astype(np.float64)), jnp.asarray(targets), 0, smoothing))
        # each float64 formula against the numpy reference: a formula difference shows as >> 1e-15
        np.testing.assert_allclose([t64, j64], [reference, reference], rtol=1e-12)
        assert_all_close("train: loss torch vs jax", {f"ls={smoothing}": (t, j, t64, j64)}, parity_env.precision, "masked cross-entropy")


def test_global_norm_clipping_rule_matches_optax():
    """torch's clip_by_global_norm_ follows optax's rule: unchanged below the norm, (g / |g|) * c above."""
    import jax.numpy as jnp
    import optax

    from torch_impl.training import clip_by_global_norm_, global_norm

    rng = np.random.default_rng(1)
    grads = [rng.normal(0, 1, shape).astype(np.float32) for shape in ((5, 3), (3,), (7,))]
    norm = float(np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads)))
    for max_norm in (norm / 3, norm * 2):
        clipped_t = [torch.from_numpy(g.copy()) for g in grads]
        t_norm = global_norm(clipped_t)
        clip_by_global_norm_(clipped_t, max_norm, t_norm)
        clipped_j, _ = optax.clip_by_global_norm(max_norm).update([jnp.asarray(g) for g in grads], optax.EmptyState())
        for t, j, g in zip(clipped_t, clipped_j, grads):
            np.testing.assert_allclose(t.numpy(), np.asarray(j), rtol=1e-6, atol=1e-7)
            expected = g if max_norm > norm else g / norm * max_norm
            np.testing.assert_allclose(t.numpy(), expected, rtol=1e-5)
        assert abs(float(t_norm) - norm) <= 1e-5 * norm


def test_adam_trajectory_50_steps(parity_env, data):
    """50 Adam steps (book settings), same init and batches, dropout off: per-step losses and final weights agree."""
    config = _config(parity_env)
    runs = _trajectories(parity_env, config, data)
    (torch_losses, _), (jax_losses, _) = runs[:2]
    _report("adam 50 steps", torch_losses, jax_losses)
    assert torch_losses[-1] < torch_losses[0] - 0.5, "the run must actually train"
    assert_all_close("train: adam loss trajectory", {"losses": tuple(r[0] for r in runs)}, parity_env.precision, "per step")
    assert_all_close("train: adam final weights", _weight_quads(runs), parity_env.precision, f"after {STEPS} steps")


def test_adamw_clipping_smoothing_warmup_trajectory(parity_env, data):
    """AdamW (decoupled decay) + global-norm clipping + label smoothing + warmup/cosine agree per step."""
    config = _config(
        parity_env, optimizer="adamw", weight_decay=0.05, clip_norm=0.5, label_smoothing=0.1,
        schedule="cosine", warmup_steps=5, min_lr=1e-4, total_steps=20,
    )  # fmt: skip
    tokenizer, batches = data
    runs = _trajectories(parity_env, config, (tokenizer, batches[:20]))
    _report("adamw+clip+smoothing+cosine 20 steps", runs[0][0], runs[1][0])
    assert_all_close("train: adamw loss trajectory", {"losses": tuple(r[0] for r in runs)}, parity_env.precision, "per step")
    assert_all_close("train: adamw final weights", _weight_quads(runs), parity_env.precision, "after 20 steps")


def test_eval_batch_is_deterministic_and_agrees_with_dropout_configured(parity_env, data):
    """eval_batch turns dropout off in both stacks: with rates of 0.3 it repeats exactly and the stacks agree."""
    from jax_impl.training import JaxBackend
    from torch_impl.checkpoint import state_dict_numpy
    from torch_impl.families.transformer import Transformer
    from torch_impl.training import TorchBackend

    rates = {"dropout": 0.3, "attention_dropout": 0.3, "embedding_dropout": 0.3}
    config = _config(parity_env, model_overrides=rates)
    tokenizer, batches = data
    model_config = config.resolve_model_config(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    torch.manual_seed(1234)
    init = state_dict_numpy(Transformer(model_config))
    nll = []  # torch, jax, torch float64, jax float64: summed nll of two batches each
    for start in (init, parity_env.reference(init)):
        for backend_class in (TorchBackend, JaxBackend):
            with jax.enable_x64() if start is not init else contextlib.nullcontext():
                backend = backend_class(model_config, config, STEPS, {k: v.copy() for k, v in start.items()})
                runs = []
                for seed in (1, 2):  # a different torch RNG state each time: must not matter
                    torch.manual_seed(seed)
                    runs.append(np.array([backend.eval_batch(batch)[0] for batch in batches[:2]]))
            assert np.array_equal(*runs), f"{backend_class.__name__}.eval_batch is not deterministic: dropout left on?"
            nll.append(runs[0])
    assert_all_close("train: eval_batch with dropout configured", {"nll": tuple(nll)}, parity_env.precision, "2 batches")


@pytest.mark.parametrize("first, second", [("torch", "jax"), ("jax", "torch")])
def test_run_resumed_in_the_other_framework_tracks_the_uninterrupted_run(parity_env, tmp_path, first, second):
    """first trains 6 of 12 steps and checkpoints; second resumes; its losses and weights track first's full run.

    The bound: each run's own distance from a float64 run of the same path (the uninterrupted run
    in float64 in `first`, the switched one resumed in float64 in `second`).
    """
    config = _config(parity_env, total_steps=12, warmup_steps=3, schedule="inverse_sqrt", clip_norm=1.0)
    reference = train(config, first, tmp_path / "full", progress=False, backend_factory=make_backend)
    half = train(config, first, tmp_path / "switched", stop_at=6, progress=False, backend_factory=make_backend)
    assert half.step == 6 and half.losses == reference.losses[:6]
    resumed = train(None, second, tmp_path / "switched", resume=tmp_path / "switched", progress=False,
                    backend_factory=make_backend)
    assert resumed.step == 12 and len(resumed.losses) == 6
    a, b = np.array(reference.losses[6:]), np.array(resumed.losses)
    _report(f"{first} -> {second} resume", a, b)
    (a64, w_a64), (b64, w_b64) = _float64_twins(config, tmp_path, first, second)
    assert_all_close(f"train: resume {first}->{second}", {"losses after resume": (a, b, a64[6:], b64)}, parity_env.precision, "per step")
    ta, tb = reference.backend.model_tensors(), resumed.backend.model_tensors()
    quads = {key: (ta[key], tb[key], w_a64[key], w_b64[key]) for key in sorted(ta)}
    assert_all_close(f"train: resume {first}->{second} final weights", quads, parity_env.precision, "after 12 steps")


def _float64_twins(config: TrainConfig, tmp_path, first: str, second: str):
    """float64 (losses, final weights) of `first` run 12 steps, and of `second`'s 6 steps after `first`'s 6.

    Same init (the float32 runs' shared init, converted exactly) and batches as the float32 runs;
    the checkpoint in between is written and read in float64.
    """
    run = dict(progress=False, backend_factory=float64_backend)
    with jax.enable_x64():
        full = train(config, first, tmp_path / "full64", **run)
        train(config, first, tmp_path / "switched64", stop_at=6, **run)
        resumed = train(None, second, tmp_path / "switched64", resume=tmp_path / "switched64", **run)
    assert next(iter(resumed.backend.model_tensors().values())).dtype == np.float64
    return (np.array(full.losses), full.backend.model_tensors()), (np.array(resumed.losses), resumed.backend.model_tensors())
