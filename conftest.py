"""Fixtures shared by tests/ and parity_tests/, and how the whole suite uses the machine's cores.

Threads: one per test process. The models here are tiny, their ops too short to be worth splitting
(twinformer/threads.py has the measurements), and the whole suite runs as one pytest-xdist worker
per core (below), so library threads on top would only fight the other worker for the same cores.
This runs before any conftest imports jax (XLA reads its flags once). $OMP_NUM_THREADS, when set,
still wins (0: the libraries' own defaults).

Workers: `python -m pytest -q` with no paths (the README's and CI's command: the whole suite from
`testpaths`) runs on one xdist worker per core, capped so that each worker has ~4 GiB of memory;
`$PYTEST_XDIST_AUTO_NUM_WORKERS` overrides the count. Naming tests or folders runs them in this one
process as usual, and `-n N` (`-n 0`: no workers) or `-p no:xdist` always decide. Files are kept
whole on one worker (`--dist loadfile`): tests of a file share module fixtures and compiled JAX
programs, which two workers would each rebuild.
"""

from __future__ import annotations

import os

import pytest

from twinformer.threads import apply_threads

apply_threads(None)  # before jax is imported: see the module doc

MEMORY_PER_WORKER = 4 * 2**30  # a worker holds 1.5-3 GiB; the flan-t5-base-shaped adapter test peaks near 11 GiB


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """The whole suite (no paths given) on one xdist worker per core, unless told otherwise."""
    option = config.option
    if (
        not config.pluginmanager.hasplugin("xdist")
        or hasattr(config, "workerinput")  # inside a worker already
        or getattr(option, "numprocesses", None) is not None  # -n given
        or config.args_source != pytest.Config.ArgsSource.TESTPATHS  # tests named: run them here
        or option.collectonly
        or option.usepdb
    ):
        return
    option.numprocesses = "auto"
    if option.dist == "no":
        option.dist = "loadfile"
        option.loadscopereorder = False  # files go out in the order pytest_collection_modifyitems gives


# The files that take longest, handed to the workers first so that the many short files fill in
# behind them and both workers finish together (xdist's own order, most tests first, can send
# few-test heavy files last). CPU seconds of each file in a cold 2-worker run on the shared 2-core
# machine (notes/README_suite-time.md; subprocesses included), heaviest first. Any file not named
# keeps its place after them; a renamed file only loses its head start.
SLOW_FILES_FIRST = (
    "parity_tests/test_planted_bugs.py",  # 154
    "parity_tests/test_jax_generate.py",  # 124
    "tests/test_scale_out.py",  # 107
    "parity_tests/test_gradients.py",  # 98
    "tests/test_benchmarks_smoke.py",  # 92
    "tests/test_gpu_speed_script.py",  # 86
    "parity_tests/test_forward.py",  # 85
    "parity_tests/test_training_parity.py",  # 74
    "parity_tests/test_lora.py",  # 72
    "tests/test_jax_mixed_precision.py",  # 65
    "parity_tests/test_decoding.py",  # 65
    "tests/test_translation_result.py",  # 64
    "parity_tests/test_jax_attention.py",  # 63
    "tests/test_notebooks.py",  # 62
    "parity_tests/test_lora_training.py",  # 61
    "tests/test_gpu_scaleout_script.py",  # 54
    "parity_tests/test_t5_book_adapter.py",  # 53
    "tests/test_demo.py",  # 52
    "tests/test_finetune.py",  # 51
    "parity_tests/test_causal_lm.py",  # 48
    "parity_tests/test_t5_parity.py",  # 48
    "tests/test_training.py",  # 44
    "parity_tests/test_book_import.py",  # 42
    "parity_tests/test_fast_paths.py",  # 42
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker: the slowest files first (SLOW_FILES_FIRST), every other test in its collection order.

    Every worker collects and sorts the same way (xdist checks that the collections agree); a run
    in one process keeps pytest's order."""
    if not hasattr(config, "workerinput"):
        return
    rank = {path: i for i, path in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """One worker per usable core, at most one per MEMORY_PER_WORKER of RAM ($PYTEST_XDIST_AUTO_NUM_WORKERS wins)."""
    env = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "")
    if env.isdigit():
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (not Linux/macOS): cores only
        return max(1, cores)
    return max(1, min(cores, memory // MEMORY_PER_WORKER))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models train fastest on one thread; two threads on a busy 2-core CI box thrash."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
