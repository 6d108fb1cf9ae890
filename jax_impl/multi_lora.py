"""Many LoRA adapters over one jax_impl model, picked per batch row (multi-LoRA serving).

`load_multi_lora(config, {name: adapter_dir})` stacks the adapters' (A, B) kernels per Flax module
path (shared/checkpoints/adapter_stack.py): {path: (A (n+1, in, r), B (n+1, r, out))} and scaling
(n+1,), index 0 the base model. `multi_lora_apply(model, params, lora, index, ...)` is `model.apply`
with each targeted Dense's output plus scaling[k_b] * (x_b A[k_b]) B[k_b] for row b (index (B,)),
through `flax.linen.intercept_methods` as jax_impl/lora.py adds one adapter: the model code knows
nothing of it. Everything is an array argument, so a jitted caller never recompiles for a new mix.
"""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jax_impl.lora import _lora_pairs, load_adapter
from shared.checkpoints.adapter_stack import servable_problems, stack_adapters


def load_multi_lora(config, adapters: dict[str, Path], dtype=np.float32) -> dict:
    """{"stacks": {flax path: (A, B)}, "scaling": (n+1,)} of the adapters (checked against config),
    A and B in `dtype` (the base params' dtype: a bf16 adapter file is widened, as PEFT loads it)."""
    pairs, scalings, problems = [], [], []
    for name, directory in adapters.items():
        lora, loaded = load_adapter(directory, config)
        problems += servable_problems(name, lora)
        pairs.append({path: (np.asarray(a), np.asarray(b)) for path, (a, b) in _lora_pairs(loaded).items()})
        scalings.append(lora.scaling)
    if problems:
        raise ValueError("; ".join(problems))
    stacked, scaling = stack_adapters(pairs, scalings, a_rank_axis=1, b_rank_axis=0)
    return {"stacks": {path: (jnp.asarray(a, dtype), jnp.asarray(b, dtype)) for path, (a, b) in stacked.items()},
            "scaling": jnp.asarray(scaling)}


def multi_lora_apply(model: nn.Module, params: dict, lora: dict | None, index, *args, method=None, **kwargs):
    """model.apply({"params": params}, *args, method=method) with row b through adapter index[b] (B,)."""
    if lora is None or not lora["stacks"]:
        return model.apply({"params": params}, *args, method=method, **kwargs)
    stacks, scaling = lora["stacks"], lora["scaling"]

    def add_branches(next_fun, call_args, call_kwargs, context):
        module = context.module
        y = next_fun(*call_args, **call_kwargs)
        if context.method_name != "__call__" or not isinstance(module, nn.Dense) or module.path not in stacks:
            return y
        a, b = stacks[module.path]
        x = call_args[0].astype(a.dtype)  # (B, T, in)
        delta = ((x @ a[index]) @ b[index]) * scaling[index][:, None, None]  # (B, T, r) -> (B, T, out)
        return (y + delta).astype(y.dtype)

    with nn.intercept_methods(add_branches):
        return model.apply({"params": params}, *args, method=method, **kwargs)


__all__ = ["load_multi_lora", "multi_lora_apply"]
