"""Is this the base an adapter was trained on? The recorded base hash, checked wherever an adapter is applied.

A LoRA fine-tuning checkpoint records in trainer_state.json the sha256 `fingerprint` of its base's
tensors ({"finetune": {"base_checkpoint": ..., "base_sha256": ...}}). An adapter applied to another
base of the same shape would run without a word and compute nonsense, so every place that applies
one (translate, summarize, evaluate, generate, export, merge, the stacks' `load_adapter`) calls
`check_adapter_base`: a different hash is refused in one line naming both hashes and `--force`
(`force=True` in Python), which applies it anyway. Adapters that record no hash (PEFT's
save_pretrained, the book's ch5 adapter, an `export`ed one) are accepted unchecked: there is
nothing to compare with.

Hashing a multi-GB base on every load would cost seconds, so a checkpoint's fingerprint is cached in
`$TWINFORMER_CACHE/fingerprints/` (default ~/.cache/twinformer/fingerprints), one small JSON file per
checkpoint directory, keyed by its resolved path and valid while the weights file's size and
mtime_ns are unchanged (any rewrite, even in place, changes mtime_ns). The checkpoint itself is never
written to (it may be read-only, and its files are compared byte for byte elsewhere). Hashing streams
one tensor at a time, so its memory is one tensor. An unwritable cache only costs the re-hash.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shared.checkpoints.checkpoint import WEIGHTS_FILE, CheckpointError, lazy_tensors
from shared.checkpoints.paths import TRAINER_STATE_FILE
from shared.checkpoints.safetensors_stream import load as load_tensor
from shared.data.data_dirs import cache_root

FINETUNE_STATE_KEY = "finetune"  # the trainer_state.json entry naming the mode and the base checkpoint
FORCE_HINT = "or --force (force=True in Python) to apply it anyway"


class AdapterBaseMismatch(CheckpointError):
    """An adapter applied to a base whose weights differ from the one it was trained on."""


def fingerprint(tensors) -> str:
    """sha256 over every tensor's key, dtype, shape and bytes (sorted by key): which base this is.

    `tensors`: {key: array or LazyTensor}; lazy ones are read one at a time."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = np.ascontiguousarray(load_tensor(tensors[key]))
        digest.update(f"{key}|{value.dtype.name}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _cache_file(directory: Path) -> Path:
    return cache_root() / "fingerprints" / (hashlib.sha256(str(directory).encode()).hexdigest()[:32] + ".json")


def checkpoint_fingerprint(directory: str | Path) -> str:
    """The fingerprint of a checkpoint directory's weights, from the cache while size and mtime match."""
    directory = Path(directory).resolve()
    weights = directory / WEIGHTS_FILE
    stat = weights.stat()
    stamp = {"checkpoint": str(directory), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    cache = _cache_file(directory)
    try:
        cached = json.loads(cache.read_text())
        if {k: cached.get(k) for k in stamp} == stamp and isinstance(cached.get("sha256"), str):
            return cached["sha256"]
    except (OSError, ValueError):
        pass  # no cache yet, or a broken one: hash again
    found = fingerprint(lazy_tensors(weights))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_suffix(f".tmp{id(found)}")
        temporary.write_text(json.dumps({**stamp, "sha256": found}) + "\n")
        temporary.replace(cache)
    except OSError:
        pass  # a read-only cache only costs the re-hash next time
    return found


def recorded_base(adapter_dir: str | Path) -> tuple[str, str] | None:
    """(base checkpoint as recorded, its sha256) of a LoRA checkpoint; None when none is recorded."""
    state_file = Path(adapter_dir) / TRAINER_STATE_FILE
    if not state_file.is_file():
        return None
    try:
        entry = json.loads(state_file.read_text()).get(FINETUNE_STATE_KEY) or {}
    except (ValueError, AttributeError) as error:
        raise CheckpointError(f"{state_file} is not a valid trainer state: {error}") from error
    sha = entry.get("base_sha256")
    return (str(entry.get("base_checkpoint")), sha) if isinstance(sha, str) else None


def check_adapter_base(adapter_dir: str | Path, base_sha256: Callable[[], str], base_name: str, force: bool = False) -> None:
    """Refuse (AdapterBaseMismatch) unless the base's fingerprint is the one the adapter recorded.

    `base_sha256` is called only when the adapter records a hash (none: nothing to check). With
    `force` a mismatch is a one-line warning on stderr instead."""
    recorded = recorded_base(adapter_dir)
    if recorded is None:
        return
    trained_on, expected = recorded
    found = base_sha256()
    if found == expected:
        return
    message = (f"adapter {adapter_dir} was trained on base sha256 {expected[:16]} ({trained_on}), but {base_name} "
               f"has sha256 {found[:16]}: give the base it was trained on ({FORCE_HINT})")  # fmt: skip
    if not force:
        raise AdapterBaseMismatch(message)
    print(f"warning (--force): {message.split(': give ')[0]}", file=sys.stderr)


def check_adapter_on_checkpoint(adapter_dir: str | Path, base_dir: str | Path, force: bool = False) -> None:
    """check_adapter_base against a checkpoint directory (its cached fingerprint)."""
    check_adapter_base(adapter_dir, lambda: checkpoint_fingerprint(base_dir), f"base {base_dir}", force)


def check_adapter_on_tensors(adapter_dir: str | Path, tensors: Callable[[], dict], force: bool = False) -> None:
    """check_adapter_base against weights in memory (`tensors()`: {checkpoint key: array}, hashed as they are)."""
    check_adapter_base(adapter_dir, lambda: fingerprint(tensors()), "the model's weights", force)


__all__ = [
    "AdapterBaseMismatch", "FINETUNE_STATE_KEY", "check_adapter_base", "check_adapter_on_checkpoint",
    "check_adapter_on_tensors", "checkpoint_fingerprint", "fingerprint", "recorded_base",
]  # fmt: skip
