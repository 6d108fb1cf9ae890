"""Save and load torch_impl models as checkpoint directories (shared/checkpoints/checkpoint.py format)."""

from __future__ import annotations

from pathlib import Path

import torch

from shared.checkpoints.checkpoint import load_checkpoint_lazy, save_checkpoint
from shared.checkpoints.safetensors_stream import Tensor, load as load_tensor
from shared.config.model_config import ModelConfig
from shared.parity.numerics import sinusoid_table
from torch_impl.families.transformer import Transformer
from torch_impl.registry import build_model
from torch_impl.numpy_bridge import to_numpy, to_torch


def state_dict_numpy(model: Transformer) -> dict:
    """The model's parameters as {state-dict key: numpy array} (buffers are derived, not saved)."""
    return {key: to_numpy(value) for key, value in model.state_dict().items()}


def save(model: Transformer, directory: str | Path) -> Path:
    """Write `config.json` + `model.safetensors` in the canonical layout."""
    return save_checkpoint(directory, model.config, state_dict_numpy(model))


def from_numpy(config: ModelConfig, tensors: dict[str, Tensor], dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Build a model holding exactly these (already checked) state-dict tensors (arrays or LazyTensors), bit for bit.

    The model is built on the meta device (no wasted random init) and the tensors are assigned,
    not copied, so they keep their dtype (or are cast one at a time to `dtype`); the sinusoid
    buffer, derived from the config, is rebuilt. Lazy tensors are read one at a time, so loading
    needs the model plus one tensor of memory.
    """
    with torch.device("meta"):
        model = build_model(config)
    state = {}
    for key, value in tensors.items():
        state[key] = to_torch(load_tensor(value)) if dtype is None else to_torch(load_tensor(value)).to(dtype)
    model.load_state_dict(state, strict=True, assign=True)
    if config.positional == "sinusoid":
        model.pos_encoding.table = to_torch(sinusoid_table(config.max_len, config.d_model))
    if hasattr(model, "rebuild_buffers"):  # other derived buffers (the causal_lm rotary tables)
        model.rebuild_buffers()
    return model if dtype is None else model.to(dtype)


def load(directory: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a checkpoint directory into its family's model (Transformer, T5) in eval mode (dtype: the file's, unless given)."""
    config, tensors = load_checkpoint_lazy(directory)
    return from_numpy(config, tensors, dtype).to(device).eval()


__all__ = ["from_numpy", "load", "save", "state_dict_numpy"]
