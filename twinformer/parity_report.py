"""Run both stacks on the same inputs and compare every module's output (`twinformer parity`).

Each stack runs twice: in the precision under test and in float64 on the same (already rounded)
weights and inputs. The float64 runs measure each stack's own rounding error at the model's real
magnitudes, and shared.parity.tolerances.compare_stacks turns that into the bound for each module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.config.model_config import ModelConfig
from shared.parity.tolerances import Comparison, compare_stacks

# Porting note every report ends with: HF's transformers numbers positions 0..T-1 in a plain forward
# whatever the mask, while both stacks here take them from the mask (shared/families/causal_lm.py).
LEFT_PADDING_NOTE = ("note: for a left-padded causal-LM batch, pass HF's plain forward position_ids = cumsum(mask) - 1 "
                     "(as its generate does) to match these stacks (README, Porting notes)")  # fmt: skip
Records = dict[str, list[np.ndarray]]  # {module name: [float64 copy of the output of each call]}
CallOrder = list[tuple[str, int]]  # (module name, call index) in the order the torch forward finished them


@dataclass(frozen=True)
class LayerDiff:
    name: str
    shape: tuple[int, ...]
    comparison: Comparison  # max |torch - jax|, own rounding error, bound, ratio
    float64_rel: float  # max |torch_f64 - jax_f64| / max |torch_f64|: ~1e-14 unless a formula differs

    @property
    def ok(self) -> bool:
        return self.comparison.ok


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


def as_float64(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Exact float64 copies of (already rounded) weights: the reference runs start from the same values."""
    return {key: np.asarray(value).astype(np.float64) for key, value in tensors.items()}


def torch_records(
    config: ModelConfig, tensors: dict[str, np.ndarray], src, tgt, device: str = "cpu", order: CallOrder | None = None
) -> Records:
    """{module: [output per call]} of torch_impl's eval forward, in the dtype of `tensors`.

    `order`, when given, receives (module, call) in the order the calls finished: a module called
    twice (a residual dropout) has its second output far later than its first.
    """
    import torch

    import torch_impl
    from torch_impl.intermediates import ROOT, capture_intermediates
    from torch_impl.numpy_bridge import to_numpy
    from twinformer.devices import torch_device

    on = torch_device(device)
    model = torch_impl.from_numpy(config, tensors).to(on).eval()
    with torch.inference_mode(), capture_intermediates(model) as records:
        hooks = [] if order is None else [
            module.register_forward_hook(lambda *_, name=name or ROOT: order.append((name, len(records[name]) - 1)))
            for name, module in model.named_modules()
        ]  # registered after capture's hooks, so each runs once its output is recorded
        try:
            logits = model(torch.as_tensor(src, device=on), torch.as_tensor(tgt, device=on))
        finally:
            for hook in hooks:
                hook.remove()
    out = {name: [to_numpy(o).astype(np.float64) for o in outputs] for name, outputs in records.items()}
    out[ROOT] = [to_numpy(logits).astype(np.float64)]  # the root's hook recorded it too: one entry either way
    return out


def jax_records(config: ModelConfig, tensors: dict[str, np.ndarray], src, tgt, device: str = "cpu") -> Records:
    """{module: [output per call]} of jax_impl's deterministic apply, in the dtype of `tensors`.

    float64 tensors run with JAX's x64 mode on for this call only.
    """
    import contextlib

    import jax

    import jax_impl
    from twinformer.devices import jax_device

    x64 = any(np.asarray(t).dtype == np.float64 for t in tensors.values())
    with jax.enable_x64() if x64 else contextlib.nullcontext(), jax.default_device(jax_device(device)):
        params = jax_impl.params_from_state_dict(config, tensors)
        logits, records = _jitted_intermediates(jax_impl.build_model(config), params, src, tgt)
        out = {name: [np.asarray(o).astype(np.float64) for o in outputs] for name, outputs in records.items()}
        out["logits"] = [np.asarray(logits).astype(np.float64)]
    return out


