"""One weight initialisation for both stacks, drawn in numpy from a seed.

Each framework's own default init differs (torch Linear: kaiming-uniform; Flax Dense: lecun-normal;
embeddings N(0, 1) vs N(0, 1/D)), so runs started in different stacks would not be comparable.
Training draws its initial weights here instead, then hands the same tensors to either stack.
The scheme:
  Linear weights: xavier-uniform, U(-a, a), a = sqrt(6 / (fan_in + fan_out)) (the book's choice)
  embeddings: N(0, s^2) with s = D^-1/2 when scale_embeddings multiplies them by sqrt(D), else 1,
    so the embedded vectors have unit-scale entries either way, like the sinusoid they are added
    to (a xavier-sized table would be drowned by the positions and learn slowly)
  biases: 0 · norm weights (LayerNorm and RMS): 1 (0 for Gemma's (1 + w) norm) · norm biases: 0
"""

from __future__ import annotations

import numpy as np

from shared.config.model_config import ModelConfig
from shared.checkpoints.weight_table import module_specs


def initial_tensors(config: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """{state-dict key: float32 array} for a fresh model; identical for identical (config, seed)."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for module, kind, shapes in module_specs(config):
        for leaf, shape in shapes.items():
            key = f"{module}.{leaf}"
            if kind in ("norm", "rms_norm"):
                # a norm scaling by (1 + w) (Gemma: norm_one_plus_weight) is the identity at w = 0
                one = 0.0 if kind == "rms_norm" and config.norm_one_plus_weight else 1.0
                tensors[key] = np.full(shape, one if leaf == "weight" else 0.0, dtype=np.float32)
            elif kind == "embedding":
                std = config.d_model**-0.5 if config.scale_embeddings else 1.0
                tensors[key] = (std * rng.standard_normal(size=shape)).astype(np.float32)
            elif len(shape) == 2:
                bound = np.sqrt(6.0 / (shape[0] + shape[1]))
                tensors[key] = rng.uniform(-bound, bound, size=shape).astype(np.float32)
            else:
                tensors[key] = np.zeros(shape, dtype=np.float32)
    return tensors
