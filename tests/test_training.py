"""Unit tests of training: config, schedules, optimizer formats, atomic checkpoints, bit-exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shared.checkpoints.checkpoint import CheckpointError, read_tensors
from shared.config.model_config import ConfigError
from shared.training.metrics_log import MetricsLog, plot_loss_curves, read_metrics
from shared.checkpoints.optimizer_state import OptimizerState, read_optimizer_state, write_optimizer_state
from shared.training.run_checkpoint import latest_checkpoint, list_checkpoints, load_run_checkpoint
from shared.training.schedules import learning_rate
from shared.training.train_config import TrainConfig
from shared.training.loop import train
from twinformer.backends import make_backend

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {
    "d_model": 16, "num_heads": 2, "d_ff": 32, "num_encoder_layers": 1, "num_decoder_layers": 1,
    "dropout": 0.1, "attention_dropout": 0.1, "embedding_dropout": 0.1, "max_len": 16,
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(**overrides) -> TrainConfig:
    """A seconds-long toy run: one batch shape (one jit compile), dropout on, no BLEU decoding."""
    base = dict(
        model_overrides=TINY_MODEL, vocab_size=48, batch_size=16, max_len=16, pad_to_multiple=16,
        total_steps=8, log_every=1, save_every=4, keep_last=None, bleu_sentences=0,
        schedule="inverse_sqrt", warmup_steps=3, clip_norm=1.0,
    )  # fmt: skip
    return TrainConfig(**{**base, **overrides})


# -- TrainConfig ------------------------------------------------------------------------------------
def test_train_config_json_round_trip():
    config = tiny_config(betas=(0.8, 0.95), optimizer="adamw", weight_decay=0.1)
    again = TrainConfig.from_json(config.to_json())
    assert again == config and again.betas == (0.8, 0.95)
    from shared.config.model_config import ModelConfig

    with_model = TrainConfig(model_preset=None, model=ModelConfig.from_preset("tiny"))
    assert TrainConfig.from_json(with_model.to_json()) == with_model


def test_train_config_lists_every_problem():
    with pytest.raises(ConfigError) as error:
        TrainConfig(optimizer="sgd", lr=-1, schedule="inverse_sqrt", warmup_steps=0, label_smoothing=1.5,
                    total_steps=None, epochs=None, model_overrides={"tgt_vocab_size": 5, "d_model": 30, "num_heads": 4})
    message = str(error.value)
    for fragment in ("unknown optimizer 'sgd'", "lr must be > 0", "warmup_steps > 0", "label_smoothing",
                     "exactly one of total_steps and epochs", "vocabulary sizes come from the tokenizer",
                     "divisible by num_heads"):
        assert fragment in message, fragment
    with pytest.raises(ConfigError, match="unknown TrainConfig field"):
        TrainConfig.from_dict({"learning_rate": 1e-3})


@pytest.mark.parametrize("name", ["toy.json", "book-ch4.json"])
def test_shipped_recipes_are_valid(name):
    config = TrainConfig.load(REPO / "configs" / name)
    model = config.resolve_model_config(100, 120)
    assert (model.src_vocab_size, model.tgt_vocab_size) == (100, 120)
    if name == "book-ch4.json":
        assert (config.model_preset, config.lr, config.betas, config.eps) == ("book-ch4", 1e-3, (0.9, 0.98), 1e-9)
        assert (config.corpus, config.src_lang, config.tgt_lang, config.batch_size) == ("multi30k", "en", "de", 128)


# -- schedules --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["constant", "inverse_sqrt", "cosine"])
def test_schedule_numpy_and_jnp_agree(kind):
    import jax
    import jax.numpy as jnp

    kw = dict(kind=kind, lr=2e-3, warmup_steps=10, total_steps=100, min_lr=1e-4)
    steps = np.arange(0, 130)
    numpy_lr = learning_rate(steps, **kw)
    jnp_lr = np.asarray(jax.jit(lambda s: learning_rate(s, xp=jnp, **kw))(jnp.asarray(steps, jnp.int32)))
    np.testing.assert_allclose(jnp_lr, numpy_lr, rtol=1e-6)
    np.testing.assert_allclose(numpy_lr[:10], 2e-3 * np.arange(1, 11) / 10)  # linear warmup to the peak
    if kind == "inverse_sqrt":
        np.testing.assert_allclose(numpy_lr[39], 2e-3 * np.sqrt(10 / 40))
    if kind == "cosine":
        np.testing.assert_allclose(numpy_lr[99:], 1e-4)  # the floor from total_steps on
        np.testing.assert_allclose(numpy_lr[54], 1e-4 + (2e-3 - 1e-4) * 0.5)  # halfway


def test_optax_applies_the_shared_schedule():
    """optax's count-driven lr is shared.training.schedules' formula at the 0-based update index."""
    import optax

    from jax_impl.training import build_optimizer

    config = tiny_config(schedule="cosine", warmup_steps=2, total_steps=6, min_lr=1e-4, clip_norm=None)
    tx = build_optimizer(config, 6)
    params = {"w": np.ones(3, np.float32)}
    state = tx.init(params)
    grads = {"w": np.full(3, 0.5, np.float32)}
    for step in range(6):
        updates, state = tx.update(grads, state, params)
        # With a constant gradient Adam's normalised direction is exactly 1: the update is -lr.
        np.testing.assert_allclose(np.asarray(updates["w"]), -learning_rate(step, kind="cosine", lr=1e-3, warmup_steps=2, total_steps=6, min_lr=1e-4), rtol=1e-5)
    counts = optax.tree_utils.tree_get_all_with_path(state, "count")  # scale_by_adam's and the schedule's
    assert [int(c) for _, c in counts] == [6, 6]


def test_optax_chain_equals_optax_adamw():
    import jax.numpy as jnp
    import optax

    from jax_impl.training import build_optimizer

    config = tiny_config(optimizer="adamw", weight_decay=0.1, schedule="constant", warmup_steps=0, clip_norm=None, lr=3e-3)
    ours, reference = build_optimizer(config, 8), optax.adamw(3e-3, b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.1)
    rng = np.random.default_rng(0)
    params = {"a": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
    s1, s2 = ours.init(params), reference.init(params)
    for _ in range(3):
        grads = {"a": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
        u1, s1 = ours.update(grads, s1, params)
        u2, s2 = reference.update(grads, s2, params)
        np.testing.assert_array_equal(np.asarray(u1["a"]), np.asarray(u2["a"]))


# -- optimizer state and checkpoints ----------------------------------------------------------------
def test_optimizer_state_round_trips_through_both_stacks(tmp_path):
    """torch state -> file -> jax optax state -> file: bit-identical moments and step."""
    from jax_impl.training import JaxBackend
    from shared.data import make_batch
    from torch_impl.training import TorchBackend

    config = tiny_config(model_overrides={**TINY_MODEL, "dropout": 0.0})
    model = config.resolve_model_config(20, 20)
    batch = make_batch([([5, 6, 7, 2], [1, 8, 9, 2]), ([4, 2], [1, 3, 2])])
    torch_backend = TorchBackend(model, config, 8)
    torch_backend.train_step(batch)
    torch_backend.train_step(batch)
    state = torch_backend.optimizer_state()
    write_optimizer_state(tmp_path / "a.safetensors", model, state)
    loaded = read_optimizer_state(tmp_path / "a.safetensors", model)
    jax_backend = JaxBackend(model, config, 8, torch_backend.model_tensors())
    jax_backend.restore(torch_backend.model_tensors(), loaded, None)
    again = jax_backend.optimizer_state()
    assert again.step == state.step == 2
    for key in state.exp_avg:
        assert np.array_equal(again.exp_avg[key], state.exp_avg[key]), key
        assert np.array_equal(again.exp_avg_sq[key], state.exp_avg_sq[key]), key
    broken = OptimizerState(2, dict(state.exp_avg), {}, {})
    broken.exp_avg.pop("output_proj.bias")
    with pytest.raises(CheckpointError) as error:
        write_optimizer_state(tmp_path / "b.safetensors", model, broken)
    assert "missing exp_avg.output_proj.bias" in str(error.value) and "missing exp_avg_sq.src_embed.weight" in str(error.value)


def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """A writer dying after some files leaves `latest` on the last complete checkpoint, loadable."""
    import shared.training.run_checkpoint as run_checkpoint

    config = tiny_config(total_steps=8, save_every=4)
    calls = {"n": 0}
    real_write_rng = run_checkpoint._write_rng

    def dying_write_rng(directory, rng):
        calls["n"] += 1
        if calls["n"] == 2:  # the second save: weights and optimizer already written
            assert (directory / "model.safetensors").is_file() and (directory / "optimizer.safetensors").is_file()
            raise OSError("simulated crash mid-save")
        real_write_rng(directory, rng)

    monkeypatch.setattr(run_checkpoint, "_write_rng", dying_write_rng)
    with pytest.raises(OSError, match="simulated crash"):
        train(config, "torch", tmp_path, progress=False, backend_factory=make_backend)
    assert latest_checkpoint(tmp_path).name == "step_0000004"
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000004"]
    loaded = load_run_checkpoint(tmp_path)
    assert loaded.step == 4 and loaded.optimizer.step == 4
    # A hard kill leaves its temporary directory behind: it is never `latest`, and the next save sweeps it.
    leftover = tmp_path / "checkpoints" / ".tmp-step_0000008-deadbeef"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half a file")
    monkeypatch.setattr(run_checkpoint, "_write_rng", real_write_rng)
    assert latest_checkpoint(tmp_path).name == "step_0000004"
    result = train(None, "torch", tmp_path, resume=tmp_path, progress=False, backend_factory=make_backend)
    assert result.step == 8 and latest_checkpoint(tmp_path).name == "step_0000008" and not leftover.exists()


def test_keep_last_prunes_old_checkpoints(tmp_path):
    train(tiny_config(total_steps=6, save_every=2, keep_last=2), "torch", tmp_path, progress=False,
          backend_factory=make_backend)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000004", "step_0000006"]
    assert latest_checkpoint(tmp_path).name == "step_0000006"
    files = sorted(p.name for p in latest_checkpoint(tmp_path).iterdir())
    assert files == sorted(["config.json", "model.safetensors", "optimizer.safetensors", "rng.safetensors",
                            "tokenizer.json", "train_config.json", "trainer_state.json"])


def test_metrics_log_and_loss_plot(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in range(1, 6):
        log.write({"kind": "train", "step": step, "loss": 5.0 / step})
    log.write({"kind": "eval", "step": 5, "val_loss": 1.5})
    log.truncate_after(3)
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    png = plot_loss_curves(tmp_path / "metrics.jsonl", tmp_path / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- resume is bit-exact within a framework ---------------------------------------------------------
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_resume_is_bit_exact(tmp_path, framework):
    """2N steps in one go == N steps, a new process-like restart from the checkpoint, N more (dropout on)."""
    config = tiny_config(total_steps=8, save_every=0)
    full = train(config, framework, tmp_path / "full", progress=False, backend_factory=make_backend)
    first = train(config, framework, tmp_path / "split", stop_at=4, progress=False, backend_factory=make_backend)
    second = train(None, framework, tmp_path / "split", resume=tmp_path / "split", progress=False,
                   backend_factory=make_backend)
    assert first.losses + second.losses == full.losses
    a, b = full.checkpoint, second.checkpoint
    assert a.name == b.name == "step_0000008"
    # Tensor bytes, not file bytes: safetensors writes its metadata keys in hash-map order.
    for name in ("model.safetensors", "optimizer.safetensors"):
        ta, tb = read_tensors(a / name), read_tensors(b / name)
        assert list(ta) == list(tb) and all(ta[k].tobytes() == tb[k].tobytes() for k in ta), name
    assert json.loads((a / "trainer_state.json").read_text())["sampler"] == json.loads((b / "trainer_state.json").read_text())["sampler"]
    # metrics.jsonl holds each step once, the resumed half appended after the first
    steps = [r["step"] for r in read_metrics(tmp_path / "split" / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == list(range(1, 9))
    assert (tmp_path / "split" / "loss.png").is_file()
