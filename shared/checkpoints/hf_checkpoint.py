"""Hugging Face transformers model directories in and out, for every family with an HF mapping.

Reading: `config.json` plus the weights as `model.safetensors`, sharded safetensors with
`model.safetensors.index.json`, or `pytorch_model.bin` (read with `torch.load(weights_only=True)`,
through shared.checkpoints.book_import.read_state_dict, which imports torch only for that file type).
Writing: `config.json` + `model.safetensors`, or, past `max_shard_size` bytes, shards
`model-0000i-of-0000n.safetensors` with their `model.safetensors.index.json` (transformers' names
and layout; the default 5GB = 5e9 bytes, as transformers v4's save_pretrained), which
`from_pretrained` loads. Tokenizer files travel along both ways, unchanged. Tensors are renamed
(shared/families/hf_mapping.py), never cast, and re-laid out only by exact transposes (GPT-2's
Conv1D), so HF -> twinformer -> HF gives byte-equal tensors in their own dtype.

Both directions stream (shared/checkpoints/safetensors_stream.py): headers are read and every key, shape and
dtype checked first, then tensors are read, renamed and written one at a time, so peak memory is
one tensor (plus its transpose for GPT-2's Conv1D weights) whatever the model's size.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from shared.checkpoints import safetensors_stream
from shared.checkpoints.checkpoint import CheckpointError, _atomic_write, check_tensors, lazy_tensors
from shared.config.model_config import ModelConfig
from shared.families import Family, family_of, hf_family
from shared.checkpoints.safetensors_stream import LazyTensor, Tensor, load

HF_CONFIG_FILE = "config.json"
HF_WEIGHTS_FILE = "model.safetensors"
HF_INDEX_FILE = "model.safetensors.index.json"
HF_TORCH_FILE = "pytorch_model.bin"
HF_TORCH_INDEX_FILE = "pytorch_model.bin.index.json"
DEFAULT_MAX_SHARD_SIZE = "5GB"
_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
# What a tokenizer is made of in an HF directory; whichever exist are copied as they are.
TOKENIZER_FILES = (
    "tokenizer.json", "spiece.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja",  # newer transformers write the chat template beside tokenizer_config.json
)


# -- reading ---------------------------------------------------------------------------------------
def read_hf_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / HF_CONFIG_FILE
    if not Path(directory).is_dir():
        raise CheckpointError(f"Hugging Face model directory {directory} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path} not found: a Hugging Face model directory holds {HF_CONFIG_FILE}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_sharded(directory: Path, index_file: str, read_one) -> dict[str, Tensor]:
    """Every shard an index names (headers only for safetensors); every key must sit where the index says."""
    index_path = directory / index_file
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{index_path} is not a weight index (no weight_map): {error}") from error
    tensors: dict[str, Tensor] = {}
    problems: list[str] = []
    for shard in sorted(set(weight_map.values())):
        loaded = read_one(directory / shard)
        expected = {key for key, name in weight_map.items() if name == shard}
        problems += [f"{shard} lacks {key}, which {index_file} puts there" for key in sorted(expected - set(loaded))]
        problems += [f"{shard} holds {key}, which {index_file} does not list" for key in sorted(set(loaded) - expected)]
        tensors.update(loaded)
    if problems:
        raise CheckpointError(f"{directory}: the shards do not match the index:\n  - " + "\n  - ".join(problems))
    return tensors


def read_hf_lazy(directory: str | Path) -> dict[str, Tensor]:
    """The directory's weights as {HF key: tensor}: LazyTensors (unread) for safetensors, arrays for .bin files."""
    from shared.checkpoints.book_import import read_state_dict

    directory = Path(directory)
    if (directory / HF_WEIGHTS_FILE).is_file():
        return lazy_tensors(directory / HF_WEIGHTS_FILE)
    if (directory / HF_INDEX_FILE).is_file():
        return _read_sharded(directory, HF_INDEX_FILE, lazy_tensors)
    if (directory / HF_TORCH_FILE).is_file():
        return read_state_dict(directory / HF_TORCH_FILE)
    if (directory / HF_TORCH_INDEX_FILE).is_file():
        return _read_sharded(directory, HF_TORCH_INDEX_FILE, read_state_dict)
    raise CheckpointError(
        f"{directory} holds no weights: expected {HF_WEIGHTS_FILE}, {HF_INDEX_FILE} (sharded), "
        f"{HF_TORCH_FILE} or {HF_TORCH_INDEX_FILE}"
    )


