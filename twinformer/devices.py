"""Device and matmul-precision pinning shared by the parity tool, the tests and the benchmarks.

PARITY_PITFALLS.md item 1: JAX runs float32 matmuls on GPU in TF32 by default while PyTorch does
not; a parity run pins both sides to the same precision before comparing anything.
"""

from __future__ import annotations

from shared.parity.tolerances import PRECISIONS


def pin_precision(precision: str) -> None:
    """Set matmul precision in both frameworks: full fp32 for float32/bfloat16, TF32 for tf32."""
    import jax
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    tf32 = precision == "tf32"
    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if tf32 else "highest")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def torch_device(kind: str):
    import torch

    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("--device gpu asked for, but PyTorch sees no CUDA device")
    return torch.device("cuda")


def jax_device(kind: str):
    import jax

    if kind == "cpu":
        return jax.devices("cpu")[0]
    try:
        return jax.devices("gpu")[0]
    except RuntimeError as error:
        raise ValueError(f"--device gpu asked for, but JAX sees no GPU: {error}") from error
