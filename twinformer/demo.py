"""The demo: train the toy task in PyTorch, resume the same run in JAX, compare the two stacks.

Phase 1 trains `steps_torch` updates in PyTorch and saves a run checkpoint (weights, Adam moments,
schedule position, data position). Phase 2 resumes that one checkpoint twice for `steps_jax` more
updates: once in JAX (the cross-framework resume) and once in PyTorch (the reference), so the two
loss curves of phase 2 can be compared step by step. Dropout is off, so both continuations compute
the same function on the same batches; what differs is float32 rounding (summation order inside
each stack's kernels), which training then amplifies a little with every update.

Everything goes to a temporary directory that is deleted at the end, unless `run_dir` is given.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.training.train_config import TrainConfig
from twinformer.backends import make_backend

DEFAULT_STEPS_TORCH = 200
DEFAULT_STEPS_JAX = 200
SAMPLE_SPLIT = "test"  # the printed translations: sentences neither trained on nor used for BLEU
NUM_SAMPLES = 6
PLOT_FILE = "demo_loss.png"


def demo_config(steps_torch: int = DEFAULT_STEPS_TORCH, steps_jax: int = DEFAULT_STEPS_JAX, seed: int = 0) -> TrainConfig:
    """The demo's recipe: a 2+2-layer d=64 model that learns the toy task in ~200 steps on a CPU.

    Written in code, not in configs/: the demo must run from an installed package, with no files.
    """
    return TrainConfig(
        model_preset="tiny",
        model_overrides={
            "d_model": 64, "num_heads": 4, "d_ff": 128, "num_encoder_layers": 2, "num_decoder_layers": 2,
            # Off so both stacks compute one function: their dropout masks come from different RNGs.
            "dropout": 0.0, "attention_dropout": 0.0, "embedding_dropout": 0.0,
            "max_len": 16,
        },  # fmt: skip
        corpus="toy",
        # 256 requested gives every toy word its own token (186 in all), so no sentence is longer
        # than 11 tokens with EOS: one padded width (16) for every batch.
        vocab_size=256,
        joint_vocab=True,
        # 100 divides the 4000 training and 200 validation pairs: every batch is (100, 16), so
        # JAX compiles its train step, eval step and greedy decoder once each.
        batch_size=100,
        max_tokens=None,
        max_len=16,
        pad_to_multiple=16,
        optimizer="adam",
        lr=2e-3,
        betas=(0.9, 0.98),
        eps=1e-9,
        schedule="inverse_sqrt",
        warmup_steps=50,
        total_steps=steps_torch + steps_jax,  # one schedule across both phases
        clip_norm=1.0,
        label_smoothing=0.0,
        seed=seed,
        log_every=10,
        eval_every=0,
        save_every=0,
        keep_last=2,
        bleu_sentences=200,  # the whole validation split
        max_decode_len=15,  # max_len - 1: BOS plus 15 tokens fill the positional range
        device="auto",  # the GPU where both stacks see one, else the CPU (as `twinformer train`)
        precision="float32",  # no TF32 on a GPU: the stacks' losses stay comparable
    )


@dataclass
class Sample:
    source: str
    reference: str
    torch: str
    jax: str


@dataclass
class DemoResult:
    """Everything the demo measured; losses are per update, in step order."""

    steps_torch: int
    steps_jax: int
    torch_phase1: list[float]  # steps 1 .. steps_torch
    torch_phase2: list[float]  # steps steps_torch + 1 .. end, PyTorch resumed from the checkpoint
    jax_phase2: list[float]  # the same steps, JAX resumed from the same checkpoint
    jax_start_step: int  # the JAX backend's step before its first update: restored from the checkpoint
    torch_eval: dict[str, Any]
    jax_eval: dict[str, Any]
    val_identical: int  # validation sentences translated identically by both stacks
    val_sentences: int
    samples: list[Sample] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)

    def phase2_differences(self) -> list[float]:
        return [abs(a - b) for a, b in zip(self.torch_phase2, self.jax_phase2)]


# ---------------------------------------------------------------------------------------------------
def check_arguments(steps_torch: int, steps_jax: int, seed: int) -> None:
    """ValueError listing every bad argument."""
    problems = []
    for name, value in (("steps_torch", steps_torch), ("steps_jax", steps_jax)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{name} must be a positive integer, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        problems.append(f"seed must be a non-negative integer, got {seed!r}")
    if problems:
        raise ValueError("bad demo arguments:\n  - " + "\n  - ".join(problems))


def _not_stopped(result):
    """A phase stopped by Ctrl-C / SIGTERM ends the demo (the training loop saved and returned)."""
    if result.stopped_by.requested:
        raise KeyboardInterrupt(result.stopped_by.name)
    return result


def run_demo(
    steps_torch: int = DEFAULT_STEPS_TORCH,
    steps_jax: int = DEFAULT_STEPS_JAX,
    seed: int = 0,
    run_dir: str | Path | None = None,
    progress: bool = True,
    torch_threads: int | None = 1,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Train in PyTorch, resume in JAX and in PyTorch from one checkpoint, translate with both.

    torch_threads: intra-op threads for PyTorch during the demo (None: leave as is). One is fastest
    for a d=64 model: its ops are too small to split, and on a busy 2-core machine two threads
    spin against each other (measured: 200 steps in 12 s on one thread, 97 s on two).
    """
    check_arguments(steps_torch, steps_jax, seed)
    if run_dir is not None and Path(run_dir).exists() and (not Path(run_dir).is_dir() or any(Path(run_dir).iterdir())):
        # A used directory would mix old checkpoints and metrics into the new runs.
        raise ValueError(f"run directory {run_dir} exists and is not empty: give a new or empty directory")
    import torch

    previous_threads = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    temporary = run_dir is None
    root = Path(tempfile.mkdtemp(prefix="twinformer-demo-")) if temporary else Path(run_dir)
    try:
        result = _run_phases(steps_torch, steps_jax, seed, root, progress, echo)
        if not temporary:
            plot_demo_losses(result, root / PLOT_FILE)
            echo(f"\nrun directories and {PLOT_FILE} kept in {root}")
        return result
    finally:
        torch.set_num_threads(previous_threads)
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


