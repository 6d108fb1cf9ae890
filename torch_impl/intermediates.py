"""Per-module outputs of a forward pass, for diagnosis (forward hooks, removed on exit)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

ROOT = "logits"  # name given to the whole model's output, as in jax_impl/intermediates.py


@contextmanager
def capture_intermediates(model: nn.Module) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Within the block, records {module name: [output per call]} in execution order.

    Names are state-dict module paths (`decoder.layers.0.cross_attn`); a module called twice (a
    shared embedding) has two entries. Parameter-free modules (dropout) are recorded too.
    """
    records: dict[str, list[torch.Tensor]] = {}

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor):
                records.setdefault(name, []).append(output.detach())

        return hook

    handles = [module.register_forward_hook(hook_for(name or ROOT)) for name, module in model.named_modules()]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()
