"""Run both stacks on the same inputs and compare every module's output (`twinformer parity`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.config import ModelConfig
from shared.tolerances import Tolerance, excess


@dataclass(frozen=True)
class LayerDiff:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float  # max |a - b| / max(|a|, 1e-6): large only where values are tiny
    excess: float  # <= 1 within tolerance (see shared.tolerances.excess)


def random_inputs(config: ModelConfig, batch: int, src_len: int, tgt_len: int, seed: int):
    """Token ids with padding at random places, a fully padded source row and a 1-token row."""
    rng = np.random.default_rng(seed)
    src_len, tgt_len = min(src_len, config.max_len), min(tgt_len, config.max_len)

    def ids(vocab: int, length: int) -> np.ndarray:
        drawn = rng.integers(0, vocab, size=(batch, length), dtype=np.int64)
        drawn[drawn == config.pad_id] = (config.pad_id + 1) % vocab
        drawn[rng.random((batch, length)) < 0.15] = config.pad_id  # padding anywhere
        return drawn

    src, tgt = ids(config.src_vocab_size, src_len), ids(config.tgt_vocab_size, tgt_len)
    if batch > 1:
        src[-1] = config.pad_id  # a fully padded row must stay finite
        tgt[0, 1:] = config.pad_id  # a single-token target
    return src, tgt


def initial_tensors(config: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """torch_impl's default init plus noise on every tensor, so norms and biases are not 1/0."""
    import torch

    import torch_impl

    torch.manual_seed(seed)
    model = torch_impl.build_model(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return torch_impl.state_dict_numpy(model)


def compare(
    config: ModelConfig,
    tensors: dict[str, np.ndarray],
    src: np.ndarray,
    tgt: np.ndarray,
    tol: Tolerance,
    device: str = "cpu",
) -> list[LayerDiff]:
    """Per-module differences, in the order the PyTorch forward pass produced them."""
    import jax
    import torch

    import jax_impl
    import torch_impl
    from jax_impl.intermediates import forward_with_intermediates
    from torch_impl.intermediates import capture_intermediates
    from twinformer.devices import jax_device, torch_device

    on = torch_device(device)
    model = torch_impl.from_numpy(config, tensors).to(on).eval()
    with torch.inference_mode(), capture_intermediates(model) as torch_records:
        model(torch.as_tensor(src, device=on), torch.as_tensor(tgt, device=on))
    with jax.default_device(jax_device(device)):
        params = jax_impl.params_from_state_dict(config, tensors)
        _, jax_records = forward_with_intermediates(jax_impl.build_model(config), params, src, tgt)

    diffs = []
    for name, torch_outputs in torch_records.items():
        if name not in jax_records:
            continue  # torch-only parameter-free helpers (the sinusoid buffer module)
        for call, (a, b) in enumerate(zip(torch_outputs, jax_records[name], strict=True)):
            a = torch_impl.numpy_bridge.to_numpy(a).astype(np.float64)
            b = np.asarray(b).astype(np.float64)
            abs_diff = np.abs(a - b)
            label = name if len(torch_outputs) == 1 else f"{name}[{call}]"
            diffs.append(
                LayerDiff(
                    name=label,
                    shape=a.shape,
                    max_abs=float(abs_diff.max(initial=0.0)),
                    max_rel=float((abs_diff / np.maximum(np.abs(a), 1e-6)).max(initial=0.0)),
                    excess=excess(a, b, tol),
                )
            )
    return diffs


def format_report(diffs: list[LayerDiff], tol: Tolerance) -> str:
    width = max(len(d.name) for d in diffs)
    lines = [f"{'module':<{width}}  {'shape':<16} {'max abs':>10} {'max rel':>10}  within"]
    for d in diffs:
        mark = "yes" if d.excess <= 1.0 else "NO"
        lines.append(f"{d.name:<{width}}  {str(d.shape):<16} {d.max_abs:10.3e} {d.max_rel:10.3e}  {mark}")
    first_bad = next((d for d in diffs if d.excess > 1.0), None)
    lines.append(f"tolerance: atol={tol.atol:g} rtol={tol.rtol:g}")
    if first_bad is None:
        worst = max(diffs, key=lambda d: d.max_abs)
        lines.append(f"all {len(diffs)} module outputs agree; largest abs difference {worst.max_abs:.3e} at {worst.name}")
    else:
        lines.append(f"first module where the stacks part beyond tolerance: {first_bad.name}")
    return "\n".join(lines)
