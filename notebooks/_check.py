"""The notebooks' one cross-stack comparison, so the tolerance rule can change in one place.

Every "do the two stacks agree?" cell calls `agree` (floating-point values, held to the project's
tolerance row in shared/tolerances.py) or `same` (ids, masks, tokens, bytes: equal exactly).
"""

from __future__ import annotations

import numpy as np

from shared.tolerances import excess, tolerance

# The notebooks run on the CPU in float32 (tiny sizes, CI): this is the row that applies.
TOL = tolerance("cpu", "float32")


def as_numpy(value) -> np.ndarray:
    """A torch tensor, jax array or numpy array as a numpy array (torch: detached, on the CPU)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def agree(what: str, torch_value, jax_value) -> float:
    """Assert torch and jax agree within the tolerance row; print the worst difference; return its excess."""
    a, b = as_numpy(torch_value), as_numpy(jax_value)
    over = excess(a, b, TOL)  # also checks the shapes match
    diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
    print(f"{what}: shapes {a.shape}, max |torch - jax| = {diff:.2e}, excess {over:.3f} (<= 1 agrees)")
    assert over <= 1.0, f"{what}: torch and jax differ beyond atol={TOL.atol:g} rtol={TOL.rtol:g} (excess {over:.3g})"
    return over


def same(what: str, torch_value, jax_value) -> None:
    """Assert two integer/bool arrays (or byte strings) are identical."""
    if isinstance(torch_value, bytes):
        assert torch_value == jax_value, f"{what}: the bytes differ"
        print(f"{what}: identical ({len(torch_value)} bytes)")
        return
    a, b = as_numpy(torch_value), as_numpy(jax_value)
    assert a.shape == b.shape and np.array_equal(a, b), f"{what}: torch {a.tolist()} != jax {b.tolist()}"
    print(f"{what}: identical, shape {a.shape}")
