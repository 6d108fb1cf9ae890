"""LoRA for jax_impl: adapters are their own pytree, added to the unchanged Flax model at call time.

    adapters = {"lora": {<flax module path>: {"lora_A": {"kernel": (in, r)},
                                              "lora_B": {"kernel": (r, out)}}},
                "modules_to_save": {<flax module path>: <that module's params>}}

Kernels use the Flax layout (in, out) as every Dense does: lora_A.kernel is PEFT's lora_A.weight
transposed (docs/PARITY_PITFALLS.md item 9: the names A and B keep PEFT's meaning). Only the
adapters are differentiated and updated; base params are an ordinary, non-differentiated argument.

The model code knows nothing of LoRA: `lora_apply` runs `model.apply` under
`flax.linen.intercept_methods`, and the interceptor adds the low-rank branch to the output of each
targeted `nn.Dense`, in PEFT's order:  y = dense(x) + ((dropout(x) @ A) @ B) * scaling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from jax_impl.convert import state_dict_from_params
from shared.checkpoints.adapter_io import (
    AdapterError,
    check_adapter_tensors,
    load_adapter as read_adapter,
    lora_key,
    save_adapter as write_adapter,
    saved_key,
)
from jax_impl.layers import linear
from shared.config.model_config import ModelConfig
from shared.checkpoints.lora_config import LoRAConfig, format_parameter_report, resolve_targets, saved_param_specs
from shared.checkpoints.weight_table import TRANSPOSE, torch_module_to_flax_path

Path_ = tuple[str, ...]


def _targets(config: ModelConfig, lora: LoRAConfig) -> list[tuple[Path_, int, int]]:
    """(flax module path, in_features, out_features) of every adapted Dense."""
    return [(torch_module_to_flax_path(t.module), t.in_features, t.out_features) for t in resolve_targets(config, lora)]


def init_adapters(
    config: ModelConfig, lora: LoRAConfig, base_params: dict, rng: jax.Array, dtype=None
) -> dict:
    """Fresh adapters as PEFT makes them: A ~ U(-1/sqrt(in), 1/sqrt(in)), B = 0, saved modules copied.

    The bound is nn.Linear's kaiming_uniform_(a=sqrt(5)): gain sqrt(2/(1+5)) * sqrt(3/fan_in).
    Float32 by default, as PEFT keeps adapters in float32 on a bf16 base (autocast_adapter_dtype);
    float64 on a float64 base, as PEFT does (the parity tests' float64 reference runs), drawn in
    float32 and converted exactly, so a float64 run starts from the very adapter a float32 run does.
    """
    if dtype is None:
        base_dtypes = {jnp.dtype(leaf.dtype) for leaf in jax.tree_util.tree_leaves(base_params)}
        dtype = jnp.float64 if base_dtypes == {jnp.dtype(jnp.float64)} else jnp.float32
    targets = _targets(config, lora)
    flat: dict[Path_, jax.Array] = {}
    for key, (path, n_in, n_out) in zip(jax.random.split(rng, len(targets)), targets):
        bound = 1.0 / np.sqrt(n_in)
        flat[(*path, "lora_A", "kernel")] = jax.random.uniform(key, (n_in, lora.r), jnp.float32, -bound, bound).astype(dtype)
        flat[(*path, "lora_B", "kernel")] = jnp.zeros((lora.r, n_out), dtype)
    base_flat = flatten_dict(dict(base_params))
    saved = {spec.flax_path: base_flat[spec.flax_path] for spec in saved_param_specs(config, lora)}
    return {"lora": unflatten_dict(flat), "modules_to_save": unflatten_dict(saved)}


def params_with_saved(base_params: dict, adapters: dict) -> dict:
    """Base params with each modules_to_save subtree replaced by the adapter's trained copy."""
    flat = flatten_dict(dict(base_params))
    flat.update(flatten_dict(dict(adapters.get("modules_to_save", {}))))
    return unflatten_dict(flat)


def _lora_pairs(adapters: dict) -> dict[Path_, tuple[jax.Array, jax.Array]]:
    """{flax module path: (A kernel (in, r), B kernel (r, out))}."""
    flat = flatten_dict(dict(adapters["lora"]))
    return {path[:-2]: (flat[path], flat[(*path[:-2], "lora_B", "kernel")]) for path in flat if path[-2] == "lora_A"}


def _dropout(x: jax.Array, rng: jax.Array, rate: float) -> jax.Array:
    """Inverted dropout, as torch.nn.Dropout: keep with probability 1 - rate, scale by 1 / (1 - rate)."""
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def lora_apply(
    model: nn.Module,
    base_params: dict,
    adapters: dict,
    lora: LoRAConfig,
    *args: Any,
    method: Any = None,
    rngs: dict | None = None,
    deterministic: bool | None = None,
    **kwargs: Any,
) -> Any:
    """`model.apply` with the adapters: same arguments as the model (src, tgt -> logits (B, T, V)).

    Dropout (model and LoRA) is on exactly when rngs has a "dropout" key, unless `deterministic`.
    The LoRA dropout mask of each layer comes from that layer's own `make_rng("dropout")` stream.
    """
    pairs = _lora_pairs(adapters)
    used: set[Path_] = set()
    lora_dropout = lora.dropout > 0 and rngs is not None and "dropout" in rngs and deterministic is not True

    def add_lora_branch(next_fun, call_args, call_kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not isinstance(module, nn.Dense) or module.path not in pairs:
            return next_fun(*call_args, **call_kwargs)
        used.add(module.path)
        x = call_args[0]
        y = next_fun(*call_args, **call_kwargs)  # (..., out): x @ W + b
        a, b = pairs[module.path]
        h = x.astype(a.dtype)  # PEFT casts the input to the adapter's dtype
        if lora_dropout:
            h = _dropout(h, module.make_rng("dropout"), lora.dropout)
        if module.dtype is not None and jnp.dtype(module.dtype) != a.dtype:
            # bf16-mixed: torch.autocast runs PEFT's lora_A/lora_B as it runs every Linear (operands
            # cast to the compute dtype, float32 accumulation, one rounding): `linear` is that rule
            down = linear(h, a, None, module.dtype, module.precision)  # (..., r), bf16
            up = linear(down, b, None, module.dtype, module.precision)  # (..., out), bf16
            # torch scales a bf16 tensor by a Python float in float32 and rounds once (no bf16 scaling)
            scaled = (up.astype(jnp.float32) * np.float32(lora.scaling)).astype(up.dtype)
            return (y + scaled).astype(y.dtype)
        return (y + ((h @ a) @ b) * lora.scaling).astype(y.dtype)  # (..., in) -> (..., r) -> (..., out)

    if deterministic is not None:
        kwargs["deterministic"] = deterministic
    params = params_with_saved(base_params, adapters)
    with nn.intercept_methods(add_lora_branch):
        out = model.apply({"params": params}, *args, method=method, rngs=rngs, **kwargs)
    unused = sorted(set(pairs) - used)
    if method is None and unused:  # a full forward pass calls every Dense: an unused adapter is a misfit
        raise AdapterError(f"adapters for modules the model never called: {['/'.join(p) for p in unused]}")
    return out


# -- merge / unmerge -------------------------------------------------------------------------------
def _delta(a: jax.Array, b: jax.Array, scaling: float) -> jax.Array:
    """scaling * (B @ A)^T = (A_kernel @ B_kernel) * scaling, in PEFT's order (product, then scale)."""
    return (a @ b) * scaling  # (in, out)


def merge(base_params: dict, adapters: dict, lora: LoRAConfig) -> dict:
    """Full params with W + scaling * B @ A in each adapted kernel and modules_to_save replaced."""
    flat = flatten_dict(params_with_saved(base_params, adapters))
    for path, (a, b) in _lora_pairs(adapters).items():
        kernel = flat[(*path, "kernel")]
        flat[(*path, "kernel")] = kernel + _delta(a, b, lora.scaling).astype(kernel.dtype)
    return unflatten_dict(flat)


def unmerge(merged_params: dict, adapters: dict, lora: LoRAConfig) -> dict:
    """W - scaling * B @ A in each adapted kernel: the base kernels back, up to float rounding.

    modules_to_save stay as merged (their original values are not in the merged params); the
    base params a merge started from are never modified, so they remain available as they were.
    """
    flat = flatten_dict(dict(merged_params))
    for path, (a, b) in _lora_pairs(adapters).items():
        kernel = flat[(*path, "kernel")]
        flat[(*path, "kernel")] = kernel - _delta(a, b, lora.scaling).astype(kernel.dtype)
    return unflatten_dict(flat)


# -- PEFT-format tensors and files -----------------------------------------------------------------
def _relayout(array: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(array.T) if layout == TRANSPOSE else np.asarray(array)


def adapters_from_tensors(config: ModelConfig, lora: LoRAConfig, tensors: dict[str, np.ndarray]) -> dict:
    """{PEFT key: array} -> adapters pytree (transposes only: bit-exact in every dtype)."""
    check_adapter_tensors(config, lora, tensors, "the adapter tensors")
    flat: dict[Path_, jax.Array] = {}
    for target in resolve_targets(config, lora):
        path = torch_module_to_flax_path(target.module)
        flat[(*path, "lora_A", "kernel")] = jnp.asarray(_relayout(tensors[lora_key(target.module, "A")], TRANSPOSE))
        flat[(*path, "lora_B", "kernel")] = jnp.asarray(_relayout(tensors[lora_key(target.module, "B")], TRANSPOSE))
    saved = {
        spec.flax_path: jnp.asarray(_relayout(tensors[saved_key(spec.torch_key)], spec.layout))
        for spec in saved_param_specs(config, lora)
    }
    return {"lora": unflatten_dict(flat), "modules_to_save": unflatten_dict(saved)}


def tensors_from_adapters(config: ModelConfig, lora: LoRAConfig, adapters: dict) -> dict[str, np.ndarray]:
    """Adapters pytree -> {PEFT key: numpy array}; fails listing every missing/unexpected/misshaped leaf."""
    lora_flat = flatten_dict(dict(adapters.get("lora", {})))
    saved_flat = flatten_dict(dict(adapters.get("modules_to_save", {})))
    wanted: dict[tuple[str, Path_], tuple[str, tuple[int, ...], str]] = {}
    for target in resolve_targets(config, lora):
        path = torch_module_to_flax_path(target.module)
        wanted[("lora", (*path, "lora_A", "kernel"))] = (lora_key(target.module, "A"), (target.in_features, lora.r), TRANSPOSE)
        wanted[("lora", (*path, "lora_B", "kernel"))] = (lora_key(target.module, "B"), (lora.r, target.out_features), TRANSPOSE)
    for spec in saved_param_specs(config, lora):
        wanted[("modules_to_save", spec.flax_path)] = (saved_key(spec.torch_key), spec.flax_shape, spec.layout)
    present = {("lora", p): v for p, v in lora_flat.items()} | {("modules_to_save", p): v for p, v in saved_flat.items()}
    problems = []
    for where, (_, shape, _) in wanted.items():
        if where not in present:
            problems.append(f"missing {where[0]}/{'/'.join(where[1])}: expected shape {shape}")
        elif tuple(present[where].shape) != shape:
            problems.append(f"shape mismatch for {where[0]}/{'/'.join(where[1])}: expected {shape}, found {tuple(present[where].shape)}")
    problems += [f"unexpected {w[0]}/{'/'.join(w[1])}" for w in present if w not in wanted]
    if problems:
        raise AdapterError(f"the adapters do not fit the LoRA config ({len(problems)} problem(s)):\n  - " + "\n  - ".join(problems))
    return {key: _relayout(np.asarray(present[where]), layout) for where, (key, _, layout) in wanted.items()}


def save_adapter(
    directory: str | Path, config: ModelConfig, lora: LoRAConfig, adapters: dict,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write the adapter directory in PEFT's format (loads with peft.PeftModel.from_pretrained)."""
    return write_adapter(directory, config, lora, tensors_from_adapters(config, lora, adapters), base_model_name_or_path)


def load_adapter(
    directory: str | Path, config: ModelConfig, *, params: dict | None = None, base: str | Path | None = None,
    force: bool = False,
) -> tuple[LoRAConfig, dict]:
    """Read an adapter (ours or PEFT's save_pretrained) for a base model of `config`.

    `directory`: anything `--adapter` takes (the one path rule, shared/checkpoints/paths.py). An
    adapter that recorded its base's hash is checked against `base` (the checkpoint directory the
    params came from; cached) or, when only `params` is given, against those weights in memory, and
    refused on other weights (AdapterBaseMismatch; `force=True` applies it anyway). With neither,
    there is no base here to check: pass one wherever the adapter meets its base.
    """
    in_memory = None if params is None or base is not None else (lambda: state_dict_from_params(config, params))
    lora, tensors = read_adapter(directory, config, base=base, base_tensors=in_memory, force=force)
    adapters = adapters_from_tensors(config, lora, tensors)
    # PEFT loads 16-bit LoRA weights as float32 (autocast_adapter_dtype): so do we, so that the
    # low-rank branch computes in the same precision in both stacks (bf16 values are exact in f32)
    upcast = lambda a: a.astype(jnp.float32) if jnp.finfo(a.dtype).bits < 32 else a  # noqa: E731
    return lora, {**adapters, "lora": jax.tree_util.tree_map(upcast, adapters["lora"])}


# -- parameter report ------------------------------------------------------------------------------
def parameter_counts(base_params: dict, adapters: dict) -> tuple[int, int]:
    """(trainable, total), counted as PEFT does: total includes the adapters and the saved copies."""
    count = lambda tree: sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))  # noqa: E731
    trainable = count(adapters)
    return trainable, count(base_params) + trainable


def parameter_report(base_params: dict, adapters: dict) -> str:
    """'trainable params: N || all params: M || trainable%: P', as PEFT's print_trainable_parameters."""
    return format_parameter_report(*parameter_counts(base_params, adapters))
