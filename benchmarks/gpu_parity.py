"""The GPU parity evidence in one command: the parity suite and `twinformer parity` at fp32, tf32 and bf16.

    python -m benchmarks.gpu_parity --out $OUT            # on one GPU, under 6 minutes
    python -m benchmarks.gpu_parity --out DIR --dry-run   # the same steps on the CPU, tiny selection

Steps, each in its own process with a time cap:
1. the parity properties (forward, gradients, training trajectories, planted bugs) with
   `--device gpu --precision P` for P in float32 (matmuls pinned to highest), tf32, bfloat16;
2. `twinformer parity --preset NAME` for every preset at float32, tf32 and bfloat16 (one process,
   precision pinned per run);
3. the planted bugs' margins at tf32 and bfloat16 (`python -m parity_tests.planted_bugs`).
Writes $OUT/gpu_parity.md (one markdown table: per property and precision, the largest difference,
the bound and the ratio at the worst array, and each preset's exit code and worst module), plus the
raw JSON and logs. Needs nothing beyond the project's own dependencies.
"""

from __future__ import annotations

import argparse
import math
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from shared.checkpoints.weight_table import param_specs
from shared.config.presets import PRESETS

SUITE_FILES = [
    "parity_tests/test_forward.py",
    "parity_tests/test_gradients.py",
    "parity_tests/test_training_parity.py",
    "parity_tests/test_planted_bugs.py",
]
PRECISIONS = ("float32", "tf32", "bfloat16")
# `twinformer parity` flags per precision: (--dtype, --precision)
PARITY_FLAGS = {"float32": ("float32", "float32"), "tf32": ("float32", "tf32"), "bfloat16": ("bfloat16", "float32")}
BUDGET_S = 340  # the whole script stays under 6 minutes
SUITE_SHARE_S = 55  # per precision
MARGINS_SHARE_S = 15  # per precision
# The presets run in one process (no interpreter start per run), with what the budget leaves.
# Presets of a billion parameters and more (mistral-7b, gemma-2b) would take the whole budget in
# float64 references alone; their shapes are checked on the meta device in tests/test_hf_variants_cli.py.
MAX_PRESET_PARAMETERS = 1_000_000_000


def parameter_count(preset: str) -> int:
    return sum(math.prod(spec.torch_shape) for spec in param_specs(PRESETS[preset]))


def parity_presets() -> tuple[str, ...]:
    return tuple(name for name in PRESETS if parameter_count(name) < MAX_PRESET_PARAMETERS)


