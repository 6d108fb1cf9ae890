"""Both stacks against transformers' own model, module by module (`twinformer parity --against hf`).

The same prompt (default 512 tokens, batch 2, the second row left-padded) runs through torch_impl
and jax_impl as a padded batch, and through transformers' model one row at a time without its
padding (the unpadded row is the truth a padded batch must reproduce), each in float32 and float64.
Forward hooks on transformers' modules, mapped by the family's HF module table (our `layers.3.
self_attn.q_proj` is Llama's `model.layers.3.self_attn.q_proj`), give their outputs; at every real
token each module is compared under the scale-aware bound (shared/parity/tolerances.py: each side's own
rounding error measured by its float64 twin). Reported: per module the worst of the two stacks'
ratios, the first module where they part, and over all real positions the KL divergence of the
next-token distributions and top-1 agreement (float32, each stack against transformers).

transformers' float64 run uses sdpa attention (eager takes its softmax in float32); its RMS norm
still rounds to float32, so its own error is slightly overstated, never understated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.config.model_config import ModelConfig
from shared.families import family_of
from shared.parity.tolerances import Comparison, compare_stacks
from twinformer.parity_report import LayerDiff

STACKS = ("torch_impl", "jax_impl")


@dataclass(frozen=True)
class HFParity:
    diffs: list[LayerDiff]  # per module, the worse of the two stacks
    kl: dict[str, tuple[float, float]]  # stack -> (mean, max) KL(transformers || ours) over real positions
    top1: dict[str, float]  # stack -> fraction of real positions whose argmax agrees with transformers


def hf_module_map(config: ModelConfig) -> dict[str, str]:
    """{our module: transformers module} for every mapped module, layer, attention, MLP and the logits ("")."""
    mapping = family_of(config).hf
    if mapping is None or mapping.module_table is None:
        raise ValueError(f"parity --against hf compares causal LMs (GPT-2, Llama); this is a {config.family} model")
    table = mapping.module_table(config)

    def parent(path: str) -> str:
        return path.rsplit(".", 1)[0]

    for i in range(config.num_decoder_layers):
        table[f"layers.{i}"] = parent(table[f"layers.{i}.attn_norm"])
        table[f"layers.{i}.self_attn"] = parent(table[f"layers.{i}.self_attn.o_proj"])
        table[f"layers.{i}.mlp"] = parent(table[f"layers.{i}.mlp.down_proj"])
    table["logits"] = ""
    return table


def prompt(config: ModelConfig, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) (2, T): a full row and a left-padded row of ~0.8 T tokens, seeded random ids."""
    rng = np.random.default_rng(seed)
    T = min(length, config.max_len)
    lengths = [T, max(1, (4 * T) // 5)]
    ids = np.full((2, T), config.pad_id, dtype=np.int64)
    mask = np.zeros((2, T), dtype=np.int64)
    for row, n in enumerate(lengths):
        ids[row, T - n:] = rng.integers(0, config.tgt_vocab_size, n)
        mask[row, T - n:] = 1
    return ids, mask


def _hf_records(model, names: dict[str, str], ids: np.ndarray, mask: np.ndarray, dtype) -> dict[str, np.ndarray]:
    """{our module: (B, T, ...) float64 output of transformers' module}, each row run alone without padding."""
    import torch

    from torch_impl.numpy_bridge import to_numpy

    model = model.to(dtype)
    out: dict[str, np.ndarray] = {}
    current: dict[str, np.ndarray] = {}

    def hook_for(ours: str):
        def hook(_module, _inputs, output):
            value = output[0] if isinstance(output, tuple) else getattr(output, "logits", output)
            current[ours] = to_numpy(value.detach()).astype(np.float64)[0]

        return hook

    handles = [model.get_submodule(hf).register_forward_hook(hook_for(ours)) for ours, hf in names.items()]
    try:
        with torch.no_grad():
            for row in range(ids.shape[0]):
                keep = mask[row].astype(bool)
                current.clear()
                model(input_ids=torch.as_tensor(ids[row, keep][None]))
                for ours, value in current.items():
                    if ours not in out:
                        out[ours] = np.zeros((*ids.shape, *value.shape[1:]))
                    out[ours][row, keep] = value
    finally:
        for handle in handles:
            handle.remove()
    return out


def _our_records(stack: str, config: ModelConfig, tensors: dict, ids, mask, float64: bool) -> dict[str, np.ndarray]:
    dtype = np.float64 if float64 else np.float32
    tensors = {key: np.asarray(value).astype(dtype) for key, value in tensors.items()}
    if stack == "torch_impl":
        import torch

        import torch_impl
        from torch_impl.intermediates import ROOT, capture_intermediates
        from torch_impl.numpy_bridge import to_numpy

        model = torch_impl.from_numpy(config, tensors).eval()
        with torch.no_grad(), capture_intermediates(model) as records:
            logits = model(torch.as_tensor(ids), torch.as_tensor(mask))
        out = {name: to_numpy(outs[0]).astype(np.float64) for name, outs in records.items()}
        out[ROOT] = to_numpy(logits).astype(np.float64)
        return out
    import jax
    import jax.numpy as jnp

    import jax_impl
    from jax_impl.intermediates import forward_with_intermediates

    with jax.enable_x64(float64):
        params = jax_impl.params_from_state_dict(config, tensors)
        logits, records = forward_with_intermediates(jax_impl.build_model(config), params, jnp.asarray(ids),
                                                     jnp.asarray(mask))
        out = {name: np.asarray(outs[0]).astype(np.float64) for name, outs in records.items()}
        out["logits"] = np.asarray(logits).astype(np.float64)
    return out


def _kl_top1(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float, float]:
    """(mean KL, max KL, top-1 agreement) of (N, V) logits, KL(theirs || ours) in nats."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    log_p, log_q = log_softmax(theirs), log_softmax(ours)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)
    return float(kl.mean()), float(kl.max()), float((ours.argmax(-1) == theirs.argmax(-1)).mean())


def compare_with_hf(hf_dir: str | Path, config: ModelConfig, tensors: dict, length: int = 512, seed: int = 0) -> HFParity:
    """Our stacks on `config` + `tensors` (a port of hf_dir) against transformers' model in hf_dir."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    names = hf_module_map(config)
    ids, mask = prompt(config, length, seed)
    real = mask.astype(bool)
    hf32 = _hf_records(model, names, ids, mask, torch.float32)
    model.set_attn_implementation("sdpa")  # float64 softmax (eager's is float32)
    hf64 = _hf_records(model, names, ids, mask, torch.float64)
    ours = {stack: (_our_records(stack, config, tensors, ids, mask, False),
                    _our_records(stack, config, tensors, ids, mask, True)) for stack in STACKS}
    diffs = []
    for name in ours["torch_impl"][0]:  # torch's forward order: a module is recorded when it finishes
        if name not in names or name not in hf32 or any(name not in low for low, _ in ours.values()):
            continue
        worst: tuple[Comparison, float] | None = None
        for low, high in ours.values():
            comparison = compare_stacks(low[name][real], hf32[name][real], high[name][real], hf64[name][real], "float32")
            scale = float(np.abs(hf64[name][real]).max(initial=0.0))
            f64_rel = float(np.abs(high[name][real] - hf64[name][real]).max(initial=0.0)) / scale if scale else 0.0
            if worst is None or comparison.ratio > worst[0].ratio:
                worst = (comparison, f64_rel)
        diffs.append(LayerDiff(name, tuple(hf32[name].shape), *worst))
    kl, top1 = {}, {}
    for stack, (low, _) in ours.items():
        mean, peak, agree = _kl_top1(low["logits"][real], hf32["logits"][real])
        kl[stack], top1[stack] = (mean, peak), agree
    return HFParity(diffs, kl, top1)


def format_hf_report(result: HFParity) -> str:
    from twinformer.parity_report import format_report

    lines = [format_report(result.diffs, "float32").replace("the stacks part", "our stacks part from transformers")]
    for stack in STACKS:
        mean, peak = result.kl[stack]
        lines.append(f"{stack} vs transformers, next-token distributions over real positions: KL mean {mean:.3g}, "
                     f"max {peak:.3g} nats; top-1 agreement {result.top1[stack]:.4f}")
    return "\n".join(lines)
