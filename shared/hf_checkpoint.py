"""Hugging Face transformers model directories in and out, for every family with an HF mapping.

Reading: `config.json` plus the weights as `model.safetensors`, sharded safetensors with
`model.safetensors.index.json`, or `pytorch_model.bin` (read with `torch.load(weights_only=True)`,
through shared.book_import.read_state_dict, which imports torch only for that file type).
Writing: `config.json` + `model.safetensors`, which `from_pretrained` loads. Tokenizer files travel
along both ways, unchanged. Tensors are renamed (shared/families/hf_mapping.py), never cast, and re-laid out only by
exact transposes (GPT-2's Conv1D), so HF -> twinformer -> HF gives byte-equal tensors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from shared.checkpoint import CheckpointError, _atomic_write, check_tensors, read_tensors
from shared.config import ModelConfig
from shared.families import Family, family_of, hf_family

HF_CONFIG_FILE = "config.json"
HF_WEIGHTS_FILE = "model.safetensors"
HF_INDEX_FILE = "model.safetensors.index.json"
HF_TORCH_FILE = "pytorch_model.bin"
HF_TORCH_INDEX_FILE = "pytorch_model.bin.index.json"
# What a tokenizer is made of in an HF directory; whichever exist are copied as they are.
TOKENIZER_FILES = (
    "tokenizer.json", "spiece.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
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


def _read_sharded(directory: Path, index_file: str, read_one) -> dict[str, np.ndarray]:
    """Read every shard an index names; every key must sit in the shard the index says."""
    index_path = directory / index_file
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{index_path} is not a weight index (no weight_map): {error}") from error
    tensors: dict[str, np.ndarray] = {}
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


def read_hf_tensors(directory: str | Path) -> dict[str, np.ndarray]:
    """The directory's weights as {HF key: numpy array}, from whichever format it holds."""
    from shared.book_import import read_state_dict

    directory = Path(directory)
    if (directory / HF_WEIGHTS_FILE).is_file():
        return read_tensors(directory / HF_WEIGHTS_FILE)
    if (directory / HF_INDEX_FILE).is_file():
        return _read_sharded(directory, HF_INDEX_FILE, read_tensors)
    if (directory / HF_TORCH_FILE).is_file():
        return read_state_dict(directory / HF_TORCH_FILE)
    if (directory / HF_TORCH_INDEX_FILE).is_file():
        return _read_sharded(directory, HF_TORCH_INDEX_FILE, read_state_dict)
    raise CheckpointError(
        f"{directory} holds no weights: expected {HF_WEIGHTS_FILE}, {HF_INDEX_FILE} (sharded), "
        f"{HF_TORCH_FILE} or {HF_TORCH_INDEX_FILE}"
    )


def tensors_from_hf(family: Family, config: ModelConfig, hf_tensors: dict[str, np.ndarray], source: str
                    ) -> dict[str, np.ndarray]:
    """{HF key: array} -> {our state-dict key: array}, listing every problem at once."""
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


def _relayout(array: np.ndarray, transpose: bool) -> np.ndarray:
    """The tensor as the other side lays it out: a 2-D transpose (exact) or unchanged."""
    return np.ascontiguousarray(array.T) if transpose else array


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def load_hf(directory: str | Path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Read an HF model directory: (ModelConfig, {our state-dict key: array})."""
    hf_config = read_hf_config(directory)
    family = hf_family(str(hf_config.get("model_type")))
    config = ModelConfig(**family.hf.fields_from_hf(hf_config))
    return config, tensors_from_hf(family, config, read_hf_tensors(directory), str(directory))


# -- writing ---------------------------------------------------------------------------------------
def tensors_to_hf(config: ModelConfig, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{our state-dict key: array} -> {HF key: array} (the canonical names only, no tied copies)."""
    check_tensors(config, tensors, "the tensors to export")
    mapping = _mapping(config)
    table, transposed = mapping.key_table(config), mapping.transposed_keys(config)
    return {hf_key: _relayout(tensors[ours], hf_key in transposed) for ours, hf_key in table.items()}


def _mapping(config: ModelConfig):
    family = family_of(config)
    if family.hf is None:
        raise CheckpointError(f"the {family.name} family has no Hugging Face mapping")
    return family.hf


def save_hf(directory: str | Path, config: ModelConfig, tensors: dict[str, np.ndarray],
            tokenizer_from: str | Path | None = None) -> Path:
    """Write an HF directory (config.json + model.safetensors) that from_pretrained loads."""
    mapping = _mapping(config)
    hf_config = mapping.config_to_hf(config)
    hf_tensors = {key: np.ascontiguousarray(value) for key, value in tensors_to_hf(config, tensors).items()}
    hf_config["torch_dtype"] = str(next(iter(hf_tensors.values())).dtype)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_write(directory / HF_WEIGHTS_FILE, lambda tmp: save_file(hf_tensors, tmp, metadata={"format": "pt"}))
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