def run(command: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[int, float]:
    """(exit code, seconds); 124 when it ran past `timeout` (its output so far stays in the log)."""
    start = time.perf_counter()
    with log.open("w") as out:
        try:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=max(timeout, 1),
                                  env={**os.environ, **(env or {})}).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            code = 124
    return code, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_parity_out"))
    parser.add_argument("--dry-run", action="store_true", help="CPU, a tiny selection: checks the script itself")
    parser.add_argument("--run-presets", action="store_true", help=argparse.SUPPRESS)  # step 2, in its own process
    parser.add_argument("--device", default="gpu", help=argparse.SUPPRESS)
    parser.add_argument("--precisions", nargs="*", default=PRECISIONS, help=argparse.SUPPRESS)
    parser.add_argument("--presets", nargs="*", default=parity_presets(), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_presets:
        return run_presets(Path(args.out), args.device, args.precisions, args.presets)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.dry_run else "gpu"
    precisions = ("float32", "bfloat16") if args.dry_run else PRECISIONS  # tf32 means nothing on a CPU
    presets = ("tiny",) if args.dry_run else parity_presets()
    suite = ["parity_tests/test_forward.py", "-k", "every_option_value and layernorm-relu"] if args.dry_run else SUITE_FILES
    deadline = time.perf_counter() + BUDGET_S * (4 if args.dry_run else 1)  # a busy CPU is slower than a GPU
    python = sys.executable
    env = {"PYTHONPATH": str(Path.cwd()), "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "HYPOTHESIS_PROFILE": "ci"}  # fmt: skip

    suite_rows, preset_rows, margins, notes = [], [], [], []
    for precision in precisions:
        measured = out / f"suite_{precision}.json"
        measured.unlink(missing_ok=True)
        command = [python, "-m", "pytest", *suite, "-q", "-p", "no:cacheprovider", "-x",
                   f"--device={device}", f"--precision={precision}"]  # fmt: skip
        left = deadline - time.perf_counter()
        share = SUITE_SHARE_S * (4 if args.dry_run else 1)
        code, seconds = run(command, out / f"suite_{precision}.log", min(share, left),
                            {**env, "TWINFORMER_PARITY_JSON": str(measured)})  # fmt: skip
        notes.append(f"suite {precision}: exit {code}, {seconds:.0f} s")
        rows = json.loads(measured.read_text()) if measured.exists() else {}
        for prop, worst in sorted(rows.items()):
            if "planted" not in prop:  # planted bugs are meant to part; their margins are listed below
                suite_rows.append((prop, precision, worst))

    presets_log = out / "presets.log"
    reserve = 0 if args.dry_run else 2 * MARGINS_SHARE_S
    command = [python, "-m", "benchmarks.gpu_parity", "--run-presets", "--out", str(out), "--device", device,
               "--precisions", *precisions, "--presets", *presets]  # fmt: skip
    code, seconds = run(command, presets_log, deadline - time.perf_counter() - reserve, env)
    notes.append(f"presets: exit {code}, {seconds:.0f} s")
    for precision in precisions:
        for preset in presets:
            report = out / f"parity_{preset}_{precision}.json"
            summary = json.loads(report.read_text()) if report.exists() else None
            preset_rows.append((preset, precision, summary["exit"] if summary else "not run", summary))

    if not args.dry_run:
        for label, flags in (("tf32", ["--precision", "tf32"]), ("bfloat16", ["--dtype", "bfloat16"])):
            log = out / f"margins_{label}.md"
            left = deadline - time.perf_counter()
            code, _ = run([python, "-m", "parity_tests.planted_bugs", "--device", device, *flags], log, min(MARGINS_SHARE_S, left), env)
            margins.append((label, code, log.read_text() if log.exists() else ""))

    table = format_table(suite_rows, preset_rows, margins, notes, device)
    (out / "gpu_parity.md").write_text(table)
    print(table)
    failed = any(code != 0 for _, _, code, _ in preset_rows) or any("exit 0" not in n for n in notes)
    return 1 if failed else 0


def run_presets(out: Path, device: str, precisions, presets) -> int:
    """`twinformer parity` for every preset and precision in this process; one JSON (with its exit code) per run."""
    from twinformer.cli import main as twinformer

    for precision in precisions:
        dtype, matmul = PARITY_FLAGS[precision]
        for preset in presets:
            report = out / f"parity_{preset}_{precision}.json"
            start = time.perf_counter()
            code = twinformer(["parity", "--preset", preset, "--device", device, "--dtype", dtype,
                               "--precision", matmul, "--json", str(report)])  # fmt: skip
            summary = json.loads(report.read_text())
            summary.update(exit=code, seconds=time.perf_counter() - start)
            report.write_text(json.dumps(summary, indent=1))
            print(f"{preset} {precision}: exit {code}, {summary['seconds']:.0f} s", flush=True)
    return 0


def format_table(suite_rows, preset_rows, margins, notes, device: str) -> str:
    lines = [
        f"Parity on {device}: largest |torch - jax| against the scale-aware bound (shared/parity/tolerances.py).",
        "",
        "| property | precision | arrays | largest diff | diff at worst | bound there | ratio |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for prop, precision, w in suite_rows:
        lines.append(
            f"| {prop} | {precision} | {w['count']} | {w['largest_abs']:.2e} | {w['max_abs']:.2e} | {w['limit']:.2e} | {w['ratio']:.3f} |"
        )
    for preset, precision, code, summary in preset_rows:
        if summary is None:
            lines.append(f"| twinformer parity --preset {preset} | {precision} | - | - | - | - | {code} (out of time) |")
            continue
        modules = summary["modules"]
        worst = max(modules, key=lambda m: m["ratio"])
        largest = max(m["max_abs"] for m in modules)
        lines.append(
            f"| twinformer parity --preset {preset} (exit {code}) | {precision} | {len(modules)} | {largest:.2e} | "
            f"{worst['max_abs']:.2e} | {worst['bound']:.2e} | {worst['ratio']:.3f} |"
        )
    lines += ["", "Steps: " + "; ".join(notes)]
    for label, code, text in margins:
        lines += ["", f"Planted-bug margins, {label} (exit {code}):", "", text.strip()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
