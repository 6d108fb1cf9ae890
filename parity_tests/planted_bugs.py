"""Real formula differences, each planted in ONE stack, to show the parity checks can see them.

Each bug is a function that patches one stack through a pytest MonkeyPatch (undone afterwards;
no switch lives in the model code). test_planted_bugs.py asserts that the suite's comparison
fails and that `twinformer parity` names the first module where the stacks part;
`margin` measures how far above the bound the bug lands:

    python -m parity_tests.planted_bugs [--dtype float32|bfloat16] [--precision float32|tf32] [--device cpu|gpu]

prints, per forward bug, the ratio (max |torch - jax| / bound) at the first parting module with the
bug planted and without it: the bug's smallest visible effect against rounding's largest.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np

from shared.config.model_config import ModelConfig

# One small model on which every forward bug is visible: GELU, LayerNorm, sinusoid positions,
# head_dim (8) != d_model (32), one layer each side, padding in the source.
FORWARD_CONFIG = ModelConfig(
    src_vocab_size=29, tgt_vocab_size=31, d_model=32, num_heads=4, d_ff=48, num_encoder_layers=1,
    num_decoder_layers=1, dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0, max_len=16,
    activation="gelu", norm_kind="layernorm", norm_eps=1e-5, positional="sinusoid", bias=True,
)  # fmt: skip


@dataclass(frozen=True)
class ForwardBug:
    name: str
    stack: str  # the stack it is planted in
    plant: Callable  # plant(monkeypatch)
    first_module: str  # where `twinformer parity` must say the stacks part
    # False where the bug's effect (eps placement ~5e-6 relative, GELU flavour ~1e-4) is below one
    # rounding of tf32/bf16/fp16: no bound on such a forward can see it; float32 runs catch it.
    above_16bit_rounding: bool = True


# -- the bugs ----------------------------------------------------------------------------------------
def _norm_eps_outside_the_root(mp) -> None:
    """LayerNorm as (x - mean) / (sqrt(var) + eps) instead of / sqrt(var + eps)."""
    import torch

    from torch_impl import layers

    def forward(self, x):
        h = x.to(layers.upcast_dtype(x.dtype))
        mean = h.mean(-1, keepdim=True)
        std = torch.sqrt(((h - mean) ** 2).mean(-1, keepdim=True))
        return (self.weight.to(h.dtype) * (h - mean) / (std + self.eps) + self.bias.to(h.dtype)).to(x.dtype)

    mp.setattr(layers.Norm, "forward", forward)


def _gelu_tanh_for_exact(mp) -> None:
    import torch.nn.functional as F

    from torch_impl import layers

    original = layers.activation
    mp.setattr(layers, "activation", lambda name, x: F.gelu(x, approximate="tanh") if name == "gelu" else original(name, x))


def _attention_scale_by_d_model(mp) -> None:
    """scores / sqrt(d_model) instead of / sqrt(head_dim)."""
    import torch

    from shared.parity.numerics import mask_fill_value
    from torch_impl import layers

    def forward(self, x, memory, mask):  # MultiHeadAttention.forward with one factor changed
        q, k, v = (self.split_heads(proj(h)) for proj, h in ((self.q_proj, x), (self.k_proj, memory), (self.v_proj, memory)))
        scores = torch.einsum("bhtk,bhsk->bhts", q, k) * (1.0 / math.sqrt(self.num_heads * self.head_dim))
        scores = scores.masked_fill(~mask[:, None, :, :], mask_fill_value(str(scores.dtype).removeprefix("torch.")))
        probs = self.attn_dropout(torch.softmax(scores.to(layers.upcast_dtype(scores.dtype)), dim=-1).to(v.dtype))
        context = torch.einsum("bhts,bhsk->bhtk", probs, v)
        B, _, T, _ = context.shape
        return self.out_proj(context.transpose(1, 2).reshape(B, T, -1))

    mp.setattr(layers.MultiHeadAttention, "forward", forward)


def _causal_mask_off_by_one(mp) -> None:
    """Position t also sees t + 1."""
    import torch

    from torch_impl.families import transformer as model

    def causal_mask(tgt_ids, pad_id):
        T = tgt_ids.shape[1]
        lower = torch.ones(T, T, dtype=torch.bool, device=tgt_ids.device).tril(diagonal=1)
        return model.padding_mask(tgt_ids, pad_id) & lower[None]

    mp.setattr(model, "causal_mask", causal_mask)


def _memory_padding_mask_ignored(mp) -> None:
    """Cross-attention attends to padded source positions."""
    import torch

    from torch_impl.families import transformer as model

    def decode_hidden(self, memory, src_ids, tgt_ids):
        pad = self.config.pad_id
        y = self._embed(self._target_table(), tgt_ids)
        everything = torch.ones_like(model.padding_mask(src_ids, pad))
        return self.decoder(y, memory, model.causal_mask(tgt_ids, pad), everything)

    mp.setattr(model.Transformer, "decode_hidden", decode_hidden)


def _sinusoid_sin_cos_swapped(mp) -> None:
    from shared.parity import numerics
    from torch_impl import checkpoint, layers

    def swapped(max_len, d_model):
        table = numerics.sinusoid_table(max_len, d_model)
        return np.ascontiguousarray(table.reshape(max_len, -1, 2)[..., ::-1].reshape(max_len, d_model))

    for module in (layers, checkpoint):  # where torch_impl builds the table (at init, and on loading)
        mp.setattr(module, "sinusoid_table", swapped)


def _square_linear_not_transposed(mp) -> None:
    """The weight table forgets the (out, in) -> (in, out) transpose of one square Linear (jax side)."""
    import dataclasses

    from jax_impl import convert
    from shared.checkpoints.weight_table import SAME

    original = convert.param_specs

    def specs(config):
        return [
            dataclasses.replace(s, layout=SAME) if s.torch_key == "encoder.layers.0.self_attn.q_proj.weight" else s
            for s in original(config)
        ]

    mp.setattr(convert, "param_specs", specs)


FORWARD_BUGS = (
    ForwardBug("norm eps outside the root", "torch", _norm_eps_outside_the_root, "encoder.layers.0.self_attn_norm", False),
    ForwardBug("GELU tanh for exact", "torch", _gelu_tanh_for_exact, "encoder.layers.0.ffn.dropout", False),
    ForwardBug("attention scale 1/sqrt(d_model)", "torch", _attention_scale_by_d_model, "encoder.layers.0.self_attn.attn_dropout"),
    ForwardBug("causal mask off by one", "torch", _causal_mask_off_by_one, "decoder.layers.0.self_attn.attn_dropout"),
    ForwardBug("memory padding mask ignored", "torch", _memory_padding_mask_ignored, "decoder.layers.0.cross_attn.attn_dropout"),
    ForwardBug("sinusoid sin/cos swapped", "torch", _sinusoid_sin_cos_swapped, "embed_dropout[0]"),
    ForwardBug("square Linear not transposed", "jax", _square_linear_not_transposed, "encoder.layers.0.self_attn.q_proj"),
)


# -- measuring ------------------------------------------------------------------------------------------
def forward_inputs(config: ModelConfig = FORWARD_CONFIG, dtype: str = "float32", seed: int = 0):
    """(weights in `dtype`, src, tgt) as `twinformer parity` draws them (padding in the source)."""
    from shared.checkpoints.checkpoint import FLOAT_DTYPES
    from twinformer.parity_report import initial_tensors, random_inputs

    tensors = {k: v.astype(FLOAT_DTYPES[dtype]) for k, v in initial_tensors(config, seed).items()}
    src, tgt = random_inputs(config, batch=3, src_len=9, tgt_len=7, seed=seed)
    return tensors, src, tgt


def storage(dtype: str, precision: str) -> str:
    """How values are stored between ops: the bound's unit roundoff (as `twinformer parity` picks it)."""
    return dtype if dtype != "float32" else precision