def _run_phases(steps_torch: int, steps_jax: int, seed: int, root: Path, progress: bool, echo) -> DemoResult:
    from shared.data import DEFAULT_LANGS
    from shared.training.run_checkpoint import load_run_checkpoint
    from shared.training.loop import load_pairs, train, translate

    config = demo_config(steps_torch, steps_jax, seed)
    total = steps_torch + steps_jax
    timings: dict[str, float] = {}
    src_lang, tgt_lang = DEFAULT_LANGS[config.corpus]
    echo(f"twinformer demo: toy task ({src_lang} -> {tgt_lang}), "
         f"{steps_torch} steps in PyTorch, then {steps_jax} more resumed in JAX and, for comparison, in PyTorch.")
    echo("Dropout is off, so both stacks compute the same function on the same batches; their losses "
         "differ only by float32 rounding, which training amplifies slowly.\n")

    start = time.perf_counter()
    echo(f"[1/3] PyTorch: steps 1-{steps_torch}")
    phase1 = _not_stopped(train(config, "torch", root / "torch", stop_at=steps_torch, progress=progress,
                                backend_factory=make_backend))
    timings["torch_phase1_s"] = time.perf_counter() - start
    checkpoint = phase1.checkpoint  # step_{steps_torch}: weights, Adam moments, schedule, data position

    start = time.perf_counter()
    echo(f"[2/3] JAX: resume {checkpoint.name} (written by PyTorch), steps {steps_torch + 1}-{total}")
    jax_run = _not_stopped(train(None, "jax", root / "jax", resume=checkpoint, progress=progress,
                                 backend_factory=make_backend))
    timings["jax_phase2_s"] = time.perf_counter() - start

    start = time.perf_counter()
    echo(f"[3/3] PyTorch: resume the same checkpoint, steps {steps_torch + 1}-{total}")
    torch_run = _not_stopped(train(None, "torch", root / "torch", resume=checkpoint, progress=progress,
                                   backend_factory=make_backend))
    timings["torch_phase2_s"] = time.perf_counter() - start

    start = time.perf_counter()
    loaded = load_run_checkpoint(torch_run.checkpoint)
    tokenizer, run_config = loaded.tokenizer(), loaded.train_config
    val_pairs = load_pairs(config, "val")[: config.bleu_sentences]
    val_sources = [s for s, _ in val_pairs]
    val_torch = translate(torch_run.backend, tokenizer, val_sources, run_config)
    val_jax = translate(jax_run.backend, tokenizer, val_sources, run_config)
    sample_pairs = load_pairs(config, SAMPLE_SPLIT)[:NUM_SAMPLES]
    sample_sources = [s for s, _ in sample_pairs]
    samples = [
        Sample(source, reference, hyp_torch, hyp_jax)
        for (source, reference), hyp_torch, hyp_jax in zip(
            sample_pairs,
            translate(torch_run.backend, tokenizer, sample_sources, run_config),
            translate(jax_run.backend, tokenizer, sample_sources, run_config),
        )
    ]
    timings["translate_s"] = time.perf_counter() - start

    result = DemoResult(
        steps_torch=steps_torch,
        steps_jax=steps_jax,
        torch_phase1=list(phase1.losses),
        torch_phase2=list(torch_run.losses),
        jax_phase2=list(jax_run.losses),
        jax_start_step=jax_run.step - len(jax_run.losses),
        torch_eval=_final_eval(torch_run),
        jax_eval=_final_eval(jax_run),
        val_identical=sum(a == b for a, b in zip(val_torch, val_jax)),
        val_sentences=len(val_sources),
        samples=samples,
        timings=timings,
        devices={"torch": str(torch_run.backend.device), "jax": _jax_device(jax_run.backend)},
    )
    echo("")
    echo(format_report(result, table_every=table_interval(total)))
    return result


