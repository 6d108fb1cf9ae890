"""Several LoRA adapters over one base stacked for per-row selection (multi-LoRA serving, both stacks).

Row i of a batch picks adapter index k_i (0 = the base model, no adapter) and each adapted linear
layer computes y = W x + scaling[k_i] * B[k_i] A[k_i] x. The adapters may differ in rank and in
target modules: every target of any adapter gets a stack of n + 1 (A, B) pairs, zero for index 0,
for the adapters that do not target it, and in the rank columns beyond an adapter's own rank (zero
columns add exact zeros, so a padded adapter computes what it computes alone).

Framework-free (numpy): {torch,jax}_impl/multi_lora.py hand in each adapter's (A, B) pairs in their
own layout and say which axis is the rank.
"""

from __future__ import annotations

from typing import Hashable

import numpy as np

from shared.checkpoints.lora_config import LoRAConfig


def servable_problems(name: str, lora: LoRAConfig) -> list[str]:
    """What keeps an adapter from being served unmerged beside others (empty: nothing)."""
    problems = []
    if lora.modules_to_save:
        problems.append(f"adapter {name!r} replaces whole modules ({', '.join(lora.modules_to_save)}), which a "
                        "shared batch cannot do per row: merge it into a checkpoint and serve that instead")
    if lora.bias != "none":
        problems.append(f"adapter {name!r} trains biases (bias={lora.bias!r}): merge it into a checkpoint and serve that")
    return problems


def stack_adapters(pairs: list[dict[Hashable, tuple[np.ndarray, np.ndarray]]], scalings: list[float],
                   a_rank_axis: int, b_rank_axis: int) -> tuple[dict[Hashable, tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """n adapters' {module: (A, B)} -> ({module: (A (n+1, ...), B (n+1, ...))}, scaling (n+1,) float32).

    Index 0 is the base (zeros, scaling 0); index k is adapter k - 1, zero-padded to the largest
    rank any adapter has at that module (a_rank_axis / b_rank_axis: where the rank sits in A / B).
    """
    stacked = {}
    for module in sorted({m for adapter in pairs for m in adapter}, key=str):
        present = [adapter[module] for adapter in pairs if module in adapter]
        rank = max(a.shape[a_rank_axis] for a, _ in present)
        a_shape, b_shape = list(present[0][0].shape), list(present[0][1].shape)
        a_shape[a_rank_axis], b_shape[b_rank_axis] = rank, rank
        dtype = np.result_type(*(a.dtype for a, _ in present))
        a_stack = np.zeros((len(pairs) + 1, *a_shape), dtype)
        b_stack = np.zeros((len(pairs) + 1, *b_shape), dtype)
        for k, adapter in enumerate(pairs, start=1):
            if module in adapter:
                a, b = adapter[module]
                r = a.shape[a_rank_axis]
                a_stack[(k, *[slice(0, r) if axis == a_rank_axis else slice(None) for axis in range(a.ndim)])] = a
                b_stack[(k, *[slice(0, r) if axis == b_rank_axis else slice(None) for axis in range(b.ndim)])] = b
        stacked[module] = (a_stack, b_stack)
    scaling = np.asarray([0.0, *scalings], dtype=np.float32)
    return stacked, scaling


__all__ = ["servable_problems", "stack_adapters"]
