"""Rotary position scalings (Llama 3, linear, dynamic NTK, YaRN): the frequencies and the cos/sin
factor, in numpy, following transformers' `modeling_rope_utils` rope_init_fns (the reference).

Every scaling here only changes the rotary tables (inv_freq, and YaRN's attention factor, which HF
multiplies into cos and sin), so both stacks get it through `shared/families/causal_lm.rope_tables`
and need no code of their own. HF computes inv_freq in float32 tensor arithmetic with Python
scalars cast to float32; the steps below are the same float32 operations in the same order (torch's
float32 pow may differ from numpy's by one ulp in a few entries: a rounding, inside the bound).

`dynamic` (dynamic NTK): HF recomputes inv_freq only when a sequence runs past
max_position_embeddings; for every shorter sequence it is the unscaled table. Our tables hold
max_len = max_position_embeddings positions, so for every position a model accepts the dynamic
table is HF's exactly (computed here with HF's formula at seq_len = max_position_embeddings, which
leaves the base unchanged). Longer inputs, where HF would rescale every position, are past our tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

f32 = np.float32

# {rope_type: (required HF keys, optional HF keys)}, as HF's _validate_<type>_rope_parameters
# (rope_theta and rope_type are handled by the caller)
ROPE_TYPE_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "linear": (frozenset({"factor"}), frozenset()),
    "dynamic": (frozenset({"factor"}), frozenset()),
    "llama3": (frozenset({"factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"}),
               frozenset()),
    "yarn": (frozenset({"factor", "original_max_position_embeddings"}),
             frozenset({"attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"})),
}


@dataclass(frozen=True)
class RopeScaling:
    """One scaling of the rotary frequencies, with HF's rope_parameters names (None: not given)."""

    rope_type: str
    factor: float | None = None
    original_max_position_embeddings: int | None = None
    low_freq_factor: float | None = None  # llama3
    high_freq_factor: float | None = None  # llama3
    attention_factor: float | None = None  # yarn: multiplies cos and sin (None: from factor and mscale)
    beta_fast: float | None = None  # yarn
    beta_slow: float | None = None  # yarn
    mscale: float | None = None  # yarn
    mscale_all_dim: float | None = None  # yarn
    truncate: bool | None = None  # yarn (HF's default: True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RopeScaling":
        from shared.json_config import ConfigError

        if not isinstance(data, dict) or not isinstance(data.get("rope_type"), str):
            raise ConfigError(f"rope_scaling must be an object with a rope_type, got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown rope_scaling field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def given(self) -> dict[str, Any]:
        """The fields that are set, by HF name (what rope_parameters holds besides rope_theta)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def problems(self, max_len: int) -> list[str]:
        if self.rope_type not in ROPE_TYPE_KEYS:
            return [f"rope_scaling: unknown rope_type {self.rope_type!r}; supported: {', '.join(ROPE_TYPE_KEYS)}"]
        required, optional = ROPE_TYPE_KEYS[self.rope_type]
        given = set(self.given()) - {"rope_type"}
        found = [f"rope_scaling {self.rope_type} needs {key}" for key in sorted(required - given)]
        found += [f"rope_scaling {self.rope_type} takes no {key}" for key in sorted(given - required - optional)]
        for key in given - {"truncate"}:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                found.append(f"rope_scaling {key} must be a positive number, got {value!r}")
        if self.truncate is not None and not isinstance(self.truncate, bool):
            found.append(f"rope_scaling truncate must be a bool, got {self.truncate!r}")
        if found:
            return found
        if self.factor < 1:
            found.append(f"rope_scaling factor must be >= 1, got {self.factor!r}")
        if self.rope_type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            found.append(f"rope_scaling high_freq_factor ({self.high_freq_factor}) must exceed low_freq_factor "
                         f"({self.low_freq_factor})")
        if self.original_max_position_embeddings is not None and not isinstance(self.original_max_position_embeddings, int):
            found.append("rope_scaling original_max_position_embeddings must be an integer")
        return found


def default_inv_freq(theta: float, K: int) -> np.ndarray:
    """(K/2,) float32: 1 / theta ** (2i / K), HF's float32 steps."""
    exponents = np.arange(0, K, 2, dtype=np.int64).astype(f32) / f32(K)
    return (f32(1.0) / (f32(theta) ** exponents)).astype(f32)


def _linear(theta: float, K: int, s: RopeScaling, max_len: int) -> tuple[np.ndarray, float]:
    return default_inv_freq(theta, K) / f32(s.factor), 1.0


def _dynamic(theta: float, K: int, s: RopeScaling, max_len: int) -> tuple[np.ndarray, float]:
    seq_len = max_len  # the longest sequence the tables serve; HF rescales only beyond max_position_embeddings
    base = theta * ((s.factor * seq_len / max_len) - (s.factor - 1)) ** (K / (K - 2))
    return default_inv_freq(base, K), 1.0


def _llama3(theta: float, K: int, s: RopeScaling, max_len: int) -> tuple[np.ndarray, float]:
    inv_freq = default_inv_freq(theta, K)  # (K/2,)
    factor, low, high, old = s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_position_embeddings
    low_freq_wavelen, high_freq_wavelen = f32(old / low), f32(old / high)
    # torch evaluates scalar / tensor as tensor.reciprocal() * scalar: the same two roundings here
    wavelen = (f32(1) / inv_freq) * f32(2 * math.pi)
    # long wavelengths (low frequencies) are divided by factor, short ones kept, the band between smoothed
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / f32(factor), inv_freq)
    smooth = ((f32(1) / wavelen) * f32(old) - f32(low)) / f32(high - low)
    smoothed = (f32(1) - smooth) * scaled / f32(factor) + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(medium, smoothed, scaled).astype(f32), 1.0


