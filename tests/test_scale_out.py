"""Scale-out parity: sharded runs follow the single-device run, and checkpoints do not know the layout.

Runs (20 steps, tiny model, toy task, no dropout; batches of 10 pairs, so a 4-device mesh pads each
batch with 2 all-PAD rows; AdamW with decay, clipping active, label smoothing):
  torch, 2 gloo ranks (tests/scale_out_runs.torch_worker): DDP, FSDP2, the DDP run resumed at step 10 as FSDP2
  JAX, 4 host devices in a subprocess (tests/scale_out_runs.jax_runs): one device, data=4, fsdp=4,
      the torch DDP run resumed at step 10 on fsdp=4, the fsdp=4 run resumed at step 10 on data=2
  torch, this process: the torch FSDP run resumed at step 10 on one device.

Bound (shared/parity/tolerances.py's scale-aware bound, through `trajectory_problems`, the one comparison):
    |sharded - single|_max <= C_OWN * max(e_sharded, e_single) + C_FLOOR * u_float32 * scale
for the per-step losses (one tensor of 20) and for each final weight tensor. Each run's own rounding
error e is measured against its float64 twin (the same code, layout and batches in float64):
e = max |run_fp32 - run_fp64|, exactly as compare_stacks does for two stacks. The sharded run's own
twin matters: a wrong sharded formula moves its float64 twin too, so it cannot widen its own bound,
and on the CPU the JAX mesh programs round some bias gradients (sums with cancellation) ~4x worse
than the one-device program (measured: encoder v_proj.bias, e = 2.7e-8 on fsdp=4 vs 7e-9 on one
device), which a bound built from the single run's error alone would call a bug. The single JAX
run's twin is the torch float64 run (the float64 stacks agree to ~1e-11 here, far below the float32
errors). Weights are compared per tensor, so the attention key biases (exact gradient zero: Adam
turns rounding noise into lr-sized steps, PARITY_PITFALLS item 7) get the large bound their own
drift measures, every other tensor a tight one. A resumed run (no float64 twin) is bounded by the
largest own error of the runs whose layouts it combines. `test_bound_catches_a_per_rank_mean`
plants the usual data-parallel bug (each rank normalising by its own token count) to show the
bound is tight enough to fail.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.config.model_config import ConfigError
from shared.data.batching import make_batch
from shared.data.special_tokens import PAD_ID
from shared.training.metrics_log import read_metrics
from shared.training.run_checkpoint import checkpoint_root, latest_checkpoint, list_checkpoints, load_run_checkpoint, step_dir_name
from shared.training.sharding import MeshSpec, pad_rows, shard_rows
from shared.parity.tolerances import scale_aware_limit
from shared.training.train_config import TrainConfig
from shared.training.loop import init_weights, load_pairs, make_sampler, make_tokenizer, train
from tests.scale_out_runs import HALF, read_float64_twin, torch_worker
from twinformer.backends import make_backend
from twinformer.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
STEPS = 20
CONFIG = TrainConfig(
    model_overrides={"d_model": 32, "num_heads": 2, "d_ff": 64, "num_encoder_layers": 1, "num_decoder_layers": 1,
                     "dropout": 0.0, "attention_dropout": 0.0, "embedding_dropout": 0.0, "max_len": 16},
    vocab_size=64, batch_size=10, max_len=16, pad_to_multiple=16, total_steps=STEPS,
    optimizer="adamw", lr=1e-3, weight_decay=0.01, clip_norm=1.0, label_smoothing=0.1,
    log_every=1, save_every=HALF, keep_last=None, bleu_sentences=0, device="cpu",
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- the one comparison ------------------------------------------------------------------------------
def own_error(run_fp32, run_fp64) -> float:
    """A run's own rounding error: max |float32 run - its float64 twin|."""
    return float(np.abs(np.asarray(run_fp32, np.float64) - np.asarray(run_fp64, np.float64)).max())


def bound_ratio(run, single, exact, own: float) -> tuple[float, float]:
    """(max |run - single|, that over the scale-aware bound): `single` is the single-device float32 run,
    `exact` (float64) gives the scale, `own` is the largest own rounding error of the runs compared."""
    run, single, exact = (np.asarray(a, np.float64) for a in (run, single, exact))
    diff = float(np.abs(run - single).max())
    return diff, diff / scale_aware_limit("float32", float(np.abs(exact).max()), own)


def trajectory_problems(name: str, run, single, exact, own: float) -> list[str]:
    """The one comparison (module doc): empty when `run` is within the bound around `single`."""
    diff, ratio = bound_ratio(run, single, exact, own)
    return [] if ratio <= 1.0 else [f"{name}: max |sharded - single| {diff:.3e} is {ratio:.2f} x the bound (own error {own:.3e})"]


