"""Device, precision and Hypothesis setup for the parity tests.

`--device cpu|gpu` (env TWINFORMER_DEVICE, default cpu) and `--precision float32|tf32|bfloat16`
(env TWINFORMER_PRECISION, default float32) choose where both stacks run and the unit roundoff of
the scale-aware bound (shared/parity/tolerances.py). Matmul precision is pinned in both frameworks for the whole session
(PARITY_PITFALLS.md item 1). Hypothesis profile: env HYPOTHESIS_PROFILE, 'ci' (default), 'gpu' or 'nightly'.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from shared.parity.tolerances import DEVICES, PRECISIONS
from twinformer.devices import pin_precision

# -- Hypothesis ----------------------------------------------------------------------------------
# Examples are slow (each new shape is an XLA compile), so few of them in CI, and derandomized so a
# CI run is reproducible and its compiled programs come from the persistent cache on a rerun.
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=8, derandomize=True, print_blob=True, **_COMMON)
settings.register_profile("nightly", max_examples=200, print_blob=True, **_COMMON)
# On a GPU examples are cheap once compiled: more of them, and the real-size property draws up to
# full sizes (parity_tests/strategies.py, REAL_SIZE_LIMITS).
settings.register_profile("gpu", max_examples=24, derandomize=True, print_blob=True, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

JAX_CACHE_DIR = Path(os.environ.get("TWINFORMER_JAX_CACHE", Path.home() / ".cache" / "twinformer" / "jax"))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("twinformer parity")
    group.addoption(
        "--device",
        choices=DEVICES,
        default=os.environ.get("TWINFORMER_DEVICE", "cpu"),
        help="where both stacks run (env TWINFORMER_DEVICE; default cpu)",
    )
    group.addoption(
        "--precision",
        choices=PRECISIONS,
        default=os.environ.get("TWINFORMER_PRECISION", "float32"),
        help="float32 (matmuls pinned to full fp32), tf32, or bfloat16 weights (env TWINFORMER_PRECISION)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Reject an impossible device/precision request at once, before any test runs."""
    device, precision = config.getoption("--device"), config.getoption("--precision")
    if device not in DEVICES or precision not in PRECISIONS:  # values from the environment
        raise pytest.UsageError(
            f"--device must be one of {DEVICES} and --precision one of {PRECISIONS}; "
            f"got device={device!r} precision={precision!r} (check TWINFORMER_DEVICE/TWINFORMER_PRECISION)"
        )
    if device == "gpu":
        problems = _gpu_problems()
        if problems:
            # Fail, not skip: a GPU job whose every test is skipped would look like a pass.
            raise pytest.UsageError("--device gpu asked for, but " + "; ".join(problems))
    _enable_jax_compilation_cache()


def _gpu_problems() -> list[str]:
    import jax
    import torch

    problems = []
    if not torch.cuda.is_available():
        problems.append(f"PyTorch {torch.__version__} sees no CUDA device")
    try:
        jax.devices("gpu")
    except RuntimeError as error:
        problems.append(f"JAX {jax.__version__} sees no GPU ({error})")
    return problems


def _enable_jax_compilation_cache() -> None:
    """Persistent XLA cache: a rerun of the (derandomized) suite skips most compiles."""
    import jax

    if os.environ.get("TWINFORMER_JAX_CACHE") == "":  # explicitly disabled
        return
    JAX_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(JAX_CACHE_DIR))
    # Cache even the tiny programs of these tests (by default only compiles >= 1 s are kept).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def parity_env(pytestconfig: pytest.Config):
    """The ParityEnv of this run, with precision pinned in both frameworks."""
    import jax
    import torch

    from parity_tests.helpers import ParityEnv

    device, precision = pytestconfig.getoption("--device"), pytestconfig.getoption("--precision")
    pin_precision(precision)  # PARITY_PITFALLS.md item 1, in both frameworks
    return ParityEnv(
        device=device,
        precision=precision,
        torch_device=torch.device("cuda" if device == "gpu" else "cpu"),
        jax_device=jax.devices("gpu" if device == "gpu" else "cpu")[0],
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """Strict JAX dtype promotion inside every parity test: a silent upcast is an error here.

    Env TWINFORMER_JAX_PROMOTION=standard turns it off (to measure while a strictness failure
    is being fixed). Rank promotion is not made strict: jax_impl adds (L, D) position tables and
    (D,) norm parameters to (B, L, D) activations by implicit broadcasting.
    """
    import jax

    with jax.numpy_dtype_promotion(os.environ.get("TWINFORMER_JAX_PROMOTION", "strict")):
        yield


def pytest_sessionfinish(session: pytest.Session) -> None:
    """On an xdist worker: hand this worker's measurements to the controller, which prints the table."""
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        import dataclasses

        from parity_tests.helpers import MEASUREMENTS

        workeroutput["parity_measurements"] = {prop: dataclasses.asdict(w) for prop, w in MEASUREMENTS.items()}


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown without xdist
def pytest_testnodedown(node, error) -> None:
    """On the xdist controller: fold a finished worker's measurements into this process's (worst ratio wins)."""
    from parity_tests.helpers import MEASUREMENTS

    for prop, theirs in getattr(node, "workeroutput", {}).get("parity_measurements", {}).items():
        worst = MEASUREMENTS[prop]
        worst.count += theirs["count"]
        worst.largest_abs = max(worst.largest_abs, theirs["largest_abs"])
        if theirs["ratio"] >= worst.ratio:
            worst.ratio, worst.max_abs, worst.limit, worst.where = (theirs[k] for k in ("ratio", "max_abs", "limit", "where"))


def pytest_terminal_summary(terminalreporter) -> None:
    """Print the largest torch-vs-jax differences seen per property (for the parity report).

    Env TWINFORMER_PARITY_JSON=path also writes them as JSON (benchmarks/gpu_parity.py reads it).
    """
    from parity_tests.helpers import MEASUREMENTS, format_measurements

    if os.environ.get("TWINFORMER_PARITY_JSON"):
        import dataclasses
        import json

        rows = {prop: dataclasses.asdict(worst) for prop, worst in MEASUREMENTS.items()}
        Path(os.environ["TWINFORMER_PARITY_JSON"]).write_text(json.dumps(rows, indent=1))
    if MEASUREMENTS:
        device = terminalreporter.config.getoption("--device")
        precision = terminalreporter.config.getoption("--precision")
        terminalreporter.write_sep("-", f"largest torch-vs-jax differences ({device}, {precision})")
        terminalreporter.write_line(format_measurements())
