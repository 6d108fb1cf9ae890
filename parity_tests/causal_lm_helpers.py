"""Plumbing of the causal-LM parity tests: transformers references, both stacks' forwards in float32
and float64, and the one comparison every cross-implementation check goes through.

The reference is transformers' own GPT2LMHeadModel / LlamaForCausalLM, built from the config our
`config_to_hf` writes (eager attention), with random weights plus noise (so norm scales and biases
are not 1 and 0). Our tensors come from its state dict through the HF key table, so every test
also exercises the import mapping (the Conv1D transposes, the fused c_attn, the tied head).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

import jax_impl
import torch_impl
from shared.config.model_config import ModelConfig
from shared.families import family_of
from shared.families.causal_lm import position_ids
from shared.checkpoints.hf_checkpoint import tensors_from_hf
from shared.parity.tolerances import FLOAT64_AGREEMENT, compare_stacks
from torch_impl.numpy_bridge import to_numpy

NOISE = 0.1


def examples(ci: int):
    """Hypothesis settings: `ci` examples in the default (CI) profile, the profile's count otherwise.

    Every example compiles new XLA programs (float32 and float64), so CI draws only a few.
    """
    from hypothesis import settings

    if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci":
        return settings(max_examples=ci)
    return settings()


def hf_model(config: ModelConfig, seed: int) -> torch.nn.Module:
    """transformers' model of `config` (GPT-2 or Llama), random init + noise, float32, eval mode."""
    hf = dict(family_of(config).hf.config_to_hf(config))
    architecture = hf.pop("architectures")[0]
    config_class = transformers.CONFIG_MAPPING[hf.pop("model_type")]  # GPT-2, Llama, Mistral, Qwen2, Gemma
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(config_class(**hf, attn_implementation="eager"))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(NOISE * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def our_tensors(config: ModelConfig, model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The HF model's weights as our state dict, through the family's HF key table."""
    hf_tensors = {key: to_numpy(value) for key, value in model.state_dict().items()}
    return tensors_from_hf(family_of(config), config, hf_tensors, "the transformers reference")


def left_padded(rng: np.random.Generator, config: ModelConfig, lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, mask) (B, T): row b holds lengths[b] random tokens after T - lengths[b] pads."""
    T = max(lengths)
    ids = np.full((len(lengths), T), config.pad_id, dtype=np.int64)
    mask = np.zeros((len(lengths), T), dtype=np.int64)
    for row, length in enumerate(lengths):
        ids[row, T - length:] = rng.integers(0, config.tgt_vocab_size, length)
        mask[row, T - length:] = 1
    return ids, mask


# -- forwards ----------------------------------------------------------------------------------------
def hf_logits(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """HF logits (B, T, V) of the padded batch, with the mask and the position ids generate() derives."""
    model = model.to(dtype)
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                    position_ids=torch.as_tensor(position_ids(mask)))
    return to_numpy(out.logits)


@contextmanager
def true_float64(model: torch.nn.Module, hf_rope: bool = False):
    """Within: HF's Llama (and Mistral, Qwen2, Gemma) computes in float64 where it hard-codes float32, so
    it is a float64 reference.

    Three places of LlamaForCausalLM compute in float32 whatever the model's dtype:
      * eager attention takes its softmax in float32; here attention runs through torch's
        scaled_dot_product_attention ("sdpa"), which computes in the input's dtype;
      * LlamaRMSNorm casts its input to float32 (for 16-bit training); in a float64 model that
        rounds every norm to float32. Here it computes the same formula in the input's dtype.
      * the rotary embedding takes cos/sin in float32 with torch's float32 cos/sin, which is 1 ulp
        off the correctly rounded value in ~5% of the entries; ours rounds float64 values once
        (shared rope_tables), so both stacks share one table. Here HF returns that correctly rounded
        table built from HF's own inv_freq buffer and float32 angles (HF's rotate_half and everything
        else unchanged), never from our rope_tables.
    Without this the float64 comparison fails at ~1e-7 although the formulas are the same. The
    float32 reference keeps HF's own code, so both are still checked there, within the float32 bound.
    hf_rope=True keeps HF's own rotary tables (its float32 cos/sin of its own rope_init_fn's
    frequencies): the reference for rope scalings, whose frequencies are what is under test.
    """
    handles = []
    eager = model.config._attn_implementation
    model.set_attn_implementation("sdpa")

    def norm_in_input_dtype(module, args, output):
        x = args[0]
        variance = x.pow(2).mean(-1, keepdim=True)
        if type(module).__name__ == "GemmaRMSNorm":  # (1 + w), which GemmaRMSNorm takes in float32 as well
            return (x * torch.rsqrt(variance + module.eps)) * (1.0 + module.weight)
        return module.weight * (x * torch.rsqrt(variance + module.variance_epsilon))

    for module in model.modules():  # Llama's, and its variants' (Mistral, Qwen2: the same formula; Gemma)
        if type(module).__name__.endswith("RMSNorm"):
            handles.append(module.register_forward_hook(norm_in_input_dtype))
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rotary is not None and not hf_rope:

        def correctly_rounded(module, args, kwargs, output):
            # HF's own inv_freq (computed by transformers from its config, float32, cast back exactly
            # from a .double() model) and HF's float32 angles; only cos/sin are taken in float64 and
            # rounded once. Never our rope_tables: a rope bug of ours would enter the reference too.
            positions = kwargs["position_ids"] if "position_ids" in kwargs else args[1]  # (B, T)
            angles = positions.float()[..., None] * module.inv_freq.float()[None, None, :]  # (B, T, K/2) float32
            angles = torch.cat([angles, angles], dim=-1).double()  # (B, T, K)
            scaling = float(getattr(module, "attention_scaling", 1.0))
            cos, sin = ((f(angles) * scaling).float() for f in (torch.cos, torch.sin))
            return cos.to(output[0].dtype), sin.to(output[0].dtype)

        handles.append(rotary.register_forward_hook(correctly_rounded, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        model.set_attn_implementation(eager)


def hf_logits_unpadded(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray, dtype: torch.dtype,
                       base: torch.nn.Module | None = None, hf_rope: bool = False) -> np.ndarray:
    """HF logits (B, T, V) with each row run alone without its padding (zeros at pad positions).

    The float64 reference: transformers' Llama turns a fully masked (pad) query row into NaN in
    float64 eager attention, and 0 * NaN then spreads to the real positions of that row; a row
    without padding has the same exact logits, so it is the float64 value of the padded batch.
    """
    model = model.to(dtype)
    out = None
    with torch.no_grad(), true_float64(model if base is None else base, hf_rope):
        for row in range(ids.shape[0]):
            keep = mask[row].astype(bool)
            logits = to_numpy(model(input_ids=torch.as_tensor(ids[row, keep][None])).logits[0])
            if out is None:
                out = np.zeros((*ids.shape, logits.shape[-1]), dtype=logits.dtype)
            out[row, keep] = logits
    return out


def torch_logits(config: ModelConfig, tensors: dict, ids: np.ndarray, mask: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    model = torch_impl.from_numpy(config, tensors, dtype).eval()
    with torch.no_grad():
        return to_numpy(model(torch.as_tensor(ids), torch.as_tensor(mask)))


@partial(jax.jit, static_argnums=0)
def _jax_apply(config: ModelConfig, params, ids, mask):
    return jax_impl.build_model(config).apply({"params": params}, ids, mask)


def jax_logits(config: ModelConfig, tensors: dict, ids: np.ndarray, mask: np.ndarray, float64: bool) -> np.ndarray:
    dtype = np.float64 if float64 else np.float32
    with jax.enable_x64(float64):  # float64 arrays exist only inside the context
        params = jax_impl.params_from_state_dict(config, {k: v.astype(dtype) for k, v in tensors.items()})
        return np.asarray(_jax_apply(config, params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)))


# -- the one comparison --------------------------------------------------------------------------------
def assert_agree(what: str, a32: np.ndarray, b32: np.ndarray, a64: np.ndarray, b64: np.ndarray) -> float:
    """Two implementations agree: float32 within the scale-aware bound, float64 to FLOAT64_AGREEMENT.

    Returns the float32 ratio (difference / bound) for reporting.
    """
    comparison = compare_stacks(a32, b32, a64, b64, "float32")
    assert comparison.ok, (
        f"{what}: float32 max |diff| {comparison.max_abs:.3g} > bound {comparison.limit:.3g} "
        f"(own rounding error {comparison.own_error:.3g}, scale {comparison.scale:.3g})"
    )
    scale = max(float(np.abs(b64).max()), 1e-300)
    relative = float(np.abs(np.asarray(a64) - np.asarray(b64)).max()) / scale
    assert relative <= FLOAT64_AGREEMENT, f"{what}: float64 outputs differ by {relative:.3g} relative (a formula difference)"
    return comparison.ratio
