"""The one table of parity tolerances, keyed by (device, precision).

A pair of arrays agrees when |torch - jax| <= atol + rtol * |torch| element-wise (numpy.allclose
semantics). Each row says what it covers and why it is that size. Never loosen a row to make a
failure go away: find the numerical cause first (shared/docs: PARITY_PITFALLS.md, item 8).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEVICES = ("cpu", "gpu")
PRECISIONS = ("float32", "tf32", "bfloat16")


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    why: str


TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("cpu", "float32"): Tolerance(
        atol=1e-5,
        rtol=1e-5,
        why=(
            "Same math, different kernels: MKL/oneDNN (torch) and Eigen/XLA (jax) sum matmul "
            "products in different orders and use different exp/erf/rsqrt code, so each op "
            "differs by a few float32 ulps (1.2e-7 relative); through a few tiny-config layers "
            "that grows to ~1e-6 on values of order one. 1e-5 is the issue's bar and leaves ~10x "
            "headroom while still catching any real formula difference (a wrong epsilon, GELU "
            "flavour, mask value or biased/unbiased std each give >=1e-4). Measured (parity_tests, ci "
            "profile, 485 module outputs, 163 gradients): max |torch - jax| 3.3e-6 forward, "
            "1.0e-6 gradients; worst excess 0.11."
        ),
    ),
    ("gpu", "float32"): Tolerance(
        atol=1e-5,
        rtol=1e-5,
        why=(
            "GPU with matmul precision pinned to full float32 on both sides "
            "(jax_default_matmul_precision='highest', torch allow_tf32=False): cuBLAS kernels "
            "differ from XLA's in summation order only, as on CPU. Measured on an H100 (ci profile): "
            "max |torch - jax| 4.7e-6 forward, 9.5e-7 gradients; worst excess 0.06."
        ),
    ),
    ("gpu", "tf32"): Tolerance(
        atol=2e-2,
        rtol=2e-2,
        why=(
            "TF32 matmuls keep 10 mantissa bits (relative rounding ~5e-4 per product input); "
            "the two stacks round in different kernels, so sums over D ~ 32..64 terms and a few "
            "layers differ by ~1e-3..1e-2 on values of order one. Measured on an H100 (ci "
            "profile): max |torch - jax| 7.6e-3 forward, 9.7e-4 gradients; worst excess 0.08."
        ),
    ),
    ("cpu", "bfloat16"): Tolerance(
        atol=1e-1,
        rtol=5e-2,
        why=(
            "bfloat16 keeps 8 mantissa bits (relative rounding 3.9e-3). Each stack rounds "
            "intermediate results at different points (torch CPU kernels accumulate in float32 "
            "and round per op; XLA fuses several ops before rounding), so single ops already "
            "differ by 1 bf16 ulp and a few layers reach several ulps on values of order one. "
            "Measured (ci profile): max |torch - jax| 0.16 forward (logits), 3.1e-2 gradients; "
            "worst excess 0.84: this row has the least headroom."
        ),
    ),
    ("gpu", "bfloat16"): Tolerance(
        atol=1e-1,
        rtol=5e-2,
        why=(
            "As the CPU bfloat16 row: the rounding points differ between cuBLAS/torch and XLA. "
            "Measured on an H100 (ci profile): max |torch - jax| 0.125 forward, 3.1e-2 gradients; "
            "worst excess 0.21."
        ),
    ),
}


def tolerance(device: str, precision: str) -> Tolerance:
    if (device, precision) not in TOLERANCES:
        known = ", ".join(f"{d}/{p}" for d, p in TOLERANCES)
        raise KeyError(f"no tolerance row for device={device!r} precision={precision!r}; rows: {known}")
    return TOLERANCES[(device, precision)]


def excess(torch_value: np.ndarray, jax_value: np.ndarray, tol: Tolerance) -> float:
    """max(|a - b| - rtol*|a|) / atol: <= 1 means within tolerance (the worst element's ratio)."""
    a = np.asarray(torch_value, dtype=np.float64)
    b = np.asarray(jax_value, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: torch {a.shape} vs jax {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max((np.abs(a - b) - tol.rtol * np.abs(a)) / tol.atol))


# Weights after an Adam trajectory are not held to a row: Adam divides each gradient by its own
# running RMS, so where a gradient is rounding noise (attention key biases, whose exact gradient is
# zero because softmax ignores a shift shared by all keys; near-dead ReLU units) each stack's noise
# becomes a full lr-sized step of random sign (PARITY_PITFALLS.md item 7). Measured after 50 steps
# at lr 1e-3, float32: key biases ~2e-3 apart (excluded from the comparison), every other tensor
# <= 3.2e-4. A formula difference (eps placement, bias correction, decay) moves weights by ~lr per
# step, i.e. ~5e-2 over 50 steps, so 100 x the row's atol (1e-3 at float32) separates the two.
TRAJECTORY_WEIGHT_FACTOR = 100.0


def trajectory_weight_bound(tol: Tolerance) -> float:
    """Largest |torch - jax| allowed on weights (key biases excluded) after an Adam trajectory."""
    return TRAJECTORY_WEIGHT_FACTOR * tol.atol


# ==================================================================================================
# Scale-aware bounds (issue #8), replacing the absolute rows above (callers are being ported).
#
# Why: the rows above assume values of order one. On real models (base size, scaled embeddings,
# default init scales, logits near 70) the rounding difference of the two stacks grows with the
# magnitudes, the contraction lengths, the cancellation inside each dot product and the softmax's
# amplification of large scores, so a fixed atol either cries wolf or, raised, hides bugs.
#
# Derivation (running error analysis; Higham, "Accuracy and Stability of Numerical Algorithms",
# sec. 3.3 and ch. 4). Let y be a tensor computed by the same formula in both stacks in a low
# precision (u = unit roundoff), and y* the exact value. Each stack's forward error e = |y - y*| is
# a sum of roundings: for a dot product of K terms ~u*sqrt(K)*(|a|.|x|) with random-sign errors
# (Higham & Mary 2019), amplified or damped by everything downstream (a softmax turns an absolute
# score error into a relative probability error; a norm divides by the std). Rather than model every
# such factor a priori, both stacks are run once more in float64, where the same formulas agree to
# ~1e-14 relative (a formula difference shows up there as orders of magnitude more), and each
# stack's own rounding error is measured at the actual magnitudes:
#     e_torch = max |torch_low - torch_f64|,   e_jax = max |jax_low - jax_f64|.
# Two implementations that round differently differ by at most e_torch + e_jax, and by about
# sqrt(2) * e when their errors are independent. The bound is then
#
#     |torch_low - jax_low|_max  <=  C_OWN * max(e_torch, e_jax)  +  C_FLOOR * u_store * scale
#
# C_OWN = 4: 2 for the sum of two errors of that size, 2 for the tail of the max over a tensor.
# The floor covers ops that are exact in one stack and rounded once in the other (a lookup, a cast):
# a couple of storage roundings at the tensor's scale (max |y_f64|).
# A planted formula difference does not change either stack's own rounding error (each stack is
# compared with itself), so it is caught as soon as it exceeds a few roundings: see
# parity_tests/test_planted_bugs.py for each bug's margin.
# Measured (2-core CPU, `twinformer parity --preset base`, 235 module outputs): the largest
# |torch - jax| / (max(e_torch, e_jax) + 2 u scale) is 1.47 in float32 and 1.59 in bfloat16
# (attention probabilities); float64 outputs agree to 3e-14 relative.
# ==================================================================================================

UNIT_ROUNDOFF: dict[str, float] = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "tf32": 2.0**-24,  # tf32 rounds matmul inputs only; tensors between ops stay float32
    "bfloat16": 2.0**-8,
    "float16": 2.0**-11,
}
C_OWN = 4.0
C_FLOOR = 2.0


@dataclass(frozen=True)
class Comparison:
    """One tensor compared across the stacks under the scale-aware bound."""

    max_abs: float  # max |torch_low - jax_low|
    limit: float  # the bound for this tensor
    own_error: float  # max(e_torch, e_jax): the stacks' own rounding error at these magnitudes
    scale: float  # max |reference_f64|

    @property
    def ratio(self) -> float:
        """max |torch - jax| / bound: <= 1 means within the bound."""
        return self.max_abs / self.limit if self.limit > 0 else (0.0 if self.max_abs == 0 else float("inf"))

    @property
    def ok(self) -> bool:
        return self.ratio <= 1.0


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def scale_aware_limit(precision: str, scale: float, own_error: float) -> float:
    """C_OWN * own_error + C_FLOOR * u_store(precision) * scale."""
    if precision not in UNIT_ROUNDOFF:
        raise KeyError(f"unknown precision {precision!r}; known: {', '.join(UNIT_ROUNDOFF)}")
    return C_OWN * own_error + C_FLOOR * UNIT_ROUNDOFF[precision] * scale


def compare_stacks(torch_low, jax_low, torch_f64, jax_f64, precision: str) -> Comparison:
    """Compare the two stacks' low-precision outputs, bounded by their own float64-measured errors.

    `precision` names how tensors are stored between ops (float32, tf32, bfloat16, float16).
    """
    a, b, a64, b64 = _f64(torch_low), _f64(jax_low), _f64(torch_f64), _f64(jax_f64)
    if not a.shape == b.shape == a64.shape == b64.shape:
        raise ValueError(f"shape mismatch: {a.shape}, {b.shape}, {a64.shape}, {b64.shape}")
    if a.size == 0:
        return Comparison(0.0, 0.0, 0.0, 0.0)
    own = max(float(np.abs(a - a64).max()), float(np.abs(b - b64).max()))
    scale = float(np.abs(a64).max())
    diff = np.abs(a - b)
    max_abs = float(diff.max()) if np.all(np.isfinite(diff)) else float("inf")
    return Comparison(max_abs, scale_aware_limit(precision, scale, own), own, scale)

# Float64 runs of two implementations of one formula agree to ~1e-14 of the tensor's scale (see the
# measurement above); anything beyond this bound is a formula difference, not rounding. Used with
# compare_stacks when a test also checks the float64 outputs themselves (the causal-LM tests).
FLOAT64_AGREEMENT = 1e-12
