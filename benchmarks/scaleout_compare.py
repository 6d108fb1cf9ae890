"""Compare the runs benchmarks/gpu_scaleout.sh made: each sharded run against the single-device run.

For every run directory RUNS/<framework>-<layout>: the largest per-step training-loss difference
from the single-device run (`torch-single` / `jax-single`; a run resumed from another framework's
checkpoint is compared with that framework's run, whose trajectory it continues) over the steps
both logged, and the largest difference of the final weights. Prints one line per run, and JSON.
Differences are reported, not judged: the scale-aware bound needs a float64 run, which the CPU
tests make (tests/test_scale_out.py); on a GPU, compare these with the float32 CPU figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from shared.training.metrics_log import METRICS_FILE, read_metrics
from shared.training.run_checkpoint import load_run_checkpoint


def step_losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run / METRICS_FILE) if r["kind"] == "train"}


def reference_of(name: str) -> str:
    """The single-device run whose trajectory `name` follows ("jax-fsdp-from-torch-ddp" -> torch-single)."""
    source = name.split("-from-", 1)[1] if "-from-" in name else name
    return f"{source.split('-')[0]}-single"


def compare(runs: Path) -> dict[str, dict]:
    found = sorted(p.name for p in runs.iterdir() if (p / METRICS_FILE).is_file())
    result = {}
    for name in found:
        ref = reference_of(name)
        if name == ref or ref not in found:
            continue
        a, b = step_losses(runs / name), step_losses(runs / ref)
        steps = sorted(set(a) & set(b))
        wa, wb = load_run_checkpoint(runs / name).tensors, load_run_checkpoint(runs / ref).tensors
        result[name] = {
            "reference": ref,
            "steps_compared": len(steps),
            "max_loss_diff": max((abs(a[s] - b[s]) for s in steps), default=None),
            "final_loss": a[steps[-1]] if steps else None,
            "max_weight_diff": max(float(np.abs(wa[k].astype(np.float64) - wb[k]).max()) for k in wb),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="the folder of run directories")
    parser.add_argument("--json", type=Path, help="also write the comparison here")
    args = parser.parse_args(argv)
    result = compare(args.runs)
    for name, row in result.items():
        print(f"{name:28s} vs {row['reference']:13s} steps {row['steps_compared']:4d}  "
              f"max |loss diff| {row['max_loss_diff']:.2e}  max |weight diff| {row['max_weight_diff']:.2e}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0 if result else 1


if __name__ == "__main__":
    raise SystemExit(main())
