"""T5's relative position buckets: one numpy definition for both stacks."""

from __future__ import annotations

import math

import numpy as np


def relative_position_buckets(
    query_length: int, key_length: int, bidirectional: bool, num_buckets: int, max_distance: int
) -> np.ndarray:
    """(Tq, Tk) int32 bucket of each (query i, key j) pair, relative position j - i (HF's T5 rule).

    Half the buckets (of each direction, when bidirectional) hold exact distances; the rest grow
    logarithmically up to max_distance, beyond which distances share the last bucket. The log step
    is computed in float32 with HF's exact op order, then truncated: at a bucket boundary the
    float32 rounding decides, so computing it any other way could move a pair to the next bucket.
    Both stacks take this one table, so their buckets cannot differ.
    """
    relative = np.arange(key_length, dtype=np.int64)[None, :] - np.arange(query_length, dtype=np.int64)[:, None]
    buckets = np.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).astype(np.int64) * num_buckets
        distance = np.abs(relative)
    else:
        distance = -np.minimum(relative, 0)
    max_exact = num_buckets // 2
    with np.errstate(divide="ignore"):  # log(0) at distance 0: that pair takes the exact branch
        log_ratio = np.log(distance.astype(np.float32) / np.float32(max_exact))
    scaled = log_ratio / np.float32(math.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact)
    with np.errstate(invalid="ignore"):
        large = max_exact + np.where(np.isfinite(scaled), scaled, 0).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return (buckets + np.where(distance < max_exact, distance, large)).astype(np.int32)