def _jitted_intermediates(model, params, src, tgt):
    import jax

    from jax_impl.intermediates import forward_with_intermediates

    global _JITTED
    if _JITTED is None:
        _JITTED = jax.jit(forward_with_intermediates, static_argnums=0)
    return _JITTED(model, params, src, tgt)


_JITTED = None


def compare_records(
    torch_low: Records, jax_low: Records, torch_f64: Records, jax_f64: Records, precision: str, order: CallOrder | None = None
) -> list[LayerDiff]:
    """One LayerDiff per module call, in `order` (default: grouped by module in first-call order).

    Torch-only parameter-free helpers (the sinusoid buffer module) have no JAX twin and are skipped.
    """
    if order is None:
        order = [(name, call) for name, outputs in torch_low.items() for call in range(len(outputs))]
    diffs = []
    for name, call in order:
        if name not in jax_low:
            continue
        if len(torch_low[name]) != len(jax_low[name]):
            raise ValueError(f"{name}: called {len(torch_low[name])}x in torch, {len(jax_low[name])}x in jax")
        a, b, a64, b64 = torch_low[name][call], jax_low[name][call], torch_f64[name][call], jax_f64[name][call]
        label = name if len(torch_low[name]) == 1 else f"{name}[{call}]"
        scale = float(np.abs(a64).max(initial=0.0))
        f64_rel = float(np.abs(a64 - b64).max(initial=0.0)) / scale if scale > 0 else 0.0
        diffs.append(LayerDiff(label, a.shape, compare_stacks(a, b, a64, b64, precision), f64_rel))
    return diffs


def compare(
    config: ModelConfig,
    tensors: dict[str, np.ndarray],
    src: np.ndarray,
    tgt: np.ndarray,
    precision: str,
    device: str = "cpu",
) -> list[LayerDiff]:
    """Per-module differences of the two stacks, each under its float64-measured bound.

    `tensors` are in the dtype under test; `precision` names how values are stored between ops
    (float32, tf32, bfloat16, float16) and picks the bound's unit roundoff.
    """
    reference = as_float64(tensors)
    order: CallOrder = []
    return compare_records(
        torch_records(config, tensors, src, tgt, device, order),
        jax_records(config, tensors, src, tgt, device),
        torch_records(config, reference, src, tgt, device),
        jax_records(config, reference, src, tgt, device),
        precision,
        order,
    )


def first_parting(diffs: list[LayerDiff]) -> LayerDiff | None:
    """The first module (in forward order) whose difference exceeds its bound."""
    return next((d for d in diffs if not d.ok), None)


def format_report(diffs: list[LayerDiff], precision: str) -> str:
    width = max(len(d.name) for d in diffs)
    header = f"{'module':<{width}}  {'shape':<16} {'max |diff|':>10} {'own err':>10} {'bound':>10} {'ratio':>7} {'f64 rel':>8}  within"
    lines = [header]
    for d in diffs:
        c = d.comparison
        mark = "yes" if d.ok else "NO"
        lines.append(
            f"{d.name:<{width}}  {str(d.shape):<16} {c.max_abs:10.3e} {c.own_error:10.3e} {c.limit:10.3e} "
            f"{c.ratio:7.3f} {d.float64_rel:8.1e}  {mark}"
        )
    lines.append(
        f"bound per module ({precision}): C_OWN x max(own float64-measured rounding error of each stack) "
        "+ C_FLOOR x unit roundoff x max|float64 output| (shared/parity/tolerances.py)"
    )
    worst = max(diffs, key=lambda d: d.comparison.ratio)
    bad = first_parting(diffs)
    if bad is None:
        lines.append(f"all {len(diffs)} module outputs within their bounds; worst ratio {worst.comparison.ratio:.3f} at {worst.name}")
    else:
        count = sum(not d.ok for d in diffs)
        lines.append(f"{count} of {len(diffs)} module outputs beyond their bounds; worst ratio {worst.comparison.ratio:.3g} at {worst.name}")
        lines.append(f"first module where the stacks part: {bad.name}")
    lines.append(LEFT_PADDING_NOTE)
    return "\n".join(lines)
