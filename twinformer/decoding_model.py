"""A checkpoint (plus an optional LoRA adapter) loaded in the chosen stack as one decode function.

`load_decoding_model(framework, checkpoint, adapter)` -> decode(ids, mask, config, seed=0,
on_token=None) -> (B, T_out) int32 ids, the one generation loop of that stack
(torch_impl/generate.py, jax_impl/generate.py; contract: shared/decoding/generation.py). The adapter is
merged into the weights (W + scaling * B @ A): decoding runs no dropout, so that is the same
function as the unmerged adapter at no extra cost per step. Sampling draws come from
`shared.decoding.generation.uniforms(seed, ...)`, so both stacks sample the same tokens for the same seed.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from shared.decoding.generation import GenerationConfig, uniforms


def apply_adapter(framework: str, model, params, adapter_dir: Path, base: Path | None = None, force: bool = False):
    """(model, params) with a resolved LoRA adapter directory merged in; `base`: the checkpoint the
    model was loaded from, whose hash the adapter's recorded one must match unless `force`."""
    module = importlib.import_module(f"{framework}_impl.lora")
    if framework == "torch":
        return module.merged_model(module.load_adapter(model, adapter_dir, base=base, force=force)).eval(), params
    lora, adapters = module.load_adapter(adapter_dir, model.config, params=params, base=base, force=force)
    return model, module.merge(params, adapters, lora)


def load_decoding_model(framework: str, checkpoint: Path, adapter: Path | None = None, force: bool = False):
    """(model config, decode(ids (B, L), mask (B, L) or None, config, seed, on_token)) for the checkpoint in `framework`."""
    if framework == "torch":
        import torch

        import torch_impl
        from torch_impl.generate import generate

        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = torch_impl.load(checkpoint, device=device)
        if adapter is not None:
            model, _ = apply_adapter("torch", model, None, adapter, checkpoint, force)
        run = lambda ids, mask, config, draws, on_token: generate(model, ids, mask, config, draws, on_token)  # noqa: E731
        model_config = model.config
    else:
        import jax_impl
        from jax_impl.generate import generate

        model, params = jax_impl.load(checkpoint)
        if adapter is not None:
            model, params = apply_adapter("jax", model, params, adapter, checkpoint, force)
        run = lambda ids, mask, config, draws, on_token: generate(model, params, ids, mask, config, draws, on_token)  # noqa: E731
        model_config = model.config

    def decode(ids: np.ndarray, mask: np.ndarray | None, config: GenerationConfig, seed: int = 0, on_token=None) -> np.ndarray:
        # One draw per row and step; max_len rows cover any N the model can generate.
        draws = uniforms(seed, config.max_new_tokens or model_config.max_len, ids.shape[0]) if config.do_sample else None
        return run(ids, mask, config, draws, on_token)

    return model_config, decode


__all__ = ["apply_adapter", "load_decoding_model"]