def _jax_device(backend) -> str:
    import jax

    return str(jax.tree_util.tree_leaves(backend.params)[0].devices().pop().platform)


def _final_eval(run) -> dict[str, Any]:
    if not run.evals:
        raise RuntimeError("the training loop ran no final evaluation")  # a bug, not bad input
    return {k: v for k, v in run.evals[-1].items() if k != "kind"}


# ---------------------------------------------------------------------------------------------------
def table_interval(total_steps: int, max_rows: int = 25) -> int:
    """The smallest round interval (1, 2, 5, 10, 20, 25, 50, 100, ...) giving at most max_rows rows."""
    scale = 1
    while True:
        for base in (1, 2, 5, 10, 20, 25, 50):
            if total_steps <= max_rows * base * scale:
                return base * scale
        scale *= 100


def format_report(result: DemoResult, table_every: int = 20) -> str:
    """The loss table, the ASCII plot, the translations and the BLEU scores as one text block."""
    lines = [format_loss_table(result, table_every), ""]
    lines.append(ascii_loss_plot(result))
    lines.append("")
    lines.append(format_samples(result.samples))
    lines.append("")
    te, je = result.torch_eval, result.jax_eval
    lines.append(f"validation ({te['bleu_sentences']} sentences, greedy):   PyTorch        JAX")
    lines.append(f"  loss (nats/token)                       {te['val_loss']:9.5f}  {je['val_loss']:9.5f}")
    lines.append(f"  BLEU                                    {te['bleu']:9.2f}  {je['bleu']:9.2f}")
    lines.append(f"  translations identical in both stacks: {result.val_identical}/{result.val_sentences}")
    lines.append(f"devices: PyTorch {result.devices['torch']}, JAX {result.devices['jax']}")
    t = result.timings
    lines.append(
        f"time: PyTorch steps 1-{result.steps_torch} {t['torch_phase1_s']:.1f} s, "
        f"JAX resumed {t['jax_phase2_s']:.1f} s (compiles included), "
        f"PyTorch resumed {t['torch_phase2_s']:.1f} s, translations {t['translate_s']:.1f} s"
    )
    return "\n".join(lines)


