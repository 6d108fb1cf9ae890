"""A LoRA fine-tuning checkpoint's own files: the adapter (PEFT format), the base's config, and
the adapter's Adam state.

A LoRA checkpoint directory is itself a PEFT adapter directory plus the state to resume:
    adapter_config.json, adapter_model.safetensors   the adapter (shared/checkpoints/adapter_io.py)
    base_config.json                                the base model's ModelConfig
    optimizer.safetensors                           Adam moments of the adapter only, keyed
                                                    exp_avg.<PEFT key> (torch layout)
shared/training/run_checkpoint.py writes and reads them beside the files every training checkpoint has.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from shared.checkpoints.adapter_io import ADAPTER_CONFIG_FILE, expected_adapter_shapes, load_adapter, save_adapter
from shared.checkpoints.checkpoint import CheckpointError, read_tensors
from shared.config.model_config import ModelConfig
from shared.checkpoints.lora_config import LoRAConfig
from shared.checkpoints.optimizer_state import MOMENTS, OPTIMIZER_FILE, OptimizerState, check_moments

BASE_CONFIG_FILE = "base_config.json"
ADAPTER_OPTIMIZER_FORMAT = "twinformer-lora-adam-v1"


def is_adapter_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / ADAPTER_CONFIG_FILE).is_file()


def check_adapter_optimizer_state(config: ModelConfig, lora: LoRAConfig, state: OptimizerState, source: str) -> None:
    """Fail with every problem unless both moments hold exactly the adapter's tensors (float32)."""
    check_moments(expected_adapter_shapes(config, lora), state, source, "the adapter")


def write_adapter_state(
    directory: Path,
    model_config: ModelConfig,
    lora: LoRAConfig,
    tensors: dict[str, np.ndarray],
    optimizer: OptimizerState,
    base_name: str | None,
) -> None:
    """The adapter files (PEFT format), the base's config and the adapter's Adam state, into `directory`."""
    check_adapter_optimizer_state(model_config, lora, optimizer, "the adapter optimizer state to save")
    save_adapter(directory, model_config, lora, tensors, base_name)
    model_config.save(directory / BASE_CONFIG_FILE)
    arrays = {k: np.ascontiguousarray(v) for k, v in optimizer.tensors().items()}
    metadata = {"format": ADAPTER_OPTIMIZER_FORMAT, "hyperparams": json.dumps(optimizer.hyperparams, sort_keys=True)}
    save_file(arrays, str(directory / OPTIMIZER_FILE), metadata=metadata)


def read_adapter_weights(directory: str | Path) -> tuple[ModelConfig, LoRAConfig, dict[str, np.ndarray]]:
    """(base model config, LoRAConfig, adapter tensors) of a LoRA checkpoint, checked against each other."""
    directory = Path(directory)
    if not (directory / BASE_CONFIG_FILE).is_file():
        raise CheckpointError(f"{directory} is not a LoRA training checkpoint: {BASE_CONFIG_FILE} is missing")
    model_config = ModelConfig.load(directory / BASE_CONFIG_FILE)
    lora, tensors = load_adapter(directory, model_config)
    return model_config, lora, tensors


def read_adapter_optimizer_state(path: str | Path, model_config: ModelConfig, lora: LoRAConfig) -> OptimizerState:
    """Read and check a LoRA checkpoint's optimizer.safetensors."""
    from safetensors import safe_open

    path = Path(path)
    tensors = read_tensors(path)
    with safe_open(str(path), framework="np") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != ADAPTER_OPTIMIZER_FORMAT:
        raise CheckpointError(f"{path}: format {metadata.get('format')!r} is not {ADAPTER_OPTIMIZER_FORMAT!r}")
    if "step" not in tensors or tensors["step"].shape != (1,):
        raise CheckpointError(f"{path}: missing the (1,) int64 entry 'step'")
    moments: dict[str, dict[str, np.ndarray]] = {m: {} for m in MOMENTS}
    unexpected = []
    for name, value in tensors.items():
        moment, _, key = name.partition(".")
        if name != "step" and moment in moments and key:
            moments[moment][key] = value
        elif name != "step":
            unexpected.append(name)
    if unexpected:
        raise CheckpointError(f"{path}: unexpected entries {', '.join(sorted(unexpected))}")
    state = OptimizerState(int(tensors["step"][0]), moments["exp_avg"], moments["exp_avg_sq"],
                           json.loads(metadata.get("hyperparams", "{}")))  # fmt: skip
    check_adapter_optimizer_state(model_config, lora, state, str(path))
    return state
