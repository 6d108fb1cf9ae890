"""Checkpoint averaging: the element-wise mean of the weights of several checkpoints of one run.

Averaging the last few checkpoints of a run (Vaswani et al. 2017, section 6.1: the last 5 or 20,
written at regular intervals) smooths the noise of the final updates and usually gains some BLEU at
no training cost. Only weights are averaged; the result is an ordinary checkpoint directory
(shared/checkpoints/checkpoint.py) with the run's tokenizer and train config beside it, so `twinformer evaluate`
and `translate` load it in either stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared.checkpoints.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from shared.config.model_config import ModelConfig
from shared.checkpoints.paths import COMPANION_FILES, copy_companions, list_checkpoints


def last_checkpoints(run_dir: str | Path, count: int | None = None) -> list[Path]:
    """The newest `count` complete checkpoints of a run (None: all it kept), oldest first; an error if
    it has fewer."""
    from shared.checkpoints.paths import CheckpointNotFound, is_run_dir

    if not Path(run_dir).exists():
        raise CheckpointNotFound(f"{run_dir} does not exist")
    if not is_run_dir(run_dir):
        raise CheckpointError(f"{run_dir} is not a run directory (no checkpoints/ with step_XXXXXXX directories)")
    if count is None:
        return list_checkpoints(run_dir)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"the number of checkpoints to average must be a positive integer, got {count!r}")
    found = list_checkpoints(run_dir)
    if len(found) < count:
        raise CheckpointError(
            f"{run_dir} holds {len(found)} checkpoint(s), fewer than the {count} asked for "
            "(train with save_every > 0 and keep_last >= that many, or null)"
        )
    return found[-count:]


def average_weights(directories: Sequence[str | Path]) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """(config, mean tensors) of checkpoints of one model; each mean is summed in float64, then cast back."""
    if not directories:
        raise ValueError("no checkpoints to average")
    config, first = load_checkpoint(directories[0])
    sums = {key: value.astype(np.float64) for key, value in first.items()}
    for directory in directories[1:]:
        other_config, tensors = load_checkpoint(directory)  # checks every tensor against its config
        if other_config != config:
            raise CheckpointError(f"{directory} holds a different model than {directories[0]}; only one model's checkpoints average")
        for key, value in tensors.items():
            sums[key] += value
    n = len(directories)
    return config, {key: (total / n).astype(first[key].dtype) for key, total in sums.items()}


def write_average(directories: Sequence[str | Path], out: str | Path) -> Path:
    """Average `directories` into the checkpoint directory `out`, with the newest one's tokenizer and train config."""
    out = Path(out)
    if any(Path(d).resolve() == out.resolve() for d in directories):
        raise ValueError(f"--out {out} is one of the checkpoints being averaged; choose another directory")
    newest = Path(directories[-1])
    if not (newest / COMPANION_FILES[0]).is_file():  # checked first: an average without it is unusable
        raise CheckpointError(f"{newest} has no {COMPANION_FILES[0]}: translate and evaluate could not use the average")
    config, tensors = average_weights(directories)
    save_checkpoint(out, config, tensors)
    copy_companions(out, tokenizer_from=[newest], train_config_from=[newest])
    return out


__all__ = ["average_weights", "last_checkpoints", "write_average"]