def yarn_attention_factor(s: RopeScaling, max_len: int) -> float:
    """HF's YaRN cos/sin factor: given, or 0.1 ln(factor) + 1 (or its mscale ratio)."""
    factor = s.factor if s.factor is not None else max_len / s.original_max_position_embeddings

    def get_mscale(scale: float, mscale: float = 1) -> float:
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    if s.attention_factor is not None:
        return s.attention_factor
    if s.mscale and s.mscale_all_dim:
        return float(get_mscale(factor, s.mscale) / get_mscale(factor, s.mscale_all_dim))
    return get_mscale(factor)


def _yarn(theta: float, K: int, s: RopeScaling, max_len: int) -> tuple[np.ndarray, float]:
    factor = s.factor if s.factor is not None else max_len / s.original_max_position_embeddings
    beta_fast, beta_slow = s.beta_fast or 32, s.beta_slow or 1

    def correction_dim(rotations: float) -> float:  # the dim whose wavelength fits `rotations` times
        return (K * math.log(s.original_max_position_embeddings / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.truncate is None or s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, K - 1)
    if low == high:
        high += 0.001  # HF: prevents a division by zero
    pos_freqs = f32(theta) ** (np.arange(0, K, 2).astype(f32) / f32(K))  # (K/2,)
    extrapolation, interpolation = f32(1.0) / pos_freqs, f32(1.0) / (f32(factor) * pos_freqs)
    ramp = np.clip((np.arange(K // 2, dtype=f32) - f32(low)) / f32(high - low), f32(0), f32(1))
    extrapolation_share = f32(1) - ramp  # 1: high frequencies kept, 0: low ones interpolated
    inv_freq = interpolation * (f32(1) - extrapolation_share) + extrapolation * extrapolation_share
    return inv_freq.astype(f32), yarn_attention_factor(s, max_len)


# rope_type -> (theta, K, scaling, max_len) -> (inv_freq (K/2,) float32, cos/sin factor)
INV_FREQ = {"linear": _linear, "dynamic": _dynamic, "llama3": _llama3, "yarn": _yarn}


def inv_freq_and_factor(theta: float, K: int, scaling: RopeScaling | None, max_len: int) -> tuple[np.ndarray, float]:
    """The rotary frequencies (K/2,) float32 and the factor HF multiplies cos and sin by."""
    if scaling is None:
        return default_inv_freq(theta, K), 1.0
    return INV_FREQ[scaling.rope_type](theta, K, scaling, max_len)
