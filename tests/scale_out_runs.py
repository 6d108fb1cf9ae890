"""The sharded runs tests/test_scale_out.py compares with the single-device run, each in its own processes.

torch: `torch_worker`, started by torch.multiprocessing.spawn as 2 gloo ranks (the variables torchrun
would set are set here): a DDP run and an FSDP2 run, 20 steps each through the shared training loop
(checkpoints, rank 0 writing), the float64 twin of each (the same backend, float64 weights), and
the DDP run's step-10 checkpoint resumed as an FSDP2 run.
JAX, in processes started with XLA_FLAGS=--xla_force_host_platform_device_count=4 (the test process
keeps its one device):
  `python -m tests.scale_out_runs jax OUT CONFIG TORCH_DDP_RUN`: one device, data=4, fsdp=4, and the
      torch DDP run's step-10 checkpoint resumed on fsdp=4 (the other framework, another device count);
      then, with x64 switched on, the float64 twins of data=4 and fsdp=4.
Each float32 run's per-step losses go to OUT/<name>.json and its checkpoints to OUT/<name>/; each
float64 twin's losses and final weights to OUT/<name>.f64.npz.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

HALF = 10  # the step the resumed runs restart from (every run saves there)


def _write_losses(out: Path, name: str, losses: list[float]) -> None:
    (out / f"{name}.json").write_text(json.dumps([float(x) for x in losses]))


def read_float64_twin(out: Path, name: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(per-step losses, final weights) of a run's float64 twin."""
    with np.load(out / f"{name}.f64.npz") as data:
        return data["losses"], {key[2:]: data[key] for key in data.files if key.startswith("w:")}


def _run_float64_twin(out: Path, name: str, config, make_backend) -> None:
    """The same run in float64 (its own rounding error is then |float32 - float64|): backend direct,
    the loop's batches; written by the main process."""
    from shared.training.loop import init_weights, load_pairs, make_sampler, make_tokenizer

    pairs = load_pairs(config, "train")
    tokenizer = make_tokenizer(config, pairs)
    model_config = config.resolve_model_config(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    init = {key: value.astype(np.float64) for key, value in init_weights(config, model_config).items()}
    backend = make_backend(model_config, config, config.total_steps, init)
    stream = make_sampler(config, tokenizer, pairs).stream()
    losses = [float(backend.train_step(next(stream))["loss"]) for _ in range(config.total_steps)]
    weights = backend.model_tensors()
    if getattr(backend, "is_main_process", True):
        np.savez(out / f"{name}.f64.npz", losses=np.array(losses), **{f"w:{k}": v for k, v in weights.items()})


def torch_worker(rank: int, world: int, port: int, config_json: str, out: str) -> None:
    """One rank of the torch runs (torch.multiprocessing.spawn calls it with the rank first)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch
    import torch.distributed as dist

    from shared.training.run_checkpoint import checkpoint_root, step_dir_name
    from shared.training.train_config import TrainConfig
    from shared.training.loop import train
    from torch_impl.distributed import DistributedTorchBackend, make_distributed_backend_factory

    torch.set_num_threads(1)
    config = TrainConfig.from_json(config_json)
    out_dir = Path(out)
    try:
        for strategy in ("ddp", "fsdp"):
            name = f"torch-{strategy}"
            result = train(config, "torch", out_dir / name, progress=False,
                           backend_factory=make_distributed_backend_factory(strategy))
            if rank == 0:
                _write_losses(out_dir, name, result.losses)
            _run_float64_twin(out_dir, name, config, lambda *a: DistributedTorchBackend(*a, strategy=strategy))
        # The DDP checkpoint (gathered, canonical) scattered into FSDP2 shards: another layout.
        name = "torch-fsdp-from-torch-ddp"
        result = train(None, "torch", out_dir / name, progress=False, resume=checkpoint_root(out_dir / "torch-ddp") / step_dir_name(HALF),
                       backend_factory=make_distributed_backend_factory("fsdp"))
        if rank == 0:
            _write_losses(out_dir, name, result.losses)
    finally:
        dist.destroy_process_group()


def jax_runs(out: Path, config_json: str, torch_ddp_run: Path) -> None:
    import jax

    from jax_impl.sharding import make_sharded_backend_factory
    from shared.training.run_checkpoint import checkpoint_root, step_dir_name
    from shared.training.sharding import MeshSpec
    from shared.training.train_config import TrainConfig
    from shared.training.loop import train
    from twinformer.backends import make_backend

    assert len(jax.devices()) == 4, f"expected 4 host devices (XLA_FLAGS), got {jax.devices()}"
    config = TrainConfig.from_json(config_json)
    runs = {
        "jax-single": (None, None),
        "jax-data4": ("data=4", None),
        "jax-fsdp4": ("fsdp=4", None),
        "jax-fsdp4-from-torch-ddp": ("fsdp=4", checkpoint_root(torch_ddp_run) / step_dir_name(HALF)),
    }
    for name, (mesh, resume) in runs.items():
        factory = make_backend if mesh is None else make_sharded_backend_factory(MeshSpec.parse(mesh))
        result = train(config, "jax", out / name, resume=resume, progress=False, backend_factory=factory)
        _write_losses(out, name, result.losses)
    jax_float64_twins(out, config_json)  # last: x64 is process-wide, and what is traced from here on sees it


def jax_float64_twins(out: Path, config_json: str) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    from jax_impl.sharding import ShardedJaxBackend
    from shared.training.sharding import MeshSpec
    from shared.training.train_config import TrainConfig

    config = TrainConfig.from_json(config_json)
    for name, mesh in (("jax-data4", "data=4"), ("jax-fsdp4", "fsdp=4")):
        _run_float64_twin(out, name, config, lambda *a: ShardedJaxBackend(*a, mesh=MeshSpec.parse(mesh)))


if __name__ == "__main__":
    mode, args = sys.argv[1:2], sys.argv[2:]
    if mode == ["jax"] and len(args) == 3:
        jax_runs(Path(args[0]), args[1], Path(args[2]))
    else:
        raise SystemExit("usage: python -m tests.scale_out_runs jax OUT CONFIG_JSON TORCH_DDP_RUN")
