"""safetensors files read and written one tensor at a time, so a conversion holds one tensor, not a model.

The format (https://github.com/huggingface/safetensors): 8 bytes little-endian header length N,
N bytes of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}},
then the raw little-endian tensor bytes, contiguous. The header alone gives every name, shape and
dtype, so a whole checkpoint is checked (keys, shapes, one dtype) before any tensor is read.

Reading uses plain file reads into a fresh numpy array (no mmap: mapped pages of a multi-GB shard
would count in the process's resident memory until it is closed), so a `LazyTensor` costs nothing
until loaded and its array is owned and writeable (torch can share it, no copy). Writing computes
the header from the tensors' shapes and dtypes, then writes each tensor's bytes as it is loaded.
`safetensors.numpy.load_file` and `safe_open` read what this writes, and this reads theirs.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import ml_dtypes
import numpy as np

# safetensors dtype names <-> numpy dtypes (bfloat16 and float8 through ml_dtypes)
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U64": np.dtype(np.uint64), "U32": np.dtype(np.uint32),
    "U16": np.dtype(np.uint16), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header


class SafetensorsFormatError(ValueError):
    """A file that is not a readable safetensors file (truncated, corrupt, or another format)."""


@dataclass(frozen=True)
class LazyTensor:
    """A tensor known by shape and dtype; `load()` reads (or computes) its array, each time anew."""

    shape: tuple[int, ...]
    dtype: np.dtype
    load: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def map(self, fn: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...] | None = None,
            dtype: np.dtype | None = None) -> "LazyTensor":
        """A lazy fn(array): a transpose (give the new shape) or a cast (the new dtype)."""
        return LazyTensor(self.shape if shape is None else tuple(shape), self.dtype if dtype is None else np.dtype(dtype),
                          lambda: fn(self.load()))


Tensor = Union[np.ndarray, LazyTensor]


def lazy(array: Tensor) -> LazyTensor:
    """An array (or a lazy tensor) as a LazyTensor."""
    if isinstance(array, LazyTensor):
        return array
    return LazyTensor(tuple(array.shape), np.dtype(array.dtype), lambda: array)


def load(tensor: Tensor) -> np.ndarray:
    return tensor.load() if isinstance(tensor, LazyTensor) else tensor


# -- reading -----------------------------------------------------------------------------------------
def read_header(path: str | Path) -> tuple[dict[str, tuple[np.dtype, tuple[int, ...], int, int]], dict[str, str]]:
    """({name: (dtype, shape, begin, end)} with absolute file offsets, metadata), checked against the file size."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise SafetensorsFormatError(f"{path}: {size} bytes, shorter than a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > min(_MAX_HEADER, size - 8):
            raise SafetensorsFormatError(f"{path}: header length {length} does not fit a {size}-byte file")
        try:
            header = json.loads(file.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SafetensorsFormatError(f"{path}: the header is not JSON: {error}") from error
    if not isinstance(header, dict):
        raise SafetensorsFormatError(f"{path}: the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    start, entries = 8 + length, {}
    for name, entry in header.items():
        try:
            dtype, shape, (begin, end) = DTYPES[entry["dtype"]], tuple(int(n) for n in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as error:
            raise SafetensorsFormatError(f"{path}: bad header entry for {name}: {entry!r}") from error
        if end - begin != math.prod(shape) * dtype.itemsize or begin < 0 or start + end > size:
            raise SafetensorsFormatError(
                f"{path}: {name} ({entry['dtype']} {list(shape)}) at bytes {begin}-{end} does not fit the file "
                f"({size - start} data bytes; truncated?)")
        entries[name] = (dtype, shape, start + begin, start + end)
    return entries, metadata


def _reader(path: Path, dtype: np.dtype, shape: tuple[int, ...], begin: int, end: int) -> Callable[[], np.ndarray]:
    def read() -> np.ndarray:
        array = np.empty(shape, dtype=dtype)
        with open(path, "rb") as file:
            file.seek(begin)
            if file.readinto(memoryview(array.reshape(-1).view(np.uint8))) != end - begin:
                raise SafetensorsFormatError(f"{path}: truncated while reading a tensor at byte {begin}")
        return array

    return read


def lazy_tensors(path: str | Path) -> dict[str, LazyTensor]:
    """{name: LazyTensor} of a safetensors file; nothing is read but the header."""
    path = Path(path)
    return {name: LazyTensor(shape, dtype, _reader(path, dtype, shape, begin, end))
            for name, (dtype, shape, begin, end) in read_header(path)[0].items()}


# -- writing -----------------------------------------------------------------------------------------
def write(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> int:
    """Write `tensors` (arrays or lazy) to `path`, loading one at a time; the number of data bytes."""
    tensors = {name: lazy(tensor) for name, tensor in tensors.items()}
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, tensor in tensors.items():
        if tensor.dtype not in _NAMES:
            raise TypeError(f"{name}: dtype {tensor.dtype} has no safetensors name")
        header[name] = {"dtype": _NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + tensor.nbytes]}
        offset += tensor.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(text)) + text)
        for name, tensor in tensors.items():
            array = np.ascontiguousarray(tensor.load())
            if tuple(array.shape) != tensor.shape or array.dtype != tensor.dtype:
                raise ValueError(f"{name}: loaded {array.dtype} {array.shape}, declared {tensor.dtype} {tensor.shape}")
            file.write(memoryview(array.reshape(-1).view(np.uint8)))
            del array  # one tensor at a time
    return offset
