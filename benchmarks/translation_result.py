"""The README's real result in one command: pre-train both stacks on one config at once, then test BLEU.

    python -m benchmarks.translation_result --config configs/multi30k-best.json --out-dir runs/m30k \
        [--max-minutes 5] [--average 5] [--beam 4] [--json result.json]

What it does, each part a `twinformer` CLI call (so the figure is what a user's commands give):
1. `train` in torch and in jax at the same time (same config, same seed, same batches; dropout
   streams differ between the frameworks), each capped at --max-minutes of training.
2. Picks the newest step that both runs saved a checkpoint at. The stacks are compared there, so
   a faster stack's extra steps under a time cap never count as a difference between the stacks.
3. In both stacks at once, on the test split: `evaluate` that checkpoint (greedy); `average` the
   last --average checkpoints up to it and `evaluate` the average greedily and with `--beam`.
4. Prints one table and writes the numbers (and the per-stack differences) as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shared.training.run_checkpoint import list_checkpoints
from shared.training.train_config import FRAMEWORKS, TrainConfig

CLI = [sys.executable, "-m", "twinformer.cli"]


def run_logged(argv: list[str], log: Path, timeout_s: float | None) -> tuple[int, float, dict | None]:
    """Run a CLI call with its output appended to `log`: (exit code, wall seconds, its last-line JSON)."""
    started = time.perf_counter()
    with open(log, "a") as out:
        out.write("$ " + " ".join(argv) + "\n")
        out.flush()
        try:
            done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=out, text=True, timeout=timeout_s)
            code, stdout = done.returncode, done.stdout
        except subprocess.TimeoutExpired as expired:
            code, stdout = 124, expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        out.write(stdout)
    last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    try:
        summary = json.loads(last)
    except json.JSONDecodeError:
        summary = None
    return code, time.perf_counter() - started, summary


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("_")[1])


def common_step(run_dirs: Sequence[Path]) -> int:
    """The newest step at which every run saved a checkpoint (ValueError when there is none)."""
    steps = [{step_of(c) for c in list_checkpoints(d)} for d in run_dirs]
    shared = set.intersection(*steps) if steps else set()
    if not shared:
        raise ValueError(f"the runs share no checkpoint step (saved: {[sorted(s) for s in steps]}); "
                         "set save_every > 0 and keep_last null, so a time-capped run has one in common")
    return max(shared)


def evaluate_stack(framework: str, run_dir: Path, step: int, args) -> dict:
    """Test-set scores of one stack at `step`: that checkpoint greedily, the average greedily and with beam."""
    log = args.out_dir / f"eval-{framework}.log"
    checkpoints = [c for c in list_checkpoints(run_dir) if step_of(c) <= step]
    evaluate = [*CLI, "evaluate", "--json", "--no-progress", "--framework", framework, *(["--split", args.split] if args.split else [])]
    scores: dict = {"step": step}
    code, seconds, summary = run_logged([*evaluate, "--checkpoint", str(checkpoints[-1])], log, args.eval_timeout_s)
    scores["final"] = {"exit": code, "seconds": round(seconds, 1), **(summary or {})}
    if args.average > 1 and len(checkpoints) >= 2:
        chosen = checkpoints[-args.average:]
        averaged = args.out_dir / f"average-{framework}"
        code, _, _ = run_logged([*CLI, "average", "--checkpoints", *map(str, chosen), "--out", str(averaged)], log, 600)
        if code == 0:
            scores["averaged_steps"] = [step_of(c) for c in chosen]
            for name, extra in (("average", []), ("average_beam", ["--beam", str(args.beam)] if args.beam > 1 else None)):
                if extra is None:
                    continue
                code, seconds, summary = run_logged([*evaluate, "--checkpoint", str(averaged), *extra], log, args.eval_timeout_s)
                scores[name] = {"exit": code, "seconds": round(seconds, 1), **(summary or {})}
    return scores


def training_figures(run_dir: Path) -> dict:
    """Steps, training seconds and mean tokens/s from a run's metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    if not train:
        return {}
    tokens = sum(r["tokens"] for r in train)
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in train if r["tokens_per_s"] > 0)
    return {"last_step": train[-1]["step"], "epochs_started": train[-1]["epoch"] + 1,
            "train_seconds": round(seconds, 1), "target_tokens_per_s": round(tokens / seconds) if seconds else None,
            "last_train_loss": train[-1]["loss"]}


def summarise(result: dict) -> str:
    rows = [("checkpoint at the common step, greedy", "final"), ("average of the last checkpoints, greedy", "average"),
            ("average, beam search", "average_beam")]
    lines = [f"common step {result['common_step']}", f"{'':42} {'torch':>8} {'jax':>8} {'|diff|':>7}"]
    for label, key in rows:
        values = [result["stacks"][fw].get(key, {}).get("bleu") for fw in FRAMEWORKS]
        if None in values:
            continue
        lines.append(f"{label:42} {values[0]:8.2f} {values[1]:8.2f} {abs(values[0] - values[1]):7.2f}")
    for fw in FRAMEWORKS:
        lines.append(f"{fw}: {json.dumps(result['stacks'][fw]['training'])}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True, metavar="FILE")
    parser.add_argument("--out-dir", type=Path, required=True, metavar="DIR", help="runs, logs and averages go here")
    parser.add_argument("--max-minutes", type=float, metavar="M", help="cap each stack's training at M minutes")
    parser.add_argument("--split", help="default: the corpus's test split (evaluate's default)")
    parser.add_argument("--average", type=int, default=5, metavar="N", help="average the last N checkpoints (1: none)")
    parser.add_argument("--beam", type=int, default=4, metavar="K", help="beam size for the average (1: no beam run)")
    parser.add_argument("--eval-timeout-s", type=float, default=300.0)
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the result here")
    args = parser.parse_args(argv)
    config = TrainConfig.load(args.config)  # fails early on a bad config
    args.out_dir.mkdir(parents=True, exist_ok=True)

    run_dirs = {fw: args.out_dir / fw for fw in FRAMEWORKS}
    train_timeout = None if args.max_minutes is None else 60 * args.max_minutes + 600  # + data, compile, final save
    with ThreadPoolExecutor(len(FRAMEWORKS)) as pool:
        trained = dict(zip(FRAMEWORKS, pool.map(lambda fw: run_logged(
            [*CLI, "train", "--framework", fw, "--config", str(args.config), "--run-dir", str(run_dirs[fw]),
             "--no-progress", *([] if args.max_minutes is None else ["--max-minutes", str(args.max_minutes)])],
            args.out_dir / f"train-{fw}.log", train_timeout), FRAMEWORKS)))
    failed = [fw for fw, (code, _, _) in trained.items() if code != 0]
    if failed:
        print(f"training failed in {', '.join(failed)}: see {args.out_dir}/train-*.log", file=sys.stderr)
        return 1
    step = common_step(list(run_dirs.values()))
    with ThreadPoolExecutor(len(FRAMEWORKS)) as pool:
        scores = dict(zip(FRAMEWORKS, pool.map(lambda fw: evaluate_stack(fw, run_dirs[fw], step, args), FRAMEWORKS)))
    result = {"config": str(args.config), "corpus": config.corpus, "split": args.split, "common_step": step,
              "stacks": {fw: {**scores[fw], "training": {"wall_seconds": round(trained[fw][1], 1),
                                                        **training_figures(run_dirs[fw])}} for fw in FRAMEWORKS}}
    print(summarise(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
