"""Bit-exact tensor <-> numpy conversion, bfloat16 included (numpy has no native bfloat16).

bfloat16 travels as its raw 16 bits (a uint16 view) and is re-labelled with ml_dtypes on the
numpy side, so no value ever passes through float32 on the way.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import torch

_BF16 = np.dtype(ml_dtypes.bfloat16)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(_BF16)
    return tensor.numpy()


def to_torch(array: np.ndarray) -> torch.Tensor:
    """A tensor that owns its memory, or shares it only with a writable numpy array.

    A read-only array (a view of a jax buffer) is copied: an in-place torch update (an optimizer
    step) must never write through to memory that another framework believes immutable.
    """
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:
        array = array.copy()
    if array.dtype == _BF16:
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)
