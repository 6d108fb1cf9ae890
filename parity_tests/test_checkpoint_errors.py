"""Bad checkpoints fail the same way in both loaders: one error that lists every problem by key."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import save_file

import jax_impl
import torch_impl
from parity_tests import strategies as pst
from shared.checkpoints.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, save_checkpoint
from shared.config.model_config import ConfigError, ModelConfig
from shared.checkpoints.weight_table import param_specs

LOADERS = {"torch": torch_impl.load, "jax": jax_impl.load}
TINY = ModelConfig.from_preset("tiny", num_encoder_layers=1, num_decoder_layers=1)


def zero_tensors(config: ModelConfig, dtype=np.float32) -> dict[str, np.ndarray]:
    """A complete, well-shaped state dict (values do not matter to these checks)."""
    return {spec.torch_key: np.zeros(spec.torch_shape, dtype) for spec in param_specs(config)}


def write_checkpoint(directory: Path, config: ModelConfig, tensors: dict[str, np.ndarray]) -> Path:
    """Write config.json and model.safetensors without save_checkpoint's own check (to plant faults)."""
    directory.mkdir(parents=True, exist_ok=True)
    config.save(directory / CONFIG_FILE)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, directory / WEIGHTS_FILE)
    return directory


def load_error(loader: str, directory: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        LOADERS[loader](directory)
    return str(info.value)


def problem_count(message: str) -> int:
    match = re.search(r"\((\d+) problem\(s\)\)", message)
    assert match, f"the error does not say how many problems it found:\n{message}"
    return int(match.group(1))


# -- tensors that do not fit the config ------------------------------------------------------------
@pytest.mark.parametrize("loader", LOADERS)
@given(saved=pst.model_configs(), claimed=pst.model_configs())
def test_config_that_does_not_fit_the_weights_lists_every_problem(loader: str, saved: ModelConfig, claimed: ModelConfig) -> None:
    """Weights of one config under another's config.json: one error, every key, expected vs found."""
    tensors = zero_tensors(saved)
    expected = {spec.torch_key: spec.torch_shape for spec in param_specs(claimed)}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(tensors) if tensors[k].shape != expected[k])
    with tempfile.TemporaryDirectory() as tmp:
        directory = write_checkpoint(Path(tmp), claimed, tensors)
        if not (missing or unexpected or reshaped):
            LOADERS[loader](directory)  # the weights fit: nothing to report
            return
        message = load_error(loader, directory)
    for key in missing:
        assert f"missing key {key}: expected shape {expected[key]}" in message
    for key in unexpected:
        assert f"unexpected key {key}: shape {tensors[key].shape}" in message
    for key in reshaped:
        assert f"shape mismatch for {key}: expected {expected[key]}, found {tensors[key].shape}" in message
    assert problem_count(message) == len(missing) + len(unexpected) + len(reshaped)
    assert str(directory / WEIGHTS_FILE) in message


@pytest.mark.parametrize("loader", LOADERS)
def test_d_model_mismatch_reports_every_tensor(loader: str, tmp_path: Path) -> None:
    torch_impl.save(torch_impl.Transformer(TINY), tmp_path)
    TINY.replace(d_model=TINY.d_model + TINY.num_heads).save(tmp_path / CONFIG_FILE)
    message = load_error(loader, tmp_path)
    # every tensor has a D axis except the FFN biases fc1.bias (F,) and the output bias (V,)
    spared = {s.torch_key for s in param_specs(TINY) if s.torch_key.endswith(("fc1.bias", "output_proj.bias"))}
    for spec in param_specs(TINY):
        if spec.torch_key not in spared:
            assert f"shape mismatch for {spec.torch_key}: expected " in message
    assert problem_count(message) == len(param_specs(TINY)) - len(spared)


FAULTS = ("missing", "unexpected", "shape", "dtype")
DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


