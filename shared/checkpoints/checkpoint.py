"""Checkpoint directories: `config.json` + `model.safetensors` in the PyTorch state-dict layout.

Tensors travel as numpy arrays (bfloat16 through `ml_dtypes`, never through float32), so both
stacks share one reader and one writer and a round trip is bit-exact. Writes are atomic: each file
is written beside its destination and moved into place, so a crash leaves the old file intact.
Any one floating dtype (float64, float32, float16, bfloat16) is allowed, shared by all tensors.

Reading and writing stream (shared/checkpoints/safetensors_stream.py): `load_checkpoint_lazy` checks every key,
shape and dtype from the header and reads nothing else; `save_checkpoint` takes arrays or lazy
tensors and holds one at a time, so converting a model of any size needs one tensor of memory.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from shared.checkpoints import safetensors_stream
from shared.checkpoints.safetensors_stream import LazyTensor, SafetensorsFormatError, Tensor

from shared.config.model_config import ModelConfig
from shared.checkpoints.weight_table import param_specs

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FLOAT_DTYPES = {
    "float64": np.dtype(np.float64),  # for diagnosis: tells formula errors from float32 rounding
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message lists every problem found, by key."""


def check_tensors(config: ModelConfig, tensors: dict[str, Tensor], source: str) -> None:
    """Fail with every problem at once unless `tensors` holds exactly the config's parameters.

    Checks: each expected key present, no unexpected key, each shape as the config implies, one
    floating dtype shared by all tensors (mixed dtypes would silently upcast inside a model).
    """
    problems: list[str] = []
    expected = {spec.torch_key: spec.torch_shape for spec in param_specs(config)}
    for key, shape in expected.items():
        if key not in tensors:
            problems.append(f"missing key {key}: expected shape {shape}")
        elif tuple(tensors[key].shape) != shape:
            problems.append(
                f"shape mismatch for {key}: expected {shape}, found {tuple(tensors[key].shape)}"
            )
    problems += [
        f"unexpected key {key}: shape {tuple(tensors[key].shape)}, not part of this config"
        for key in tensors
        if key not in expected
    ]
    for key, tensor in tensors.items():
        if np.dtype(tensor.dtype) not in FLOAT_DTYPES.values():
            problems.append(f"dtype of {key}: expected a float dtype, found {tensor.dtype}")
    if len({t.dtype for t in tensors.values()}) > 1:
        # The dtype most tensors share is the checkpoint's; the odd ones out are the problems.
        common, _ = Counter(t.dtype for t in tensors.values()).most_common(1)[0]
        problems += [
            f"dtype mismatch for {key}: expected {common} (as most tensors), found {t.dtype}"
            for key, t in tensors.items()
            if t.dtype != common
        ]
    if problems:
        raise CheckpointError(
            f"{source} does not fit the model config ({len(problems)} problem(s)):\n  - "
            + "\n  - ".join(problems)
        )


def _atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then move tmp_path onto path (same directory, so the move is atomic)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(directory: str | Path, config: ModelConfig, tensors: dict[str, Tensor]) -> Path:
    """Write `config.json` and `model.safetensors` (checked against the config first).

    `tensors` may be arrays or LazyTensors (loaded one at a time while the file is written); keys
    are written in sorted order, so the same tensors give the same bytes whoever saves them.
    """
    directory = Path(directory)
    check_tensors(config, tensors, "the tensors to save")
    directory.mkdir(parents=True, exist_ok=True)
    ordered = {key: tensors[key] for key in sorted(tensors)}
    metadata = {"format": "pt"}  # what transformers' from_pretrained expects of a safetensors file
    _atomic_write(directory / WEIGHTS_FILE, lambda tmp: safetensors_stream.write(tmp, ordered, metadata))
    _atomic_write(directory / CONFIG_FILE, lambda tmp: Path(tmp).write_text(config.to_json()))
    return directory


def read_config(directory: str | Path) -> ModelConfig:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found: a checkpoint directory holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    return ModelConfig.load(path)  # a ConfigError names the file and every problem


def read_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """Read a safetensors file to numpy, turning a truncated or corrupt file into a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path} is not a readable safetensors file (truncated or corrupt?): {error}"
        ) from error


def lazy_tensors(path: str | Path) -> dict[str, LazyTensor]:
    """{key: LazyTensor} of a safetensors file (only its header is read now), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    try:
        return safetensors_stream.lazy_tensors(path)
    except (SafetensorsFormatError, OSError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {error}") from error


def load_checkpoint_lazy(directory: str | Path) -> tuple[ModelConfig, dict[str, LazyTensor]]:
    """Check a checkpoint directory (config, every key, shape and dtype) and return its tensors unread."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    config = read_config(directory)
    tensors = lazy_tensors(directory / WEIGHTS_FILE)
    check_tensors(config, tensors, str(directory / WEIGHTS_FILE))
    return config, tensors


def load_checkpoint(directory: str | Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Read and check a checkpoint directory: (config, {state-dict key: numpy array})."""
    config, tensors = load_checkpoint_lazy(directory)
    return config, {key: tensor.load() for key, tensor in tensors.items()}
