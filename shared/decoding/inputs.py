"""What the generation loops accept: encoder-decoder sources and decoder-only prompts, each checked
with every problem listed at once (shared/decoding/generation.py has the contract)."""

from __future__ import annotations

import numpy as np

from shared.config.model_config import ModelConfig


def check_source_ids(src_ids: np.ndarray, model: ModelConfig) -> np.ndarray:
    """src_ids as a (B, S) int array, or ValueError listing every problem."""
    array = np.asarray(src_ids)
    problems = []
    if array.ndim != 2:
        problems.append(f"src_ids must be 2-D (B, S), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        problems.append(f"src_ids must hold integers, got dtype {array.dtype}")
    elif array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= model.src_vocab_size:
            problems.append(
                f"src_ids must lie in [0, {model.src_vocab_size}), found values in [{low}, {high}]"
            )
    if array.ndim == 2 and array.shape[1] > model.max_len:
        problems.append(f"source length {array.shape[1]} exceeds max_len {model.max_len}")
    if array.ndim == 2 and array.shape[1] == 0:
        problems.append("source length is 0: every row needs at least one position")
    if problems:
        raise ValueError("bad src_ids:\n  - " + "\n  - ".join(problems))
    return array


def padding_rows(src_ids: np.ndarray, pad_id: int) -> np.ndarray:
    """(B,) True for rows that are all PAD: batch filler, finished before the first step."""
    return np.all(np.asarray(src_ids) == pad_id, axis=1)


def check_prompts(ids: np.ndarray, mask: np.ndarray, vocab_size: int, max_len: int, max_new_tokens: int) -> None:
    """Refuse prompts the model cannot continue, listing every problem."""
    problems = []
    if ids.ndim != 2 or mask.shape != ids.shape:
        problems.append(f"prompts must be (B, T) ids with a mask of the same shape, got {ids.shape} and {mask.shape}")
    else:
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            problems.append(f"token ids must be in [0, {vocab_size}), got [{ids.min()}, {ids.max()}]")
        if (mask.sum(axis=1) == 0).any():
            problems.append("every prompt needs at least one token (a row is all padding)")
        if np.any(np.diff(mask.astype(np.int64), axis=1) < 0):
            problems.append("prompts must be left-padded: a 0 in the attention mask after a 1")
        if ids.shape[1] + max_new_tokens > max_len:
            problems.append(f"prompt length {ids.shape[1]} + max_new_tokens {max_new_tokens} exceeds max_len {max_len}")
    if problems:
        raise ValueError("cannot generate from these prompts:\n  - " + "\n  - ".join(problems))


__all__ = ["check_prompts", "check_source_ids", "padding_rows"]
