"""LoRA for torch_impl models, through the Hugging Face PEFT library itself.

PEFT's `get_peft_model` works on any nn.Module whose targets are nn.Linear, so the PyTorch stack
does not carry a copy of it: the reference implementation *is* the torch side, and jax_impl/lora.py
is tested against it. A wrapped model is a `peft.PeftModel`: `peft_model(src, tgt)`,
`peft_model.encode(...)` etc. reach the Transformer; base weights have requires_grad=False.
Adapter files go through shared/checkpoints/adapter_io.py (the same writer as jax_impl, PEFT's format).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import peft
import torch

from shared.checkpoints.adapter_io import check_adapter_tensors, load_adapter as read_adapter, save_adapter as write_adapter
from shared.checkpoints.lora_config import LoRAConfig, format_parameter_report, resolve_modules_to_save, resolve_targets
from torch_impl.checkpoint import state_dict_numpy
from torch_impl.families.transformer import Transformer
from torch_impl.numpy_bridge import to_numpy, to_torch


def peft_config(lora: LoRAConfig, inference_mode: bool = False) -> peft.LoraConfig:
    """Our LoRAConfig as PEFT's LoraConfig (task_type None: a custom model, plain PeftModel)."""
    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    return peft.LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        use_rslora=lora.use_rslora,
        modules_to_save=list(lora.modules_to_save) or None,
        bias=lora.bias,
        inference_mode=inference_mode,
    )


def apply_lora(model: Transformer, lora: LoRAConfig) -> peft.PeftModel:
    """Wrap `model` (in place) with fresh adapters: A kaiming-uniform, B zero, base weights frozen.

    The targets are resolved (and every misfit reported) with shared/checkpoints/lora_config.py first, so a bad
    config fails with the same message in both stacks before PEFT sees it.
    """
    resolve_targets(model.config, lora)
    resolve_modules_to_save(model.config, lora)
    return peft.get_peft_model(model, peft_config(lora))


def adapter_tensors(peft_model: peft.PeftModel) -> dict[str, np.ndarray]:
    """The adapter's tensors as {PEFT key: numpy array}, exactly the keys save_pretrained writes."""
    state = peft.get_peft_model_state_dict(peft_model)
    return {key: to_numpy(value) for key, value in state.items()}


def lora_config_of(peft_model: peft.PeftModel) -> LoRAConfig:
    """Our LoRAConfig back from the PeftModel's active LoraConfig."""
    c = peft_model.peft_config[peft_model.active_adapter]
    targets = c.target_modules if isinstance(c.target_modules, str) else tuple(c.target_modules)
    return LoRAConfig(
        r=c.r, alpha=c.lora_alpha, dropout=c.lora_dropout, target_modules=targets,
        use_rslora=c.use_rslora, modules_to_save=tuple(c.modules_to_save or ()), bias=c.bias,
    )


def save_adapter(peft_model: peft.PeftModel, directory: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write the adapter directory (adapter_config.json + adapter_model.safetensors)."""
    base = peft_model.get_base_model()
    return write_adapter(directory, base.config, lora_config_of(peft_model), adapter_tensors(peft_model),
                         base_model_name_or_path)


def load_adapter(
    model: Transformer, directory: str | Path, is_trainable: bool = False, *, base: str | Path | None = None,
    force: bool = False,
) -> peft.PeftModel:
    """Wrap `model` with the adapter `directory` names (checked against model.config first).

    Equivalent to `peft.PeftModel.from_pretrained(model, directory)`, but `directory` may be
    anything `--adapter` takes (a LoRA run, one of its checkpoints, an adapter or PEFT directory: the
    one path rule), a misfit adapter fails with every problem listed instead of PEFT's first
    size-mismatch error, and an adapter that recorded its base's hash is refused on other weights
    (AdapterBaseMismatch; `force=True` applies it anyway). The hash compared is that of `base` (the
    checkpoint directory `model` was loaded from; cached) when given, else of the model's weights
    in memory (one pass over them).
    """
    in_memory = None if base is not None else (lambda: state_dict_numpy(model))
    lora, tensors = read_adapter(directory, model.config, base=base, base_tensors=in_memory, force=force)
    peft_model = peft.get_peft_model(model, peft_config(lora, inference_mode=not is_trainable))
    set_adapter_tensors(peft_model, tensors)
    return peft_model


def set_adapter_tensors(peft_model: peft.PeftModel, tensors: dict[str, np.ndarray]) -> None:
    """Overwrite the adapter's weights with `tensors` ({PEFT key: array}, checked, every key used)."""
    base = peft_model.get_base_model()
    check_adapter_tensors(base.config, lora_config_of(peft_model), tensors, "the adapter tensors")
    result = peft.set_peft_model_state_dict(peft_model, {k: to_torch(v) for k, v in tensors.items()})
    if result.unexpected_keys:
        raise RuntimeError(f"PEFT did not use adapter keys: {result.unexpected_keys}")


def merge(peft_model: peft.PeftModel) -> None:
    """W <- W + scaling * B @ A in every adapted layer (in place); forward then skips the LoRA branch."""
    peft_model.merge_adapter()


def unmerge(peft_model: peft.PeftModel) -> None:
    """W <- W - scaling * B @ A: undoes merge() up to float rounding (not bit-exact, see tests)."""
    peft_model.unmerge_adapter()


def merged_model(peft_model: peft.PeftModel) -> Transformer:
    """A plain Transformer with the adapter merged in and modules_to_save replaced (consumes the wrapper)."""
    return peft_model.merge_and_unload()


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, counted as PEFT's get_nb_trainable_parameters does."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def parameter_report(model: torch.nn.Module) -> str:
    """'trainable params: N || all params: M || trainable%: P', as print_trainable_parameters."""
    return format_parameter_report(*parameter_counts(model))