def report_diffs(plant: Callable | None, dtype: str = "float32", precision: str = "float32", device: str = "cpu"):
    """`twinformer parity`'s per-module comparison of FORWARD_CONFIG, with `plant` applied (None: no bug)."""
    import pytest

    from twinformer.parity_report import compare

    tensors, src, tgt = forward_inputs(dtype=dtype)
    with pytest.MonkeyPatch.context() as mp:
        if plant is not None:
            plant(mp)
        return compare(FORWARD_CONFIG, tensors, src, tgt, storage(dtype, precision), device)


def margin_rows(dtype: str = "float32", precision: str = "float32", device: str = "cpu") -> list[tuple[str, str, float, float]]:
    """(bug, first parting module, ratio there with the bug, ratio there without it) per forward bug."""
    clean = {d.name: d.comparison.ratio for d in report_diffs(None, dtype, precision, device)}
    rows = []
    for bug in FORWARD_BUGS:
        from twinformer.parity_report import first_parting

        parting = first_parting(report_diffs(bug.plant, dtype, precision, device))
        name = parting.name if parting else "(none)"
        rows.append((bug.name, name, parting.comparison.ratio if parting else 0.0, clean.get(name, math.nan)))
    return rows


def format_margins(rows, label: str) -> str:
    lines = [f"| bug ({label}) | first parting module | ratio with the bug | ratio without | margin |", "|---|---|---:|---:|---:|"]
    for bug, module, with_bug, without in rows:
        lines.append(f"| {bug} | `{module}` | {with_bug:.3g} | {without:.3f} | {with_bug / max(without, 1e-12):.3g}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--precision", choices=("float32", "tf32"), default="float32")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    args = parser.parse_args(argv)
    from twinformer.devices import pin_precision

    pin_precision(args.precision)
    label = f"{args.device}, {args.dtype}" + (", tf32 matmuls" if args.precision == "tf32" else "")
    print(format_margins(margin_rows(args.dtype, args.precision, args.device), label))
    return 0


