"""The notebooks' one cross-stack comparison, so the tolerance rule can change in one place.

Every "do the two stacks agree?" cell calls `agree` (floating-point values, held to the project's
scale-aware bound of shared/parity/tolerances.py, with an a-priori own error) or `same` (ids, masks, tokens, bytes: equal exactly).
"""

from __future__ import annotations

import numpy as np

from shared.parity.tolerances import apriori_own_error, scale_aware_limit

# The project's bound (shared/parity/tolerances.py) is C_OWN * (each stack's own rounding error) + a floor,
# where the suite measures the own error with float64 twin runs. The notebooks keep to one run per
# stack, so they use the a-priori size of that error instead: their modules are tiny (contractions
# of at most 64 terms, a few ops deep), so a stack's own float32 error is at most about
# sqrt(64) * DEPTH roundings of the tensor's scale.
MAX_CONTRACTION, DEPTH = 64, 4


def own_error_estimate(scale: float) -> float:
    return apriori_own_error("float32", scale, MAX_CONTRACTION, DEPTH)


def as_numpy(value) -> np.ndarray:
    """A torch tensor, jax array or numpy array as a numpy array (torch: detached, on the CPU)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def agree(what: str, torch_value, jax_value) -> float:
    """Assert torch and jax agree within the bound; print the worst difference; return difference / bound."""
    a, b = as_numpy(torch_value).astype(np.float64), as_numpy(jax_value).astype(np.float64)
    assert a.shape == b.shape, f"{what}: shapes differ, torch {a.shape} vs jax {b.shape}"
    scale = float(np.max(np.abs(a), initial=0.0))
    limit = scale_aware_limit("float32", scale, own_error_estimate(scale))
    diff = float(np.max(np.abs(a - b), initial=0.0))
    ratio = diff / limit if limit > 0 else (0.0 if diff == 0 else float("inf"))
    print(f"{what}: shapes {a.shape}, max |torch - jax| = {diff:.2e}, bound {limit:.2e}, ratio {ratio:.3f} (<= 1 agrees)")
    assert ratio <= 1.0, f"{what}: torch and jax differ by {diff:.3g}, beyond the bound {limit:.3g}"
    return ratio


def same(what: str, torch_value, jax_value) -> None:
    """Assert two integer/bool arrays (or byte strings) are identical."""
    if isinstance(torch_value, bytes):
        assert torch_value == jax_value, f"{what}: the bytes differ"
        print(f"{what}: identical ({len(torch_value)} bytes)")
        return
    a, b = as_numpy(torch_value), as_numpy(jax_value)
    assert a.shape == b.shape and np.array_equal(a, b), f"{what}: torch {a.tolist()} != jax {b.tolist()}"
    print(f"{what}: identical, shape {a.shape}")
