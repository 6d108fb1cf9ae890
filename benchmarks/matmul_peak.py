"""Achieved matmul peak of this machine: best TFLOP/s of large square GEMMs, per framework and dtype.

A GEMM (M, K) @ (K, N) costs 2*M*K*N floating-point operations. The peak reported is the best
over sizes and repeats, so it is what the BLAS library in use actually reaches here, not a
datasheet number; model throughput is reported as a fraction of it.

CLI: python -m benchmarks.matmul_peak [--device cpu|gpu] [--dtype float32|bfloat16] [--sizes 1024 2048]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

DTYPES = ("float32", "bfloat16")
DEFAULT_SIZES = {"cpu": (1024, 2048, 3072), "gpu": (4096, 8192)}


def _best_tflops(run_once, size: int, repeats: int) -> float:
    """Best of `repeats` timed calls of run_once() (which must finish its GEMM before returning)."""
    run_once()  # warm-up: allocation, kernel selection / compilation
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run_once()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e12


def torch_matmul_peak(device: str = "cpu", dtype: str = "float32",
                      sizes: Sequence[int] | None = None, repeats: int = 5) -> dict:
    """{'tflops': best, 'by_size': {n: tflops}} of torch.mm on (n, n) matrices."""
    import torch

    from twinformer.devices import torch_device

    target = torch_device(device)
    torch_dtype = getattr(torch, dtype)
    sync = torch.cuda.synchronize if target.type == "cuda" else (lambda: None)
    by_size = {}
    for n in sizes or DEFAULT_SIZES[device]:
        gen = torch.Generator().manual_seed(n)
        a = torch.randn(n, n, generator=gen).to(target, torch_dtype)
        b = torch.randn(n, n, generator=gen).to(target, torch_dtype)

        def run_once(a=a, b=b):
            torch.mm(a, b)
            sync()

        by_size[n] = _best_tflops(run_once, n, repeats)
    return {"tflops": max(by_size.values()), "by_size": by_size}


def jax_matmul_peak(device: str = "cpu", dtype: str = "float32",
                    sizes: Sequence[int] | None = None, repeats: int = 5) -> dict:
    """{'tflops': best, 'by_size': {n: tflops}} of a jitted jnp.matmul on (n, n) matrices."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from twinformer.devices import jax_device

    target = jax_device(device)
    # Full precision for float32 (no TF32 passes on GPU), so the peak matches the pinned model run.
    matmul = jax.jit(lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST))
    by_size = {}
    for n in sizes or DEFAULT_SIZES[device]:
        rng = np.random.default_rng(n)
        a = jax.device_put(jnp.asarray(rng.standard_normal((n, n), dtype=np.float32), dtype), target)
        b = jax.device_put(jnp.asarray(rng.standard_normal((n, n), dtype=np.float32), dtype), target)
        by_size[n] = _best_tflops(lambda a=a, b=b: matmul(a, b).block_until_ready(), n, repeats)
    return {"tflops": max(by_size.values()), "by_size": by_size}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    for name, peak in (("torch", torch_matmul_peak), ("jax", jax_matmul_peak)):
        result = peak(args.device, args.dtype, args.sizes, args.repeats)
        sizes = ", ".join(f"{n}: {t:.3f}" for n, t in result["by_size"].items())
        print(f"{name:5s} {args.device} {args.dtype}: peak {result['tflops']:.3f} TFLOP/s  ({sizes})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
