"""Training metrics as JSON lines (`RUN_DIR/metrics.jsonl`) and loss curves as a PNG (`RUN_DIR/loss.png`),
and the throughput meter behind their tokens/s figures.

One record per line, each with a `kind` ("train" or "eval") and the `step` it describes (updates
applied so far). Plain files, so a run can be inspected with `jq` or replotted without the trainer.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT_FILE = "loss.png"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics file (an incomplete last line, from a crash mid-write, is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsLog:
    """Appends records to a JSON-lines file, flushing each so a crash loses at most one line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()

    def truncate_after(self, step: int) -> None:
        """Drop records past `step`: a resumed run redoes those steps and logs them again."""
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        os.replace(tmp, self.path)


class Throughput:
    """Target tokens per second, with and without the steps that met a new batch shape.

    A new (B, S, T) is a fresh XLA compile of a jitted step in JAX (and a torch.compile
    recompile); the sampler bounds how many there are (shared/data/batching.py). Such a step's
    wall time is mostly compiling, so `report()` gives both figures over the window since the last
    report: `tokens_per_s` (all of it, compiles included: what a run of this length costs) and
    `tokens_per_s_steady` (the steps whose shape was already seen: the rate the run settles to;
    None when every step of the window met a new shape). Eager torch pays much less for a new shape
    (allocations), so its two figures stay close. JAX dispatches asynchronously: a step's call
    returns when it is compiled and queued, so its compile falls in that step's time while its
    compute may spill into the next step's (a small error for the steady rate; the total is exact
    once a report reads the losses back).
    """

    def __init__(self) -> None:
        self.shapes: set[tuple[tuple[int, ...], ...]] = set()
        self.run_tokens, self.run_new_shape_tokens, self.run_s, self.run_new_shape_s = 0, 0, 0.0, 0.0
        self.start_window()

    def start_window(self) -> None:
        self.tokens, self.new_shape_tokens, self.new_shape_s, self.new_shapes = 0, 0, 0.0, 0
        self.window_start = time.perf_counter()

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` spent on something else (an evaluation) out of the current window."""
        self.window_start += seconds

    def step(self, shape: tuple[tuple[int, ...], ...], tokens: int, run: Callable[[], Any]) -> Any:
        """Run one step (`run()`) on a batch of this shape holding `tokens` target tokens; its result."""
        new = shape not in self.shapes
        started = time.perf_counter()
        result = run()
        if new:
            self.shapes.add(shape)
            self.new_shapes += 1
            self.new_shape_s += time.perf_counter() - started
            self.new_shape_tokens += tokens
        self.tokens += tokens
        return result

    def report(self) -> dict[str, Any]:
        """The window's figures (call after reading its results back), then a new window starts."""
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        record = {
            "tokens": self.tokens,
            **_rates(self.tokens, self.new_shape_tokens, elapsed, self.new_shape_s),
            "new_shape_s": self.new_shape_s,  # wall time of the steps that met a new shape (compiles)
            "new_shapes": self.new_shapes,
            "batch_shapes": len(self.shapes),  # distinct shapes so far (jit compiles of this step)
        }
        self.run_tokens += self.tokens
        self.run_new_shape_tokens += self.new_shape_tokens
        self.run_s += elapsed
        self.run_new_shape_s += self.new_shape_s
        self.start_window()
        return record

    def run_report(self) -> dict[str, Any]:
        """The same two rates over every window reported so far (a whole run or pass)."""
        return {**_rates(self.run_tokens, self.run_new_shape_tokens, self.run_s, self.run_new_shape_s),
                "new_shape_s": self.run_new_shape_s, "batch_shapes": len(self.shapes)}  # fmt: skip


def _rates(tokens: int, new_shape_tokens: int, elapsed: float, new_shape_s: float) -> dict[str, float | None]:
    steady_tokens, steady_s = tokens - new_shape_tokens, elapsed - new_shape_s
    return {
        "tokens_per_s": tokens / elapsed if elapsed > 0 else None,
        "tokens_per_s_steady": steady_tokens / steady_s if steady_tokens and steady_s > 0 else None,
    }


def format_throughput(record: dict[str, Any]) -> str:
    """One line: "1234 tokens/s, 5678 without new-shape steps (compiles: 4.2 s, 3 shapes)"."""
    def rate(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f}"

    return (f"{rate(record['tokens_per_s'])} tokens/s, {rate(record['tokens_per_s_steady'])} without new-shape steps "
            f"(compiles: {record['new_shape_s']:.1f} s, {record['batch_shapes']} shape{'s' * (record['batch_shapes'] != 1)})")  # fmt: skip


def plot_loss_curves(metrics_path: str | Path, png_path: str | Path, title: str | None = None) -> Path:
    """Plot training loss (and validation loss when logged) against step into a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed: training runs on servers
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train" and _finite(r.get("loss"))]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("kind") == "eval" and _finite(r.get("val_loss"))]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    png_path = Path(png_path)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