if __name__ == "__main__":
    sys.exit(main())


# -- the nine survivors of issue #18 -------------------------------------------------------------------
# Each plant patches one public seam. SURVIVOR_SEAMS names it (module, attribute) in one place, so a
# rewrite of torch_impl/jax_impl re-aims a plant by editing its row here. The tests that kill them:
# parity_tests/test_planted_bugs.py (section "survivors").
SURVIVOR_SEAMS = {
    "t5 tie_word_embeddings default flipped": ("shared.families.t5", "fields_from_hf"),
    "llama rope_theta ignored": ("shared.families.causal_lm", "rope_tables"),  # and where each stack imported it:
    "llama rope_theta ignored (torch)": ("torch_impl.families.causal_lm", "rope_tables"),
    # (jax_impl/positions.py imports rope_tables from shared.families.causal_lm when it is called)
    "top-p > at the boundary": ("shared.decoding.generation", "choose_next"),
    "jax lora dropout under deterministic=True": ("jax_impl.lora", "lora_apply"),
    "hf adapter rename keeps one name": ("shared.checkpoints.hf_adapter", "_leaf_names"),
    "FLOAT64_AGREEMENT loosened 10x": ("shared.parity.tolerances", "FLOAT64_AGREEMENT"),
    "torch bf16-mixed trains in fp32": ("torch_impl.training", "TorchBackend._autocast"),
    "gpt2 position embeddings detached (torch)": ("torch_impl.families.causal_lm", "CausalLM.__init__"),  # hooks .pos_embed
    "next-token loss mask shifted (jax)": ("jax_impl.families.causal_lm", "next_token_loss"),
    # the causal_lm variants (killed in parity_tests/test_causal_lm_variants.py)
    "sliding window ignored (torch)": ("torch_impl.families.causal_lm", "causal_window_mask"),
    "sliding window ignored (jax)": ("jax_impl.families.causal_lm", "window_mask"),
    "gemma (1 + w) read as w (jax)": ("jax_impl.families.causal_lm", "rms_one_plus_weight"),
    "gemma (1 + w) read as w (torch)": ("torch_impl.families.causal_lm", "rms_one_plus_weight"),
    # LoRA dropout dropped in train mode, in either stack (killed by test_lora's train-mode property)
    "jax lora dropout dropped in training": ("jax_impl.lora", "lora_apply"),
    "torch lora dropout dropped in training": ("torch_impl.lora", "peft_config"),
}


def _seam(name: str):
    """(object holding the attribute, attribute name, its current value) of SURVIVOR_SEAMS[name]."""
    import importlib

    module, attribute = SURVIVOR_SEAMS[name]
    owner = importlib.import_module(module)
    *path, leaf = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, leaf, getattr(owner, leaf)


def _wrap(mp, name: str, make: Callable) -> None:
    """Replace the seam's value v with make(v)."""
    owner, leaf, original = _seam(name)
    mp.setattr(owner, leaf, make(original))


def plant_t5_tie_default_flipped(mp) -> None:
    _wrap(mp, "t5 tie_word_embeddings default flipped",
          lambda f: lambda hf: f({"tie_word_embeddings": False} | dict(hf)))


def plant_rope_theta_ignored(mp) -> None:
    import dataclasses

    for name in ("llama rope_theta ignored", "llama rope_theta ignored (torch)"):
        _wrap(mp, name, lambda f: lambda config: f(dataclasses.replace(config, rope_theta=10000.0)))


