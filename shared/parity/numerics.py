"""Numerical definitions both stacks must share bit for bit: the sinusoid table and the mask fill."""

from __future__ import annotations

import ml_dtypes
import numpy as np


def sinusoid_table(max_len: int, d_model: int) -> np.ndarray:
    """Interleaved sinusoid (max_len, D): even dims sin(pos / 10000^(2i/D)), odd dims cos(same).

    Computed once in float64 and rounded to float32, so both stacks add the very same table
    (each framework's own sin/exp would differ in the last bits).
    """
    positions = np.arange(max_len, dtype=np.float64)[:, None]  # (P, 1)
    inverse_freq = np.power(10000.0, -np.arange(0, d_model, 2, dtype=np.float64) / d_model)
    angles = positions * inverse_freq[None, :]  # (P, D/2)
    table = np.empty((max_len, d_model), dtype=np.float64)
    table[:, 0::2] = np.sin(angles)
    table[:, 1::2] = np.cos(angles)
    return table.astype(np.float32)


def mask_fill_value(dtype_name: str) -> float:
    """The score given to masked attention positions: the dtype's most negative finite value.

    Finite (not -inf) so a fully masked row (a fully padded sequence) softmaxes to a uniform
    distribution instead of NaN; exp(min - max) is exactly 0, so any row with at least one visible
    key gives bit-for-bit the result of the -inf convention. Masking uses `where`, not addition,
    so the fill never overflows.
    """
    return float(ml_dtypes.finfo(dtype_name).min)