def format_loss_table(result: DemoResult, every: int = 20) -> str:
    """step | PyTorch loss | JAX loss | |difference| every `every` steps (and around the resume point)."""
    n, total = result.steps_torch, result.steps_torch + result.steps_jax
    torch_losses = result.torch_phase1 + result.torch_phase2
    rows = sorted({*range(every, total + 1, every), 1, n, n + 1, total})
    out = [
        "training loss (cross-entropy per target token)",
        f"{'step':>6}  {'PyTorch':>10}  {'JAX':>10}  {'|diff|':>9}",
    ]
    for step in rows:
        if step == n + 1:
            out.append(f"{'':>6}  -- resumed from step {n}: JAX (and PyTorch, for comparison) --")
        t = torch_losses[step - 1]
        if step <= n:
            out.append(f"{step:>6}  {t:>10.5f}  {'':>10}  {'':>9}")
        else:
            j = result.jax_phase2[step - n - 1]
            out.append(f"{step:>6}  {t:>10.5f}  {j:>10.5f}  {abs(t - j):>9.2e}")
    diffs = result.phase2_differences()
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    out.append(
        f"steps {n + 1}-{total}: |PyTorch - JAX| is {diffs[0]:.1e} at the first resumed step, at most "
        f"{diffs[worst]:.1e} (step {n + 1 + worst}, loss {result.torch_phase2[worst]:.4f}). The gap is float32\n"
        "rounding: each stack sums in its own order, and Adam (eps 1e-9) turns that noise in gradients that\n"
        "are mathematically zero (the key biases) into full-size steps, so it grows a little with training."
    )
    return "\n".join(out)


def ascii_loss_plot(result: DemoResult, width: int = 64, height: int = 12) -> str:
    """Both loss curves on a log scale: T = PyTorch, J = JAX, * = both in one cell, | = the resume."""
    n, total = result.steps_torch, result.steps_torch + result.steps_jax
    series = {"T": result.torch_phase1 + result.torch_phase2, "J": [math.nan] * n + result.jax_phase2}
    finite = [v for values in series.values() for v in values if math.isfinite(v) and v > 0]
    if not finite:
        return "(no finite losses to plot)"
    top, bottom = math.log10(max(finite)), math.log10(min(finite))
    span = max(top - bottom, 1e-12)
    grid = [[" "] * width for _ in range(height)]
    resume_col = min(width - 1, n * width // total)
    for row in grid:
        row[resume_col] = "|"
    for mark, values in series.items():
        for col in range(width):
            chunk = [v for v in values[col * total // width : (col + 1) * total // width] if math.isfinite(v) and v > 0]
            if not chunk:
                continue
            level = (math.log10(sum(chunk) / len(chunk)) - bottom) / span  # 0 = lowest, 1 = highest
            row = height - 1 - min(height - 1, int(round(level * (height - 1))))
            grid[row][col] = mark if grid[row][col] in (" ", "|", mark) else "*"  # the other curve is there
    labels = {0: 10**top, height - 1: 10**bottom, (height - 1) // 2: 10 ** ((top + bottom) / 2)}
    out = ["loss (log scale)   T = PyTorch, J = JAX, * = both, | = resumed in JAX"]
    for index, row in enumerate(grid):
        label = f"{labels[index]:9.3g}" if index in labels else " " * 9
        out.append(f"{label} |{''.join(row)}")
    out.append(" " * 10 + "+" + "-" * width)
    out.append(" " * 11 + f"step 1{' ' * (width - 6 - len(str(total)) - 5)}step {total}")
    return "\n".join(out)


def format_samples(samples: Sequence[Sample]) -> str:
    """Held-out sentences with their reference and both stacks' greedy translations."""
    out = [f"translations of held-out ({SAMPLE_SPLIT}) sentences, greedy, final weights of each stack:"]
    for index, s in enumerate(samples, 1):
        agree = "same in both stacks" if s.torch == s.jax else "STACKS DIFFER"
        correct = "= reference" if s.torch == s.reference else "!= reference"
        out.append(f"  {index}. source     {s.source}")
        out.append(f"     reference  {s.reference}")
        out.append(f"     PyTorch    {s.torch}   ({correct})")
        out.append(f"     JAX        {s.jax}   ({agree})")
    return "\n".join(out)


def plot_demo_losses(result: DemoResult, png_path: str | Path) -> Path:
    """The two loss curves into a PNG (matplotlib Agg); written only when the user keeps a run dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, total = result.steps_torch, result.steps_torch + result.steps_jax
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(range(1, total + 1), result.torch_phase1 + result.torch_phase2, label="PyTorch", linewidth=1.2)
    ax.plot(range(n + 1, total + 1), result.jax_phase2, "--", label=f"JAX (resumed at step {n})", linewidth=1.2)
    ax.axvline(n, color="grey", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.set_title("twinformer demo: toy task")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
