"""Adam/AdamW state in a framework-neutral form: `optimizer.safetensors`, keyed like torch.optim.

File layout (PyTorch layout, float32, one entry per model parameter):
    exp_avg.<state-dict key>      first moment m   (torch `exp_avg`, optax `mu`)
    exp_avg_sq.<state-dict key>   second moment v  (torch `exp_avg_sq`, optax `nu`)
    step                          int64 (1,): updates applied so far (torch `step`, optax `count`)
Metadata names the optimizer and its hyper-parameters so a resume with other settings is noticed.
torch converts by parameter name; jax through shared/checkpoints/weight_table.py (Linear kernels transposed),
exactly as the weights do, so the state crosses frameworks both ways bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from shared.checkpoints.checkpoint import CheckpointError, read_tensors
from shared.config.model_config import ModelConfig
from shared.checkpoints.weight_table import param_specs

OPTIMIZER_FILE = "optimizer.safetensors"
FORMAT = "twinformer-adam-v1"
MOMENTS = ("exp_avg", "exp_avg_sq")


@dataclass
class OptimizerState:
    """Adam moments by state-dict key (torch layout) and the number of updates already applied."""

    step: int
    exp_avg: dict[str, np.ndarray]
    exp_avg_sq: dict[str, np.ndarray]
    hyperparams: dict  # optimizer name, lr, betas, eps, weight_decay (informational + checked)

    def tensors(self) -> dict[str, np.ndarray]:
        flat = {f"exp_avg.{k}": v for k, v in self.exp_avg.items()}
        flat.update({f"exp_avg_sq.{k}": v for k, v in self.exp_avg_sq.items()})
        flat["step"] = np.array([self.step], dtype=np.int64)
        return flat


def check_optimizer_state(config: ModelConfig, state: OptimizerState, source: str) -> None:
    """Fail with every problem at once unless both moments hold exactly the config's parameters."""
    expected = {spec.torch_key: spec.torch_shape for spec in param_specs(config)}
    check_moments(expected, state, source, "the model config")


def check_moments(expected: dict[str, tuple[int, ...]], state: OptimizerState, source: str, what: str) -> None:
    """Fail with every problem at once unless both moments hold exactly `expected` (float32)."""
    problems: list[str] = []
    for moment in MOMENTS:
        tensors = getattr(state, moment)
        for key, shape in expected.items():
            if key not in tensors:
                problems.append(f"missing {moment}.{key}: expected shape {shape}")
            elif tuple(tensors[key].shape) != shape:
                problems.append(f"shape mismatch for {moment}.{key}: expected {shape}, found {tuple(tensors[key].shape)}")
            elif tensors[key].dtype not in MOMENT_DTYPES:
                problems.append(f"dtype of {moment}.{key}: expected float32, found {tensors[key].dtype}")
        problems += [f"unexpected key {moment}.{key} (not in {what})" for key in tensors if key not in expected]
    if not isinstance(state.step, int) or state.step < 0:
        problems.append(f"step must be a non-negative integer, found {state.step!r}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit {what} ({len(problems)} problem(s)):\n  - " + "\n  - ".join(problems)
        )


# float32 in every real run; float64 only in the float64 reference trajectories of the parity tests
# (parity_tests/test_training_parity.py), whose resume goes through a checkpoint like any run.
MOMENT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def write_optimizer_state(path: str | Path, config: ModelConfig, state: OptimizerState) -> None:
    """Write `optimizer.safetensors` (checked against the model config first)."""
    check_optimizer_state(config, state, "the optimizer state to save")
    tensors = {k: np.ascontiguousarray(v) for k, v in state.tensors().items()}
    save_file(tensors, str(path), metadata={"format": FORMAT, "hyperparams": json.dumps(state.hyperparams, sort_keys=True)})


def read_optimizer_state(path: str | Path, config: ModelConfig) -> OptimizerState:
    """Read and check `optimizer.safetensors` against the model config."""
    from safetensors import safe_open

    path = Path(path)
    tensors = read_tensors(path)
    with safe_open(str(path), framework="np") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {metadata.get('format')!r} is not {FORMAT!r}")
    if "step" not in tensors or tensors["step"].shape != (1,):
        raise CheckpointError(f"{path}: missing the (1,) int64 entry 'step'")
    moments: dict[str, dict[str, np.ndarray]] = {m: {} for m in MOMENTS}
    unexpected = []
    for name, value in tensors.items():
        if name == "step":
            continue
        moment, _, key = name.partition(".")
        if moment in moments and key:
            moments[moment][key] = value
        else:
            unexpected.append(name)
    if unexpected:
        raise CheckpointError(f"{path}: unexpected entries {', '.join(sorted(unexpected))}")
    state = OptimizerState(
        step=int(tensors["step"][0]),
        exp_avg=moments["exp_avg"],
        exp_avg_sq=moments["exp_avg_sq"],
        hyperparams=json.loads(metadata.get("hyperparams", "{}")),
    )
    check_optimizer_state(config, state, str(path))
    return state


def hyperparams_of(train_config) -> dict:
    """The optimizer settings recorded with the state (a resume under other settings is reported)."""
    return {
        "optimizer": train_config.optimizer,
        "betas": list(train_config.betas),
        "eps": train_config.eps,
        "weight_decay": train_config.weight_decay,
    }
