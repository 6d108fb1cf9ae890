"""Decoding many texts: fixed-shape source batches of similar lengths, and generated rows back to tokens.

The commands (translate, summarize) and the training loop's BLEU/ROUGE decodes share these, so a
jitted decoder sees few (B, S) shapes: lengths are sorted into buckets, padded to a multiple.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.data.special_tokens import EOS_ID


def trim_at_eos(ids: Sequence[int], eos_id: int = EOS_ID) -> list[int]:
    """One row of generated ids up to (not including) its first EOS (the model's own eos_id where it has one)."""
    ids = [int(i) for i in ids]
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


def length_buckets(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted by length, then cut every batch_size).

    Similar lengths waste little padding; the caller restores the input order from the indices.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad_sources(
    sequences: Sequence[Sequence[int]],
    pad_id: int,
    length_multiple: int = 8,
    max_len: int | None = None,
    rows: int | None = None,
) -> np.ndarray:
    """Sequences -> (rows or len, S) int32, S rounded up to a multiple (capped at max_len).

    Fixed bucket shapes bound the number of distinct (B, S) shapes, so a jitted decoder compiles
    once per bucket instead of once per batch. Extra rows are all PAD: padding rows, see above.
    """
    longest = max((len(s) for s in sequences), default=1)
    if max_len is not None and longest > max_len:
        raise ValueError(f"a source of {longest} tokens exceeds max_len {max_len}")
    width = -(-max(longest, 1) // length_multiple) * length_multiple
    if max_len is not None:
        width = min(width, max_len)
    count = len(sequences) if rows is None else rows
    if count < len(sequences):
        raise ValueError(f"rows={rows} is fewer than the {len(sequences)} sequences")
    out = np.full((count, width), pad_id, dtype=np.int32)  # (B, S)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = seq
    return out


__all__ = ["length_buckets", "pad_sources", "trim_at_eos"]