def read_hf_tensors(directory: str | Path) -> dict[str, np.ndarray]:
    """The directory's weights as {HF key: numpy array}, from whichever format it holds."""
    return {key: load(tensor) for key, tensor in read_hf_lazy(directory).items()}


def tensors_from_hf(family: Family, config: ModelConfig, hf_tensors: dict[str, Tensor], source: str
                    ) -> dict[str, Tensor]:
    """{HF key: tensor} -> {our state-dict key: tensor} (arrays stay arrays, lazy stays lazy), listing every problem at once."""
    mapping = family.hf
    table = mapping.key_table(config)
    aliases, fallbacks = mapping.aliases(config), mapping.fallbacks(config)
    problems: list[str] = []
    hf_tensors = dict(hf_tensors)
    for key, copy_of in fallbacks.items():
        if key not in hf_tensors and copy_of in hf_tensors:
            hf_tensors[key] = hf_tensors[copy_of]
    for alias, canonical in aliases.items():
        if alias in hf_tensors and canonical in hf_tensors and not _same(hf_tensors[alias], hf_tensors[canonical]):
            problems.append(
                f"{alias} differs from {canonical}; this config ties them (an untied output layer with the "
                "tied model's rescale cannot be expressed)"
            )
    known = set(table.values()) | set(aliases) | set(mapping.ignored_keys)
    problems += [f"missing key {hf_key}" for hf_key in table.values() if hf_key not in hf_tensors]
    problems += [f"unexpected key {key}: not part of this config" for key in hf_tensors if key not in known]
    if problems:
        raise CheckpointError(
            f"{source} does not fit its config ({len(problems)} problem(s)):\n  - " + "\n  - ".join(problems)
        )
    transposed = mapping.transposed_keys(config)
    tensors = {ours: _relayout(hf_tensors[hf_key], hf_key in transposed) for ours, hf_key in table.items()}
    check_tensors(config, tensors, source)
    return tensors


def _relayout(tensor: Tensor, transpose: bool) -> Tensor:
    """The tensor as the other side lays it out: a 2-D transpose (exact) or unchanged."""
    if not transpose:
        return tensor
    if isinstance(tensor, LazyTensor):
        return tensor.map(lambda array: np.ascontiguousarray(array.T), shape=tensor.shape[::-1])
    return np.ascontiguousarray(tensor.T)