@pytest.mark.parametrize("loader", LOADERS)
@given(
    faults=st.lists(st.sampled_from(FAULTS), min_size=1, max_size=4, unique=True),
    dtypes=st.permutations(sorted(DTYPES)),
    data=st.data(),
)
def test_planted_faults_are_all_reported_at_once(loader: str, faults: list[str], dtypes: list[str], data: st.DataObject) -> None:
    """Missing, unexpected, wrongly shaped and odd-dtype tensors: each named by key, nothing else.

    The checkpoint's dtype is dtypes[0]; the odd tensor has dtypes[1] (which the safetensors file
    may store first: the writer orders tensors by dtype size, then name).
    """
    dtype, odd_dtype = DTYPES[dtypes[0]], DTYPES[dtypes[1]]
    tensors = zero_tensors(TINY, dtype)
    keys = data.draw(st.permutations(sorted(tensors)))[: len(faults)]  # a different tensor per fault
    wanted = []
    for fault, key in zip(faults, keys):
        if fault == "missing":
            del tensors[key]
            wanted.append(f"missing key {key}")
        elif fault == "unexpected":
            tensors[f"{key}_extra"] = np.zeros(3, dtype)
            wanted.append(f"unexpected key {key}_extra")
        elif fault == "shape":
            tensors[key] = np.zeros(tensors[key].shape[:-1] + (tensors[key].shape[-1] + 1,), dtype)
            wanted.append(f"shape mismatch for {key}")
        else:
            tensors[key] = tensors[key].astype(odd_dtype)
            wanted.append(f"dtype mismatch for {key}: expected {dtype}")
    with tempfile.TemporaryDirectory() as tmp:
        message = load_error(loader, write_checkpoint(Path(tmp), TINY, tensors))
    for text in wanted:
        assert text in message
    assert problem_count(message) == len(wanted), f"{len(wanted)} faults planted, but:\n{message}"


def test_saving_a_model_that_does_not_fit_its_config_fails_before_writing(tmp_path: Path) -> None:
    tensors = zero_tensors(TINY)
    del tensors["output_proj.weight"]
    with pytest.raises(CheckpointError, match="missing key output_proj.weight"):
        save_checkpoint(tmp_path / "out", TINY, tensors)
    assert not (tmp_path / "out").exists()


# -- unreadable files --------------------------------------------------------------------------------
@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("fault", ["truncated data", "truncated header", "empty", "garbage header", "header size too big"])
def test_corrupt_weights_file_is_named(loader: str, fault: str, tmp_path: Path) -> None:
    write_checkpoint(tmp_path, TINY, zero_tensors(TINY))
    path = tmp_path / WEIGHTS_FILE
    raw = path.read_bytes()
    header_size = int.from_bytes(raw[:8], "little")
    corrupted = {
        "truncated data": raw[: len(raw) - 7],
        "truncated header": raw[: 8 + header_size // 2],
        "empty": b"",
        "garbage header": raw[:8] + b"\xff" * header_size + raw[8 + header_size :],
        "header size too big": (len(raw) * 2).to_bytes(8, "little") + raw[8:],
    }[fault]
    path.write_bytes(corrupted)
    message = load_error(loader, tmp_path)
    assert str(path) in message and "safetensors" in message


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("absent", [CONFIG_FILE, WEIGHTS_FILE, "the directory"])
def test_missing_files_are_named(loader: str, absent: str, tmp_path: Path) -> None:
    directory = write_checkpoint(tmp_path / "ckpt", TINY, zero_tensors(TINY))
    if absent == "the directory":
        directory = tmp_path / "nowhere"
    else:
        (directory / absent).unlink()
    message = load_error(loader, directory)
    assert (str(directory) if absent == "the directory" else absent) in message


# -- invalid config.json -----------------------------------------------------------------------------
INVALID_CONFIGS = {
    "unknown field": ({"n_layers": 3}, "unknown ModelConfig field(s): n_layers"),
    "d_model not divisible by heads": ({"d_model": 30, "num_heads": 4}, "d_model (30) must be divisible by num_heads (4)"),
    "unknown activation": ({"activation": "swish"}, "unknown activation 'swish'"),
}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("case", INVALID_CONFIGS)
def test_invalid_config_json_is_a_clear_error(loader: str, case: str, tmp_path: Path) -> None:
    """The ConfigError's message, prefixed with the file, surfaces from both loaders.

    The loaders raise CheckpointError (shared.checkpoints.checkpoint.read_config re-wraps the ConfigError,
    which stays attached as __cause__).
    """
    overrides, expected = INVALID_CONFIGS[case]
    write_checkpoint(tmp_path, TINY, zero_tensors(TINY))
    (tmp_path / CONFIG_FILE).write_text(json.dumps(TINY.to_dict() | overrides))
    with pytest.raises(ConfigError, match=re.escape(expected)):
        ModelConfig.load(tmp_path / CONFIG_FILE)
    with pytest.raises((CheckpointError, ConfigError)) as info:
        LOADERS[loader](tmp_path)
    message = str(info.value)
    assert expected in message and str(tmp_path / CONFIG_FILE) in message
    assert isinstance(info.value, ConfigError) or isinstance(info.value.__cause__, ConfigError)
