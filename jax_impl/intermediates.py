"""Per-module outputs of a forward pass, for diagnosis (Flax `capture_intermediates`)."""

from __future__ import annotations

import jax
from flax.traverse_util import flatten_dict

from jax_impl.families.transformer import Transformer
from shared.checkpoints.weight_table import flax_path_to_torch_module

ROOT = "logits"  # name given to the whole model's output, as in torch_impl/intermediates.py


def forward_with_intermediates(
    model: Transformer, params: dict, src_ids: jax.Array, tgt_ids: jax.Array
) -> tuple[jax.Array, dict[str, list[jax.Array]]]:
    """(logits, {module name: [output per call]}), names in the PyTorch module-path spelling."""
    logits, state = model.apply(
        {"params": params}, src_ids, tgt_ids, capture_intermediates=True, mutable=["intermediates"]
    )
    records = {}
    for path, outputs in flatten_dict(state["intermediates"]).items():
        module_path = path[:-1]  # drop the trailing '__call__'
        name = flax_path_to_torch_module(module_path) if module_path else ROOT
        records[name] = list(outputs)
    return logits, records
