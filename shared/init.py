"""One weight initialisation for both stacks, drawn in numpy from a seed.

Each framework's own default init differs (torch Linear: kaiming-uniform; Flax Dense: lecun-normal;
embeddings N(0, 1) vs N(0, 1/D)), so runs started in different stacks would not be comparable.
Training draws its initial weights here instead, then hands the same tensors to either stack.
The scheme is the one the book's chapter-4 model uses (xavier-uniform on every matrix):
  matrices (Linear weights, embeddings): U(-a, a), a = sqrt(6 / (fan_in + fan_out))
  biases: 0 · norm weights: 1 · norm biases: 0
"""

from __future__ import annotations

import numpy as np

from shared.config import ModelConfig
from shared.weight_table import module_specs


def initial_tensors(config: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """{state-dict key: float32 array} for a fresh model; identical for identical (config, seed)."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for module, kind, shapes in module_specs(config):
        for leaf, shape in shapes.items():
            key = f"{module}.{leaf}"
            if kind == "norm":
                tensors[key] = np.full(shape, 1.0 if leaf == "weight" else 0.0, dtype=np.float32)
            elif len(shape) == 2:
                bound = np.sqrt(6.0 / (shape[0] + shape[1]))
                tensors[key] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
            else:
                tensors[key] = np.zeros(shape, dtype=np.float32)
    return tensors
