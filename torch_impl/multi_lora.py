"""Many LoRA adapters over one torch_impl model, picked per batch row (multi-LoRA serving).

`install_multi_lora(model, {name: adapter_dir})` replaces every nn.Linear that any adapter targets
by a `MultiLoRALinear` holding the stacked A/B matrices (shared/checkpoints/adapter_stack.py) and
returns the `AdapterRows` they all read: before each forward the caller sets the (B,) adapter index
of the batch's rows (0 = base). Row b computes y = W x + b + scaling[k_b] * B[k_b] (A[k_b] x), the
unmerged form of PEFT's LoRA (lora_B(lora_A(x)) * scaling, dropout off); the adapter merged into W
is the same function up to rounding, so the decoded tokens agree (tests/test_serve_engine.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from shared.checkpoints.adapter_io import KEY_PREFIX, load_adapter as read_adapter
from shared.checkpoints.adapter_stack import servable_problems, stack_adapters
from torch_impl.numpy_bridge import to_torch


class AdapterRows:
    """The adapter index of each row of the next forward, shared by every MultiLoRALinear of a model."""

    def __init__(self, device=None) -> None:
        self.device = device
        self.index: torch.Tensor | None = None  # (B,) long; None or all zero: the base model
        self.any = False  # some row uses an adapter (skips the branch for base-only batches)

    def select(self, index) -> None:
        index_np = np.asarray(index, dtype=np.int64)
        self.any = bool((index_np > 0).any())
        self.index = torch.as_tensor(index_np, device=self.device)  # moved once per call, not per layer


class MultiLoRALinear(nn.Module):
    """base(x) + scaling[k] * (x A[k]^T) B[k]^T per row, k from the shared AdapterRows."""

    def __init__(self, base: nn.Linear, a: np.ndarray, b: np.ndarray, scaling: np.ndarray, rows: AdapterRows):
        super().__init__()
        self.base, self.rows = base, rows
        # in the base weight's dtype, as PEFT's lora_A/lora_B layers (a bf16 file is widened on load)
        like = dict(dtype=base.weight.dtype, device=base.weight.device)
        self.register_buffer("lora_a", to_torch(a).to(**like))  # (n+1, r, in)
        self.register_buffer("lora_b", to_torch(b).to(**like))  # (n+1, out, r)
        self.register_buffer("scaling", to_torch(scaling).to(device=base.weight.device))  # (n+1,) float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (B, T, out)
        if not self.rows.any:
            return y
        k = self.rows.index  # (B,)
        h = x.to(self.lora_a.dtype) @ self.lora_a[k].transpose(1, 2)  # (B, T, r)
        delta = (h @ self.lora_b[k].transpose(1, 2)) * self.scaling[k][:, None, None]  # (B, T, out)
        return y + delta.to(y.dtype)


def adapter_pairs(tensors: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """PEFT tensors -> {torch module path: (A (r, in), B (out, r))}."""
    pairs = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key.removeprefix(KEY_PREFIX).removesuffix(".lora_A.weight")
            pairs[module] = (a, tensors[KEY_PREFIX + module + ".lora_B.weight"])
    return pairs


def install_multi_lora(model: nn.Module, adapters: dict[str, Path]) -> AdapterRows:
    """Load the adapters (checked against model.config) and wrap their target layers in place."""
    rows = AdapterRows(next(model.parameters()).device)
    pairs, scalings, problems = [], [], []
    for name, directory in adapters.items():
        lora, tensors = read_adapter(directory, model.config)
        problems += servable_problems(name, lora)
        pairs.append(adapter_pairs(tensors))
        scalings.append(lora.scaling)
    if problems:
        raise ValueError("; ".join(problems))
    stacked, scaling = stack_adapters(pairs, scalings, a_rank_axis=0, b_rank_axis=1)
    for module, (a, b) in stacked.items():
        parent_path, _, leaf = module.rpartition(".")
        parent = model.get_submodule(parent_path)
        base = getattr(parent, leaf)
        if not isinstance(base, nn.Linear):
            raise ValueError(f"adapter target {module} is a {type(base).__name__}, not a linear layer")
        setattr(parent, leaf, MultiLoRALinear(base, a, b, scaling, rows))
    return rows


__all__ = ["AdapterRows", "MultiLoRALinear", "adapter_pairs", "install_multi_lora"]
