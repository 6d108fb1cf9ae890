"""CPU thread counts for training and inference: one place that sets them for both stacks.

Why a default other than the libraries' own: torch and XLA start one compute thread per core. The
models trained on a CPU here are small (d_model 64-256), their ops too short to be worth splitting,
and on a machine shared with other work the threads wait on each other. Measured on the 2-core CI
box (benchmarks/cpu_threads.py; figures in the README, "CPU threads"): one torch thread was 4x
faster than torch's default on a quiet box and 12-20x faster beside other work; for JAX one thread
was 16% slower on a quiet box and 1.7x faster beside a busy process. So the default is
DEFAULT_CPU_THREADS; `--threads N` overrides it (0: the libraries' default, every core), and so
does $OMP_NUM_THREADS when set.

What the count controls:
  torch  OMP_NUM_THREADS=N (read at import) and torch.set_num_threads(N) if already imported.
  jax    XLA's CPU backend has no thread-count flag; N == 1 turns its multi-threaded Eigen
         kernels off (--xla_cpu_multi_thread_eigen=false, read when jax is first imported), any
         other N leaves XLA's default (every core). Must run before `import jax`.
GPU runs are unaffected (the count only applies to the host side).
"""

from __future__ import annotations

import os
import sys

DEFAULT_CPU_THREADS = 1
LIBRARY_DEFAULT = 0  # --threads 0: leave every library at its own default (one thread per core)
_XLA_SINGLE_THREAD = "--xla_cpu_multi_thread_eigen=false"


def resolve_threads(threads: int | None) -> int:
    """The count to use: `threads` if given, else $OMP_NUM_THREADS if set, else DEFAULT_CPU_THREADS."""
    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() else DEFAULT_CPU_THREADS
    if threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: the libraries' default), got {threads}")
    return threads


def apply_threads(threads: int | None) -> int:
    """Set the CPU thread count of both stacks (see resolve_threads); returns it (0: library default).

    Call before jax is imported: XLA reads its flags once. Torch reads OMP_NUM_THREADS when first
    imported, and an already imported torch is set directly; neither stack is imported here.
    """
    threads = resolve_threads(threads)
    if threads == LIBRARY_DEFAULT:
        return threads
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if threads == 1 and "jax" not in sys.modules:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:  # a user's own setting wins
            os.environ["XLA_FLAGS"] = f"{flags} {_XLA_SINGLE_THREAD}".strip()
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads


__all__ = ["DEFAULT_CPU_THREADS", "LIBRARY_DEFAULT", "apply_threads", "resolve_threads"]