def _same(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return load(a).tobytes() == load(b).tobytes()


def load_hf_lazy(directory: str | Path, cast=None) -> tuple[ModelConfig, dict[str, Tensor]]:
    """Read an HF model directory's config and check its tensors: (ModelConfig, {our key: tensor, unread}).

    `cast`, if given, maps {HF key: tensor} to the same in one dtype before the checks, so a file
    that mixes dtypes (float32 norms beside bf16 weights) converts when a dtype is asked for.
    """
    hf_config = read_hf_config(directory)
    family = hf_family(str(hf_config.get("model_type")))
    config = ModelConfig(**family.hf.fields_from_hf(hf_config))
    hf_tensors = read_hf_lazy(directory)
    if cast is not None:
        hf_tensors = cast(hf_tensors)
    return config, tensors_from_hf(family, config, hf_tensors, str(directory))


def load_hf(directory: str | Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Read an HF model directory: (ModelConfig, {our state-dict key: array})."""
    config, tensors = load_hf_lazy(directory)
    return config, {key: load(tensor) for key, tensor in tensors.items()}


# -- writing ---------------------------------------------------------------------------------------
def tensors_to_hf(config: ModelConfig, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """{our state-dict key: tensor} -> {HF key: tensor} (the canonical names only, no tied copies)."""
    check_tensors(config, tensors, "the tensors to export")
    mapping = _mapping(config)
    table, transposed = mapping.key_table(config), mapping.transposed_keys(config)
    return {hf_key: _relayout(tensors[ours], hf_key in transposed) for ours, hf_key in table.items()}


def _mapping(config: ModelConfig):
    family = family_of(config)
    if family.hf is None:
        raise CheckpointError(f"the {family.name} family has no Hugging Face mapping")
    return family.hf


def parse_size(text: str | int) -> int:
    """Bytes of "500MB", "5GB", "2GiB" or a plain number of bytes (transformers' units: MB = 10**6, MiB = 2**20)."""
    if isinstance(text, int):
        size = text
    else:
        cleaned = str(text).strip().upper()
        unit = next((u for u in sorted(_SIZE_UNITS, key=len, reverse=True) if cleaned.endswith(u)), "")
        try:
            size = int(float(cleaned[: len(cleaned) - len(unit)]) * _SIZE_UNITS.get(unit, 1))
        except ValueError:
            raise ValueError(f"not a size: {text!r}; write e.g. 500MB, 5GB, 2GiB or a number of bytes") from None
    if size <= 0:
        raise ValueError(f"a shard size must be positive, got {text!r}")
    return size


def shard_plan(tensors: dict[str, Tensor], max_shard_size: int) -> list[list[str]]:
    """Keys in order, cut into shards of at most max_shard_size bytes (a larger tensor gets a shard of its own)."""
    shards: list[list[str]] = [[]]
    size = 0
    for key, tensor in tensors.items():
        if shards[-1] and size + tensor.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += tensor.nbytes
    return shards


def save_hf(directory: str | Path, config: ModelConfig, tensors: dict[str, Tensor],
            tokenizer_from: str | Path | None = None, max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE) -> Path:
    """Write an HF directory that from_pretrained loads: config.json + model.safetensors, or shards + index.

    Tensors (arrays or LazyTensors) are loaded one at a time as they are written.
    """
    mapping = _mapping(config)
    hf_config = mapping.config_to_hf(config)
    hf_tensors = {key: safetensors_stream.lazy(value) for key, value in tensors_to_hf(config, tensors).items()}
    hf_config["torch_dtype"] = str(next(iter(hf_tensors.values())).dtype)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt"}
    shards = shard_plan(hf_tensors, parse_size(max_shard_size))
    if len(shards) == 1:
        _atomic_write(directory / HF_WEIGHTS_FILE, lambda tmp: safetensors_stream.write(tmp, hf_tensors, metadata))
    else:
        weight_map = {}
        for number, keys in enumerate(shards, start=1):
            name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
            part = {key: hf_tensors[key] for key in keys}
            _atomic_write(directory / name, lambda tmp: safetensors_stream.write(tmp, part, metadata))
            weight_map.update(dict.fromkeys(keys, name))
        index = {"metadata": {"total_size": sum(t.nbytes for t in hf_tensors.values())},
                 "weight_map": dict(sorted(weight_map.items()))}
        index_text = json.dumps(index, indent=2) + "\n"
        _atomic_write(directory / HF_INDEX_FILE, lambda tmp: Path(tmp).write_text(index_text))
    text = json.dumps(hf_config, indent=2, sort_keys=True) + "\n"
    _atomic_write(directory / HF_CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
    if tokenizer_from is not None:
        copy_tokenizer(tokenizer_from, directory)
    return directory


def copy_tokenizer(source: str | Path, destination: str | Path) -> list[str]:
    """Copy whichever tokenizer files `source` holds into `destination`; their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, Path(destination) / name)
            copied.append(name)
    return copied
