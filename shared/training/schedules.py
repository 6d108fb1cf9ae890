"""Learning-rate schedules, written once for any array module (numpy on the torch side, jnp in optax).

`step` is the 0-based index of the update about to be applied: torch sets each param group's lr to
`learning_rate(step)` before `optimizer.step()`, and optax calls the same formula with its update
count (0 at the first update). With W = warmup_steps, N = total_steps, s = step + 1:

    warmup(s)     = min(1, s / W)                      (1 when W = 0)
    constant      = lr * warmup(s)
    inverse_sqrt  = lr * min(s / W, sqrt(W / s))       (peaks at lr when s = W)
    cosine        = lr * s / W                          for s <= W, then
                    min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2,  p = clip((s - W) / (N - W), 0, 1)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from shared.training.train_config import SCHEDULES, TrainConfig


def learning_rate(
    step: Any,
    *,
    kind: str,
    lr: float,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    min_lr: float = 0.0,
    xp: Any = np,
) -> Any:
    """The learning rate of update `step` (0-based); `xp` is numpy or jax.numpy (traceable)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; expected one of {', '.join(SCHEDULES)}")
    s = xp.asarray(step, dtype=xp.float32 if xp is not np else np.float64) + 1.0
    W = float(warmup_steps)
    warmup = xp.minimum(1.0, s / W) if W > 0 else xp.ones_like(s)
    if kind == "constant":
        return lr * warmup
    if kind == "inverse_sqrt":
        if W <= 0:
            raise ValueError("the inverse_sqrt schedule needs warmup_steps > 0")
        return lr * xp.minimum(s / W, xp.sqrt(W / s))
    if total_steps is None or total_steps <= warmup_steps:
        raise ValueError(f"the cosine schedule needs total_steps > warmup_steps, got {total_steps}, {warmup_steps}")
    progress = xp.clip((s - W) / float(total_steps - warmup_steps), 0.0, 1.0)
    cosine = min_lr + (lr - min_lr) * 0.5 * (1.0 + xp.cos(math.pi * progress))
    return xp.where(s <= W, lr * warmup, cosine)


def schedule_for(config: TrainConfig, total_steps: int, xp: Any = np) -> Callable[[Any], Any]:
    """step -> learning rate for this config (total_steps resolved, e.g. from epochs)."""

    def schedule(step: Any) -> Any:
        return learning_rate(
            step,
            kind=config.schedule,
            lr=config.lr,
            warmup_steps=config.warmup_steps,
            total_steps=total_steps,
            min_lr=config.min_lr,
            xp=xp,
        )

    return schedule