def _top_p_strict(original):
    """choose_next with `before > top_p` for `before >= top_p` (keeps one token too many at the boundary)."""

    def choose_next(logits, u, config, *rest):
        top_p = float(config.top_p)
        if top_p >= 1.0:
            return original(logits, u, config, *rest)
        import dataclasses

        # `>` keeps a token whose preceding mass equals top_p: the same as `>=` at the next float up
        return original(logits, u, dataclasses.replace(config, top_p=float(np.nextafter(np.float32(top_p), np.float32(2)))), *rest)

    return choose_next


def plant_top_p_strict_boundary(mp) -> None:
    _wrap(mp, "top-p > at the boundary", _top_p_strict)


def plant_jax_lora_dropout_when_deterministic(mp) -> None:
    def make(original):
        def lora_apply(*args, deterministic=None, **kwargs):
            return original(*args, deterministic=None if deterministic is True else deterministic, **kwargs)

        return lora_apply

    _wrap(mp, "jax lora dropout under deterministic=True", make)


def plant_jax_lora_dropout_dropped_in_training(mp) -> None:
    """jax's LoRA branch never dropped, as if its config said dropout 0 (the model's dropout unchanged)."""

    def make(original):
        def lora_apply(model, base_params, adapters, lora, *args, **kwargs):
            return original(model, base_params, adapters, lora.replace(dropout=0.0), *args, **kwargs)

        return lora_apply

    _wrap(mp, "jax lora dropout dropped in training", make)


def plant_torch_lora_dropout_dropped_in_training(mp) -> None:
    """PEFT handed lora_dropout 0 (nn.Identity on the adapter branch) whatever the LoRAConfig says."""
    _wrap(mp, "torch lora dropout dropped in training",
          lambda f: lambda lora, *rest, **kwargs: f(lora.replace(dropout=0.0), *rest, **kwargs))


def plant_hf_adapter_rename_keeps_one(mp) -> None:
    def make(original):
        def leaf_names(config):
            seen, kept = set(), {}
            for ours, hf in original(config).items():
                kept[ours] = {h for h in hf if h not in seen}
                seen |= hf
            return {ours: hf for ours, hf in kept.items() if hf}

        return leaf_names

    _wrap(mp, "hf adapter rename keeps one name", make)


def plant_float64_agreement_loosened(mp) -> None:
    _wrap(mp, "FLOAT64_AGREEMENT loosened 10x", lambda value: 10 * value)


def plant_torch_bf16_mixed_in_fp32(mp) -> None:
    import contextlib

    _wrap(mp, "torch bf16-mixed trains in fp32", lambda f: lambda self: contextlib.nullcontext())


def plant_gpt2_position_embeddings_detached(mp) -> None:
    def make(original):
        def __init__(self, config, *args, **kwargs):
            original(self, config, *args, **kwargs)
            if getattr(self, "pos_embed", None) is not None:
                self.pos_embed.register_forward_hook(lambda module, args, output: output.detach())

        return __init__

    _wrap(mp, "gpt2 position embeddings detached (torch)", make)


def plant_loss_mask_shifted(mp) -> None:
    def next_token_loss(logits, ids, attention_mask=None):
        import jax.numpy as jnp
        import optax

        from jax_impl.families.causal_lm import attention_mask_or_ones

        mask = attention_mask_or_ones(ids, attention_mask)
        compute = jnp.float64 if logits.dtype == jnp.float64 else jnp.float32
        keep = mask[:, 1:].astype(compute)  # the bug: the target's mask only (a pad may predict the first token)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(compute), ids[:, 1:])
        return jnp.sum(nll * keep) / jnp.maximum(jnp.sum(keep), 1.0)

    _wrap(mp, "next-token loss mask shifted (jax)", lambda f: next_token_loss)


def plant_window_ignored_torch(mp) -> None:
    _wrap(mp, "sliding window ignored (torch)",
          lambda f: lambda queries, keys, offset=0, window=None, device=None: f(queries, keys, offset, None, device))


def plant_window_ignored_jax(mp) -> None:
    _wrap(mp, "sliding window ignored (jax)", lambda f: lambda config, queries, slots: True)


def plant_gemma_weight_without_one_jax(mp) -> None:
    _wrap(mp, "gemma (1 + w) read as w (jax)", lambda f: lambda x, w, eps: f(x, w - 1.0, eps))


def plant_gemma_weight_without_one_torch(mp) -> None:
    _wrap(mp, "gemma (1 + w) read as w (torch)", lambda f: lambda x, w, eps: f(x, w - 1.0, eps))
