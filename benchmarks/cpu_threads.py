"""Seconds per training step on the CPU for a few thread counts, idle and beside a busy process.

Each measurement is a fresh subprocess (XLA reads its thread flags once, at import) that builds the
run's backend exactly as `twinformer train --threads N` does (twinformer/threads.py), trains
--warmup steps untimed (jit compiles, allocator warm-up), then times --steps steps on the run's
real batches. "busy" starts one pure-Python busy loop per --busy core beside it, standing in for
the other jobs of a shared machine. Timings are reported, never asserted.

python -m benchmarks.cpu_threads --config configs/toy.json [--framework torch jax] [--threads 1 0]
    [--steps 40 --warmup 5] [--busy 1] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BUSY_LOOP = "while True: pass"


def measure_one(config_path: str, framework: str, threads: int, steps: int, warmup: int) -> float:
    """Seconds per step in this process (call once, in a fresh process)."""
    from twinformer.threads import apply_threads

    apply_threads(threads)  # before torch / jax are imported
    from shared.training.train_config import TrainConfig
    from shared.training.loop import init_weights, load_pairs, make_sampler, make_tokenizer, resolve_total_steps
    from twinformer.backends import make_backend

    config = TrainConfig.load(config_path)
    pairs = load_pairs(config, "train")
    tokenizer = make_tokenizer(config, pairs)
    model_config = config.resolve_model_config(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    sampler = make_sampler(config, tokenizer, pairs)
    total = max(resolve_total_steps(config, sampler), warmup + steps)  # the run's schedule (cosine needs its length)
    backend = make_backend(framework, model_config, config, total, init_weights(config, model_config))
    stream = sampler.stream()
    batches = [next(stream) for _ in range(warmup + steps)]
    for batch in batches[:warmup]:
        float(backend.train_step(batch)["loss"])
    start = time.perf_counter()
    for batch in batches[warmup:]:
        metrics = backend.train_step(batch)
    float(metrics["loss"])  # wait for the device queue
    return (time.perf_counter() - start) / steps


def run_case(args: argparse.Namespace, framework: str, threads: int, busy: int) -> dict:
    load_before = os.getloadavg()[0]  # other users of a shared machine show here
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
    try:
        command = [sys.executable, "-m", "benchmarks.cpu_threads", "--one", "--config", args.config,
                   "--framework", framework, "--threads", str(threads), "--steps", str(args.steps),
                   "--warmup", str(args.warmup)]  # fmt: skip
        out = subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ}).stdout
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    seconds = float(out.strip().splitlines()[-1])
    return {"framework": framework, "threads": threads, "busy_processes": busy, "s_per_step": seconds,
            "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--framework", nargs="+", default=["torch", "jax"], choices=("torch", "jax"))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 0], help="0: the libraries' default")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--busy", type=int, default=1, help="busy-loop processes in the 'busy' cases")
    parser.add_argument("--json", type=Path, metavar="OUT")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the measuring child
    args = parser.parse_args()
    if args.one:
        print(measure_one(args.config, args.framework[0], args.threads[0], args.steps, args.warmup))
        return
    rows = []
    for framework in args.framework:
        for busy in (0, args.busy):
            for threads in args.threads:
                row = run_case(args, framework, threads, busy)
                rows.append(row)
                print(f"{framework:5s} threads {threads} ({'default' if threads == 0 else 'set'}), "
                      f"busy processes {busy}: {1000 * row['s_per_step']:.1f} ms/step (load {row['load_1min']})", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"config": args.config, "cpu_count": os.cpu_count(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
