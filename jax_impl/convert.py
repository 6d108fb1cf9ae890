"""State dict (numpy, PyTorch layout) <-> Flax params pytree, through shared/checkpoints/weight_table.py.

Pure layout work: a transpose for Linear weights, a rename everywhere; values are never touched,
so conversions are bit-exact in every dtype. Each tensor is consumed exactly once, both ways.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from shared.checkpoints.checkpoint import CheckpointError, check_tensors
from shared.config.model_config import ModelConfig
from shared.checkpoints.safetensors_stream import Tensor, load
from shared.checkpoints.weight_table import TRANSPOSE, param_specs


def _relayout(array: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(array.T) if layout == TRANSPOSE else array


def params_from_state_dict(config: ModelConfig, tensors: dict[str, Tensor], dtype=None,
                           sharding: jax.sharding.Sharding | Callable[[tuple[str, ...]], jax.sharding.Sharding] | None = None,
                           ) -> dict:
    """{state-dict key: array or LazyTensor} -> Flax params (nested dict of jax arrays).

    One tensor at a time: read (a LazyTensor), re-laid out, placed (`sharding`: one for every
    param, or a function of the Flax path), cast to `dtype` if given, so a lazy checkpoint needs
    the params plus one tensor of host memory.
    """
    check_tensors(config, tensors, "the state dict")
    flat = {}
    for spec in param_specs(config):
        array = _relayout(load(tensors[spec.torch_key]), spec.layout)
        placement = sharding(spec.flax_path) if callable(sharding) else sharding
        value = jnp.asarray(array) if placement is None else jax.device_put(array, placement)
        flat[spec.flax_path] = value if dtype is None else value.astype(dtype)
        del array
    return unflatten_dict(flat)


def state_dict_from_params(config: ModelConfig, params: dict) -> dict[str, np.ndarray]:
    """Flax params -> {state-dict key: numpy array} in the PyTorch layout."""
    flat = flatten_dict(dict(params))
    specs = param_specs(config)
    problems = []
    for spec in specs:
        if spec.flax_path not in flat:
            problems.append(f"missing param {'/'.join(spec.flax_path)}: expected shape {spec.flax_shape}")
        elif tuple(flat[spec.flax_path].shape) != spec.flax_shape:
            problems.append(
                f"shape mismatch for {'/'.join(spec.flax_path)}: expected {spec.flax_shape}, "
                f"found {tuple(flat[spec.flax_path].shape)}"
            )
    expected = {spec.flax_path for spec in specs}
    problems += [f"unexpected param {'/'.join(path)}" for path in flat if path not in expected]
    if problems:
        raise CheckpointError(
            f"the Flax params do not fit the model config ({len(problems)} problem(s)):\n  - "
            + "\n  - ".join(problems)
        )
    return {spec.torch_key: _relayout(np.asarray(flat[spec.flax_path]), spec.layout) for spec in specs}
