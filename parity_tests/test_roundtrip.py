"""Converter round trips are bit-exact in float32, float16 and bfloat16, starting from either stack.

Weights are either a stack's own init or raw random bit patterns (NaNs with payloads, infinities,
subnormals, -0.0): a value-preserving path that is not bit-preserving shows up on the latter.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import torch
from flax.traverse_util import flatten_dict, unflatten_dict
from hypothesis import given
from hypothesis import strategies as st

import jax_impl
import torch_impl
from parity_tests import strategies as pst
from parity_tests.helpers import ParityEnv
from shared.checkpoints.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from shared.config.model_config import ModelConfig
from shared.checkpoints.weight_table import param_specs

NUMPY_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
UINT_OF_SIZE = {2: np.uint16, 4: np.uint32}


def raw_bits(shape: tuple[int, ...], dtype: np.dtype, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random bit patterns of `dtype`: every class of float value, NaN payloads included."""
    uint = UINT_OF_SIZE[dtype.itemsize]
    return rng.integers(0, np.iinfo(uint).max, size=shape, dtype=uint, endpoint=True).view(dtype)


def assert_bit_equal(expected: dict[str, np.ndarray], found: dict[str, np.ndarray], what: str) -> None:
    assert set(expected) == set(found), f"{what}: keys differ: {sorted(set(expected) ^ set(found))}"
    problems = []
    for key, a in expected.items():
        b = np.asarray(found[key])
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(f"{key}: {a.dtype}{a.shape} became {b.dtype}{b.shape}")
        elif not np.array_equal(a.view(UINT_OF_SIZE[a.itemsize]), b.view(UINT_OF_SIZE[b.itemsize])):
            problems.append(f"{key}: bits differ")
    assert not problems, f"{what}:\n  " + "\n  ".join(problems)


def assert_same_files(first: Path, second: Path) -> None:
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        assert (first / name).read_bytes() == (second / name).read_bytes(), f"{name} bytes differ after the round trip"


@given(config=pst.model_configs(), dtype=pst.WEIGHT_DTYPES, seed=st.integers(0, 2**31 - 1), values=st.sampled_from(("init", "raw bits")))
def test_torch_to_jax_to_torch_is_bit_exact(parity_env: ParityEnv, config: ModelConfig, dtype: str, seed: int, values: str) -> None:
    """torch_impl.save -> jax_impl.load -> jax_impl.save -> torch_impl.load: identical bits and bytes."""
    if values == "init":
        torch.manual_seed(seed)
        model = torch_impl.Transformer(config).to(getattr(torch, dtype))
    else:
        rng = np.random.default_rng(seed)
        tensors = {spec.torch_key: raw_bits(spec.torch_shape, NUMPY_DTYPES[dtype], rng) for spec in param_specs(config)}
        model = torch_impl.from_numpy(config, tensors)
    original = torch_impl.state_dict_numpy(model)
    with tempfile.TemporaryDirectory() as tmp:
        first, second = Path(tmp, "from_torch"), Path(tmp, "from_jax")
        torch_impl.save(model, first)
        jax_model, params = jax_impl.load(first)
        assert jax_model.config == config
        params = jax.device_put(params, parity_env.jax_device)
        assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {NUMPY_DTYPES[dtype]}
        jax_impl.save(jax_model.config, params, second)
        assert_same_files(first, second)
        reloaded = torch_impl.load(second, device=parity_env.torch_device)
        assert_bit_equal(original, torch_impl.state_dict_numpy(reloaded), "torch -> jax -> torch")


@given(config=pst.model_configs(), dtype=pst.WEIGHT_DTYPES, seed=st.integers(0, 2**31 - 1), values=st.sampled_from(("normal", "raw bits")))
def test_jax_to_torch_to_jax_is_bit_exact(parity_env: ParityEnv, config: ModelConfig, dtype: str, seed: int, values: str) -> None:
    """jax_impl.save -> torch_impl.load -> torch_impl.save -> jax_impl.load: identical bits and bytes.

    The params tree is the one jax_impl.init_params builds (its structure through jax.eval_shape,
    which compiles nothing; test_forward converts real init_params values), filled with values.
    """
    rng = np.random.default_rng(seed)
    structure = flatten_dict(jax.eval_shape(partial(jax_impl.init_params, config), jax.random.key(0)))
    np_dtype = NUMPY_DTYPES[dtype]
    fill = (lambda shape: raw_bits(shape, np_dtype, rng)) if values == "raw bits" else (
        lambda shape: rng.standard_normal(shape).astype(np_dtype)
    )
    original = {path: fill(leaf.shape) for path, leaf in structure.items()}
    params = jax.device_put(unflatten_dict(original), parity_env.jax_device)
    with tempfile.TemporaryDirectory() as tmp:
        first, second = Path(tmp, "from_jax"), Path(tmp, "from_torch")
        jax_impl.save(config, params, first)
        model = torch_impl.load(first, device=parity_env.torch_device)
        assert {p.dtype for p in model.parameters()} == {getattr(torch, dtype)}
        torch_impl.save(model, second)
        assert_same_files(first, second)
        jax_model, reloaded = jax_impl.load(second)
        assert jax_model.config == config
        flat = {path: np.asarray(leaf) for path, leaf in flatten_dict(reloaded).items()}
        assert_bit_equal({"/".join(p): v for p, v in original.items()}, {"/".join(p): v for p, v in flat.items()}, "jax -> torch -> jax")


def test_saving_twice_gives_identical_bytes(tmp_path: Path) -> None:
    """A checkpoint's files are a pure function of config and tensors (reproducible artifacts).

    safetensors writes its metadata map in Rust HashMap order, which changes from call to call:
    with two or more metadata entries the header bytes would differ between saves.
    """
    config = ModelConfig.from_preset("tiny", num_encoder_layers=0, num_decoder_layers=1)
    torch.manual_seed(0)
    model = torch_impl.Transformer(config)
    saved = {torch_impl.save(model, tmp_path / str(i)) and (tmp_path / str(i) / WEIGHTS_FILE).read_bytes() for i in range(16)}
    assert len(saved) == 1, f"16 saves of one model gave {len(saved)} different model.safetensors files"


def test_torch_model_from_jax_params_owns_its_memory(parity_env: ParityEnv) -> None:
    """An in-place torch update (an optimizer step) must not write into the jax arrays it came from.

    np.asarray(jax_array) is a read-only view of the jax buffer; a torch tensor made from it by
    torch.from_numpy shares that memory, so jax's immutable params would change under it.
    """
    config = ModelConfig.from_preset("tiny", num_encoder_layers=0, num_decoder_layers=0)
    structure = jax.eval_shape(partial(jax_impl.init_params, config), jax.random.key(0))
    params = jax.device_put(jax.tree_util.tree_map(lambda leaf: np.ones(leaf.shape, leaf.dtype), structure), parity_env.jax_device)
    before = {path: np.array(leaf) for path, leaf in flatten_dict(params).items()}
    model = torch_impl.from_numpy(config, jax_impl.state_dict_from_params(config, params))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    changed = ["/".join(path) for path, leaf in flatten_dict(params).items() if not np.array_equal(before[path], np.asarray(leaf))]
    assert not changed, f"torch in-place updates changed the jax params {changed}"
