"""Training checkpoints: everything needed to continue a run, in either framework, written atomically.

Layout: RUN_DIR/checkpoints/step_XXXXXXX/ holding
    config.json, model.safetensors   the weights (shared/checkpoints/checkpoint.py: torch layout, any stack loads it)
    optimizer.safetensors            Adam moments + step (shared/checkpoints/optimizer_state.py)
    rng.safetensors                  RNG state as raw arrays (torch generator bytes, jax key data): no pickle
    trainer_state.json               step, sampler position, framework that wrote it, schedule length
    train_config.json                the TrainConfig of the run
    tokenizer.json (+ source_tokenizer.json)
and RUN_DIR/checkpoints/latest, a one-line file naming the newest complete checkpoint.
A LoRA fine-tuning checkpoint holds the adapter instead of the weights: adapter_config.json +
adapter_model.safetensors (PEFT's format, so the directory is itself an adapter directory),
base_config.json, and optimizer.safetensors keyed by the adapter's PEFT keys (shared/checkpoints/adapter_checkpoint.py).

Atomicity: files are written into a hidden temporary directory, fsynced, and the directory is
renamed to step_XXXXXXX (a rename within one directory is atomic); only then is `latest` replaced,
itself through a fsynced temporary file and a rename. A crash at any point leaves `latest` naming a
complete checkpoint; a half-written temporary directory is never named and is swept by the next save.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from shared.checkpoints.adapter_checkpoint import (
    is_adapter_checkpoint,
    read_adapter_optimizer_state,
    read_adapter_weights,
    write_adapter_state,
)
from shared.checkpoints.checkpoint import CheckpointError, load_checkpoint, read_tensors, save_checkpoint
from shared.checkpoints.paths import (  # re-exported: the names callers have always imported from here
    CHECKPOINTS,
    LATEST,
    TRAIN_CONFIG_FILE,
    TRAINER_STATE_FILE,
    checkpoint_root,
    latest_checkpoint,
    list_checkpoints,
    resolve,
    step_dir_name,
)
from shared.config.model_config import ModelConfig
from shared.checkpoints.lora_config import LoRAConfig
from shared.checkpoints.optimizer_state import OPTIMIZER_FILE, OptimizerState, read_optimizer_state, write_optimizer_state
from shared.training.train_config import TrainConfig

RNG_FILE = "rng.safetensors"
_TMP_PREFIX = ".tmp-"


@dataclass
class RunCheckpoint:
    """One loaded training checkpoint (the tokenizer is read with `tokenizer()`)."""

    path: Path
    model_config: ModelConfig
    tensors: dict[str, np.ndarray]
    optimizer: OptimizerState
    rng: dict[str, np.ndarray]
    trainer_state: dict[str, Any]
    train_config: TrainConfig
    lora: LoRAConfig | None = None  # set for a LoRA fine-tuning checkpoint: tensors/optimizer are the adapter's

    @property
    def step(self) -> int:
        return int(self.trainer_state["step"])

    def tokenizer(self):
        from shared.data.model_tokenizer import load_model_tokenizer

        return load_model_tokenizer(self.path, self.model_config)


def resolve_checkpoint(path: str | Path) -> Path:
    """The training checkpoint a path names (shared/checkpoints/paths.py: run dir, checkpoints/, latest, step dir)."""
    return resolve(path, "training")


# ---------------------------------------------------------------------------------------------------
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_weights(directory: Path, model_config: ModelConfig, tensors: dict[str, np.ndarray]) -> None:
    save_checkpoint(directory, model_config, tensors)


def _write_optimizer(directory: Path, model_config: ModelConfig, optimizer: OptimizerState) -> None:
    write_optimizer_state(directory / OPTIMIZER_FILE, model_config, optimizer)


def _write_rng(directory: Path, rng: dict[str, np.ndarray]) -> None:
    arrays = {name: np.ascontiguousarray(value) for name, value in rng.items()}
    save_file(arrays, str(directory / RNG_FILE), metadata={"format": "twinformer-rng-v1"})


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_run_checkpoint(
    run_dir: str | Path,
    *,
    step: int,
    model_config: ModelConfig,
    tensors: dict[str, np.ndarray],
    optimizer: OptimizerState,
    rng: dict[str, np.ndarray],
    trainer_state: dict[str, Any],
    train_config: TrainConfig,
    tokenizer,
    keep_last: int | None = None,
    lora: LoRAConfig | None = None,
) -> Path:
    """Write RUN_DIR/checkpoints/step_XXXXXXX atomically, point `latest` at it, prune old ones.

    With `lora` (a LoRAConfig), `tensors` and `optimizer` are an adapter's (PEFT keys) and are
    written in the adapter layout (shared/checkpoints/adapter_checkpoint.py) instead of as full weights.
    """
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = step_dir_name(step)
    tmp = root / f"{_TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        if lora is None:
            _write_weights(tmp, model_config, tensors)
            _write_optimizer(tmp, model_config, optimizer)
        else:
            write_adapter_state(tmp, model_config, lora, tensors, optimizer, train_config.init_checkpoint)
        _write_rng(tmp, rng)
        _write_json(tmp / TRAINER_STATE_FILE, {**trainer_state, "step": step})
        train_config.save(tmp / TRAIN_CONFIG_FILE)
        tokenizer.save(tmp)
        for file in tmp.iterdir():
            _fsync(file)
        _fsync(tmp)
        final = root / name
        if final.exists():  # the same step saved again (e.g. a resumed run that was already done)
            trash = root / f"{_TMP_PREFIX}old-{name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _point_latest(root, name)
    _prune(run_dir, keep_last, keep=final)
    return final


def _point_latest(root: Path, name: str) -> None:
    """Replace `latest` atomically: write a temporary file, fsync it, rename it over the old one."""
    tmp = root / f"{_TMP_PREFIX}{LATEST}-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / LATEST)
    _fsync(root)


def _prune(run_dir: str | Path, keep_last: int | None, keep: Path) -> None:
    """Delete all but the newest keep_last checkpoints (never `keep`) and leftovers of crashed saves."""
    root = checkpoint_root(run_dir)
    for leftover in root.glob(f"{_TMP_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    if keep_last is None:
        return
    checkpoints = list_checkpoints(run_dir)
    for old in checkpoints[: max(0, len(checkpoints) - keep_last)]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def load_run_checkpoint(path: str | Path) -> RunCheckpoint:
    """Read a training checkpoint (or a run directory's latest), checking every file against the config."""
    directory = resolve_checkpoint(path)
    lora = None
    if is_adapter_checkpoint(directory):
        model_config, lora, tensors = read_adapter_weights(directory)
    else:
        model_config, tensors = load_checkpoint(directory)
    for required in (OPTIMIZER_FILE, RNG_FILE, TRAINER_STATE_FILE, TRAIN_CONFIG_FILE):
        if not (directory / required).is_file():
            raise CheckpointError(f"{directory} is not a complete training checkpoint: {required} is missing")
    if lora is None:
        optimizer = read_optimizer_state(directory / OPTIMIZER_FILE, model_config)
    else:
        optimizer = read_adapter_optimizer_state(directory / OPTIMIZER_FILE, model_config, lora)
    return RunCheckpoint(
        path=directory,
        model_config=model_config,
        tensors=tensors,
        lora=lora,
        optimizer=optimizer,
        rng=read_tensors(directory / RNG_FILE),
        trainer_state=json.loads((directory / TRAINER_STATE_FILE).read_text()),
        train_config=TrainConfig.load(directory / TRAIN_CONFIG_FILE),
    )
