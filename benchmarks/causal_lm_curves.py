"""Plot the loss curves of a causal-LM run in each stack into one PNG, and print them as a table.

    python -m benchmarks.causal_lm_curves runs/clm-torch runs/clm-jax docs/causal_lm_multi30k_en.png

Each run directory is a `twinformer train` run (metrics.jsonl).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.training.metrics_log import read_metrics


def curves(run: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    records = read_metrics(run / "metrics.jsonl")
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("kind") == "eval"]
    return train, val


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("torch_run", type=Path)
    parser.add_argument("jax_run", type=Path)
    parser.add_argument("png", type=Path)
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    table = {}
    for name, run, colour in (("torch_impl", args.torch_run, "tab:red"), ("jax_impl", args.jax_run, "tab:blue")):
        train, val = curves(run)
        ax.plot(*zip(*train), color=colour, linewidth=1.2, label=f"{name} train")
        ax.plot(*zip(*val), color=colour, linestyle="--", marker="o", label=f"{name} val")
        table[name] = dict(val)
    ax.set_xlabel("step")
    ax.set_ylabel("next-token loss (nats)")
    ax.set_title("causal LM (Llama-style, 2 layers) on Multi30k English")
    ax.legend()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110, bbox_inches="tight")
    print("| step | torch_impl val loss | jax_impl val loss |\n|---|---|---|")
    for step in sorted(table["torch_impl"]):
        print(f"| {step} | {table['torch_impl'][step]:.3f} | {table['jax_impl'].get(step, float('nan')):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
