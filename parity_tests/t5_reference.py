"""T5 parity helpers: random models of a T5 config in transformers (the reference) and in both stacks.

Every comparison goes through `check` (shared/parity/tolerances.py's scale-aware bound): each side is run
in float32 and in float64, the float32 difference is bounded by the sides' own float64-measured
rounding error, and the float64 agreement (the formula check) is asserted too.
"""

from __future__ import annotations

import contextlib
from functools import partial

import numpy as np
import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.models.t5 import modeling_t5

import jax
import jax.numpy as jnp

import jax_impl
import torch_impl
from shared.config.model_config import ModelConfig
from shared.families.t5 import config_to_hf, is_tied, key_table
from shared.checkpoints.init import initial_tensors
from shared.parity.tolerances import FLOAT64_AGREEMENT, compare_stacks
from shared.checkpoints.weight_table import module_specs


def random_tensors(config: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """{our state-dict key: float32} with no 1s or 0s left where a swapped or missing term would hide."""
    tensors = initial_tensors(config, seed)
    rng = np.random.default_rng(seed + 1)
    for module, kind, shapes in module_specs(config):
        if kind == "rms_norm":
            key = f"{module}.weight"
            tensors[key] = (1.0 + 0.2 * rng.standard_normal(shapes["weight"])).astype(np.float32)
    return tensors


def hf_model(config: ModelConfig, tensors: dict[str, np.ndarray]) -> T5ForConditionalGeneration:
    """transformers' T5ForConditionalGeneration holding `tensors` (float32, eval mode).

    Built on the meta device (no random init to throw away: seconds at flan-t5-base size), then the
    tensors are assigned and the embedding names tied to `shared` as transformers ties them.
    """
    with torch.device("meta"):
        model = T5ForConditionalGeneration(T5Config(**config_to_hf(config)))
    hf = {hf_key: torch.from_numpy(np.array(tensors[ours])) for ours, hf_key in key_table(config).items()}
    lm_head = hf.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(hf, strict=False, assign=True)
    assert not unexpected, unexpected
    assert set(missing) <= {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}, missing
    model.encoder.embed_tokens = model.decoder.embed_tokens = model.shared
    # transformers 5 ties lm_head to the table whatever the config; an untied checkpoint is untied
    # on load (from_pretrained), here by hand
    model.lm_head.weight = model.shared.weight if lm_head is None else torch.nn.Parameter(lm_head)
    return model.eval()


def _rms_norm_in_input_dtype(self, hidden_states):
    """T5LayerNorm.forward with the variance in the input's dtype (HF's rounds it to float32 always)."""
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@contextlib.contextmanager
def float64_reference_norms():
    """While a float64 reference runs: HF's T5LayerNorm computes its variance in float32 even on
    float64 inputs, which would put a float32 rounding (~6e-8 relative) into the float64 formula
    check; here it stays float64 (the same formula, float32 inputs unaffected)."""
    original = modeling_t5.T5LayerNorm.forward
    modeling_t5.T5LayerNorm.forward = _rms_norm_in_input_dtype
    try:
        yield
    finally:
        modeling_t5.T5LayerNorm.forward = original


def hf_logits(model: T5ForConditionalGeneration, src: np.ndarray, tgt: np.ndarray, pad_id: int) -> np.ndarray:
    """Logits with the source mask passed explicitly and no decoder mask (HF's seq2seq training call)."""
    ids = torch.as_tensor(src, dtype=torch.long)
    if next(model.parameters()).dtype == torch.float64:
        with float64_reference_norms(), torch.no_grad():
            out = model(input_ids=ids, attention_mask=(ids != pad_id).long(), decoder_input_ids=torch.as_tensor(tgt, dtype=torch.long))
        return out.logits.numpy()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=(ids != pad_id).long(), decoder_input_ids=torch.as_tensor(tgt, dtype=torch.long))
    return out.logits.numpy()


def torch_pair(config: ModelConfig, tensors: dict[str, np.ndarray]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(float32 model, float64 model) of torch_impl."""
    low = torch_impl.from_numpy(config, tensors).eval()
    return low, torch_impl.from_numpy(config, {k: v.astype(np.float64) for k, v in tensors.items()}).eval()


def jax_logits(config: ModelConfig, tensors: dict[str, np.ndarray], src: np.ndarray, tgt: np.ndarray,
               dtype=np.float32) -> np.ndarray:
    """jax_impl logits in float32 or (under enable_x64) float64."""
    def run():
        params = jax_impl.params_from_state_dict(config, {k: v.astype(dtype) for k, v in tensors.items()})
        return np.asarray(_apply(jax_impl.build_model(config), params, jnp.asarray(src), jnp.asarray(tgt)))

    if dtype == np.float64:
        with jax.enable_x64(True):
            return run()
    return run()


@partial(jax.jit, static_argnums=0)
def _apply(model, params, src, tgt):
    return model.apply({"params": params}, src, tgt)


def check(name: str, ours_low, ref_low, ours_f64, ref_f64, precision: str = "float32") -> float:
    """Assert the scale-aware bound and the float64 formula agreement; return the bound's ratio."""
    comparison = compare_stacks(ours_low, ref_low, ours_f64, ref_f64, precision)
    assert comparison.ok, (
        f"{name}: max |diff| {comparison.max_abs:.3g} exceeds the bound {comparison.limit:.3g} "
        f"(own rounding error {comparison.own_error:.3g}, scale {comparison.scale:.3g})"
    )
    ours64, ref64 = np.asarray(ours_f64, np.float64), np.asarray(ref_f64, np.float64)
    scale = max(float(np.abs(ref64).max(initial=0.0)), 1e-300)
    relative = float(np.abs(ours64 - ref64).max(initial=0.0)) / scale
    assert relative <= FLOAT64_AGREEMENT, f"{name}: float64 results differ by {relative:.3g} relative (a formula difference)"
    return comparison.ratio
