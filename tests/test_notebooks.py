"""The teaching notebooks (notebooks/ch*.py) run as scripts and every agreement check in them holds.

Each notebook runs in its own process, as a reader would run it, so a failing `agree`/`same` (or any
error) fails the test with the notebook's output. Sizes inside are tiny: ~12 s of CPU each, about
half of it XLA compiles, which the parity tests' persistent cache (TWINFORMER_JAX_CACHE; "" turns it
off) skips on a rerun.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from docs.notebook_cells import notebook_paths

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"


def _jax_cache_env() -> dict[str, str]:
    """The parity tests' persistent XLA cache (parity_tests/conftest.py), through JAX's env settings."""
    cache = os.environ.get("TWINFORMER_JAX_CACHE", str(Path.home() / ".cache" / "twinformer" / "jax"))
    if cache == "":
        return {}
    return {
        "JAX_COMPILATION_CACHE_DIR": cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",  # keep even the tiny programs
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def _load_check_module():
    spec = importlib.util.spec_from_file_location("notebook_check", NOTEBOOKS / "_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", notebook_paths(NOTEBOOKS), ids=lambda p: p.stem)
def test_notebook_runs_and_its_checks_pass(path: Path, tmp_path: Path) -> None:
    path_env = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, **_jax_cache_env(), "PYTHONPATH": path_env}
    result = subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{path.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert "ratio" in result.stdout  # the agreement checks ran and reported


def test_check_helpers_reject_disagreement() -> None:
    """The notebooks' checks can fail: beyond the bound, or any differing id, raises."""
    check = _load_check_module()
    a = np.linspace(-2.0, 2.0, 12, dtype=np.float32)
    limit = check.scale_aware_limit("float32", 2.0, check.own_error_estimate(2.0))  # scale = max |a| = 2
    assert check.agree("within the bound", a, a + np.float32(0.5 * limit)) <= 1.0
    with pytest.raises(AssertionError, match="beyond the bound"):
        check.agree("beyond the bound", a, a + np.float32(2 * limit))
    with pytest.raises(AssertionError, match="shapes differ"):
        check.agree("shapes", a, a[:-1])
    with pytest.raises(AssertionError):
        check.same("token ids", np.array([1, 2, 3]), np.array([1, 2, 4]))
    with pytest.raises(AssertionError):
        check.same("bytes", b"abc", b"abd")