def run_problems(name: str, run: tuple, run64: tuple, single: tuple, single64: tuple) -> list[str]:
    """Losses and every final weight tensor of a full run; each argument is (losses, weights)."""
    (losses, weights), (losses64, weights64), (ref, ref_w), (ref64, ref_w64) = run, run64, single, single64
    assert weights.keys() == ref_w.keys(), f"{name}: other tensors than the single-device run"
    own = max(own_error(losses, losses64), own_error(ref, ref64))
    problems = trajectory_problems(f"{name} loss", losses, ref, ref64, own)
    worst = (0.0, "")
    for key in sorted(ref_w):
        own_w = max(own_error(weights[key], weights64[key]), own_error(ref_w[key], ref_w64[key]))
        problems += trajectory_problems(f"{name} {key}", weights[key], ref_w[key], ref_w64[key], own_w)
        worst = max(worst, (bound_ratio(weights[key], ref_w[key], ref_w64[key], own_w)[1], key))
    diff, ratio = bound_ratio(losses, ref, ref64, own)
    print(f"\n{name}: max per-step loss difference {diff:.1e}, ratio to the bound {ratio:.2f}; "
          f"worst weight ratio {worst[0]:.2f} ({worst[1]})")
    return problems


# -- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference():
    """The single-device torch run in float32 and float64: per-step losses and final weights."""
    from torch_impl.training import TorchBackend

    pairs = load_pairs(CONFIG, "train")
    tokenizer = make_tokenizer(CONFIG, pairs)
    model_config = CONFIG.resolve_model_config(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    batches = [b for _, b in zip(range(STEPS), make_sampler(CONFIG, tokenizer, pairs).stream())]
    init = init_weights(CONFIG, model_config)
    out = {}
    for dtype in (np.float32, np.float64):
        backend = TorchBackend(model_config, CONFIG, STEPS, {k: v.astype(dtype) for k, v in init.items()})
        losses = np.array([float(backend.train_step(batch)["loss"]) for batch in batches])
        out[dtype] = (losses, backend.model_tensors())
    return {"f32": out[np.float32], "f64": out[np.float64], "batches": batches, "model_config": model_config, "init": init}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Every sharded run (module doc), in its own processes; their directories under one folder."""
    out = tmp_path_factory.mktemp("scale-out")
    torch.multiprocessing.spawn(torch_worker, args=(2, _free_port(), CONFIG.to_json(), str(out)), nprocs=2, join=True)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PYTHONPATH": str(REPO),
           "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-m", "tests.scale_out_runs", "jax", str(out), CONFIG.to_json(), str(out / "torch-ddp")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def _losses(runs: Path, name: str) -> np.ndarray:
    return np.array(json.loads((runs / f"{name}.json").read_text()))


def _weights(runs: Path, name: str) -> dict[str, np.ndarray]:
    return load_run_checkpoint(runs / name).tensors


# -- the batch split ---------------------------------------------------------------------------------
def test_rows_split_into_equal_shards_padded_with_pad_rows_only():
    pairs = [([5 + i, 2], [1] + [6] * (i + 1) + [2]) for i in range(5)]  # 5 pairs of growing length
    batch = make_batch(pairs, pad_to_multiple=4)
    shards = [shard_rows(batch, rank, 4) for rank in range(4)]
    assert all(s.src.shape == (2, batch.src.shape[1]) and s.tgt_out.shape == (2, batch.tgt_out.shape[1]) for s in shards)
    stacked = {name: np.concatenate([getattr(s, name) for s in shards]) for name in ("src", "tgt_in", "tgt_out")}
    for name, value in stacked.items():
        np.testing.assert_array_equal(value[:5], getattr(batch, name))  # the global rows, in order
        assert np.all(value[5:] == PAD_ID)  # then 3 padding rows, nothing else
    assert sum(s.num_tokens for s in shards) == batch.num_tokens  # the global loss normaliser
    assert pad_rows(batch, 5) is batch
    with pytest.raises(ValueError, match="outside"):
        shard_rows(batch, 4, 4)


def test_mesh_spec_parses_and_rejects_clearly():
    spec = MeshSpec.parse("data=2,fsdp=2")
    assert (spec.names, spec.shape, spec.num_devices, str(spec)) == (("data", "fsdp"), (2, 2), 4, "data=2,fsdp=2")
    for bad in ("data", "model=2", "data=0", "data=2,data=2", "fsdp=x"):
        with pytest.raises(ValueError, match="bad mesh"):
            MeshSpec.parse(bad)
    with pytest.raises(ConfigError, match="bad mesh(.|\n)*unknown strategy"):
        CONFIG.replace(mesh="model=2", strategy="zero3")


def test_layouts_that_cannot_run_fail_with_a_clear_message(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    config = tmp_path / "c.json"
    config.write_text(CONFIG.replace(total_steps=1).to_json())
    common = ["train", "--config", str(config), "--no-progress"]
    assert cli_main([*common, "--framework", "torch", "--strategy", "ddp", "--run-dir", str(tmp_path / "t")]) == 2
    assert "runs under torchrun" in capsys.readouterr().err
    assert cli_main([*common, "--framework", "jax", "--mesh", "data=64", "--run-dir", str(tmp_path / "j")]) == 2
    assert "needs 64 devices" in capsys.readouterr().err


# -- parity -------------------------------------------------------------------------------------------
def _run(runs: Path, name: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return _losses(runs, name), _weights(runs, name)


def test_torch_ddp_and_fsdp_follow_the_single_device_run(runs, reference):
    problems = []
    for name in ("torch-ddp", "torch-fsdp"):
        problems += run_problems(name, _run(runs, name), read_float64_twin(runs, name), reference["f32"], reference["f64"])
    assert not problems, "\n".join(problems)


def test_jax_data_and_fsdp_meshes_follow_the_single_device_run(runs, reference):
    single = _run(runs, "jax-single")
    problems = []
    for name in ("jax-data4", "jax-fsdp4"):
        problems += run_problems(name, _run(runs, name), read_float64_twin(runs, name), single, reference["f64"])
    assert not problems, "\n".join(problems)


def test_resume_on_other_device_counts_and_in_the_other_framework(runs, reference):
    """torch DDP (2 ranks) -> JAX fsdp=4 (other framework, other device count); torch FSDP (2 ranks) ->
    torch, one device; torch DDP -> torch FSDP2 (a gathered checkpoint scattered into shards)."""
    (torch_single, _), (exact, _) = reference["f32"], reference["f64"]
    later = slice(HALF, STEPS)
    own = {  # each layout's own loss error over the resumed steps (module doc)
        "torch": own_error(torch_single[later], exact[later]),
        "jax": own_error(_losses(runs, "jax-single")[later], exact[later]),
        **{name: own_error(_losses(runs, name)[later], read_float64_twin(runs, name)[0][later])
           for name in ("torch-ddp", "torch-fsdp", "jax-fsdp4")},
    }  # fmt: skip
    resumed_torch = train(None, "torch", runs / "torch-one-device-from-fsdp", progress=False,
                          resume=checkpoint_root(runs / "torch-fsdp") / step_dir_name(HALF),
                          backend_factory=make_backend)
    checks = {
        "torch DDP x2 -> jax fsdp=4": (_losses(runs, "jax-fsdp4-from-torch-ddp"),
                                       max(own["torch"], own["jax"], own["torch-ddp"], own["jax-fsdp4"])),
        "torch FSDP x2 -> torch x1": (resumed_torch.losses, max(own["torch"], own["torch-fsdp"])),
        "torch DDP x2 -> torch FSDP2 x2": (_losses(runs, "torch-fsdp-from-torch-ddp"),
                                           max(own["torch"], own["torch-ddp"], own["torch-fsdp"])),
    }
    problems = []
    for name, (losses, own_max) in checks.items():
        problems += trajectory_problems(name, losses, torch_single[later], exact[later], own_max)
        diff, ratio = bound_ratio(losses, torch_single[later], exact[later], own_max)
        print(f"\n{name}, steps {HALF + 1}-{STEPS}: max loss difference {diff:.1e}, ratio to the bound {ratio:.2f}")
    assert not problems, "\n".join(problems)
    assert load_run_checkpoint(runs / "jax-fsdp4-from-torch-ddp").trainer_state["framework"] == "jax"


def test_one_process_writes_complete_checkpoints_and_one_log(runs):
    for name in ("torch-ddp", "torch-fsdp", "jax-fsdp4"):
        assert [p.name for p in list_checkpoints(runs / name)] == [step_dir_name(HALF), step_dir_name(STEPS)]
        assert latest_checkpoint(runs / name).name == step_dir_name(STEPS)
        assert not list(checkpoint_root(runs / name).glob(".tmp-*"))  # no leftovers of a save
        steps = [r["step"] for r in read_metrics(runs / name / "metrics.jsonl") if r["kind"] == "train"]
        assert steps == list(range(1, STEPS + 1)), f"{name}: one record per step, from one process"


def test_bound_catches_a_per_rank_mean(reference, monkeypatch):
    """The classic data-parallel bug, each of 2 ranks normalising by its own token count, leaves the bound."""
    import torch_impl.training as torch_training

    exact_mean = torch_training.masked_cross_entropy

    def per_rank_mean(logits, targets, pad_id, label_smoothing=0.0):  # logits (B, T, V), targets (B, T)
        half = -(-logits.shape[0] // 2)
        return (exact_mean(logits[:half], targets[:half], pad_id, label_smoothing)
                + exact_mean(logits[half:], targets[half:], pad_id, label_smoothing)) / 2

    monkeypatch.setattr(torch_training, "masked_cross_entropy", per_rank_mean)
    backend = torch_training.TorchBackend(reference["model_config"], CONFIG, STEPS, reference["init"])
    buggy = np.array([float(backend.train_step(batch)["loss"]) for batch in reference["batches"]])
    (single, _), (exact, _) = reference["f32"], reference["f64"]
    diff, ratio = bound_ratio(buggy, single, exact, own_error(single, exact))
    print(f"\nplanted per-rank mean: max loss difference {diff:.1e}, {ratio:.0f} x the bound")
    assert trajectory_problems("per-rank mean", buggy, single, exact, own_error(single, exact))
