"""The parity bound: how far the two stacks' outputs may differ, derived per tensor (below).

Every cross-stack comparison (parity tests, `twinformer parity`, benchmarks) goes through
`compare_stacks`. Never loosen a constant to make a failure go away: find the numerical cause
first (shared/docs: PARITY_PITFALLS.md, item 8).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEVICES = ("cpu", "gpu")
PRECISIONS = ("float32", "tf32", "bfloat16")  # the parity suite's --precision choices


# ==================================================================================================
# Scale-aware bounds (issue #8); they replaced a table of absolute (atol, rtol) rows per device and precision.
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
    "bf16-mixed": 2.0**-8,  # float32 master weights, activations stored in bf16 (shared/parity/mixed_precision.py)
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




def apriori_own_error(precision: str, scale: float, contraction: int, depth: int) -> float:
    """An upper estimate of one stack's own rounding error where no float64 twin run is made.

    A dot product of K terms errs by about u * sqrt(K) of its scale (the derivation above); a chain
    of `depth` such ops adds those errors up. Only for small models and short chains (notebooks,
    CLI smoke checks): the float64-measured error is the bound's real input everywhere else.
    """
    return float(np.sqrt(contraction)) * depth * UNIT_ROUNDOFF[precision] * scale

# Float64 runs of two implementations of one formula agree to ~1e-14 of the tensor's scale (measured:
# 3e-14 across the stacks, ~1e-13 against transformers' T5 over a few layers, 6e-16 against its
# GPT-2/Llama); anything beyond this bound is a formula difference, not rounding. Used with
# compare_stacks when a test also checks the float64 outputs themselves (T5, causal-LM tests).
# The bound is the worst measured agreement times one decade of headroom (deeper drawn models add
# a few roundings); parity_tests/test_tolerance_derivation.py holds it to that derivation, so the
# constant cannot drift looser without the measurement changing with it.
FLOAT64_MEASURED_WORST = 1e-13  # relative, transformers' T5 against ours in float64 (the largest above)
FLOAT64_HEADROOM = 10.0
FLOAT64_AGREEMENT = FLOAT64_MEASURED_WORST * FLOAT64_HEADROOM
