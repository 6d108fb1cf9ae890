"""LoRA fine-tuning speed of both stacks on TweetSum, compiles included: the book's chapter-5 recipe.

Runs `twinformer finetune --lora configs/finetune-tweetsum-lora.json` (LoRA r16 on q and v, batch 8,
max_len 512) for N steps in each stack, one subprocess after the other on the same data, seed and
batches, from the same base checkpoint, and reports each stack's target tokens/s with and without
the steps that met a new batch shape (a JAX step's first call on a shape is an XLA compile), the
number of shapes, and the JAX/torch ratio of each figure.

No flan-t5-base weights are offline, so the base is a random model of flan-t5-base's exact shapes
(the preset; 248M parameters; speed does not depend on the values) with a T5-style Unigram tokenizer
trained here on TweetSum's train split (shared.data.t5_tokenizer: 10.5k pieces, whose token counts
are close to, not equal to, the real flan-t5 sentencepiece's). Pass --tokenizer DIR to use a real
one (a directory with spiece.model or tokenizer.json) instead.

python -m benchmarks.finetune_speed [--steps 50] [--data-dir DIR] [--work DIR] [--frameworks torch jax]
    [--compilation-cache DIR] [--pad-to-multiple N] [--layers N] [--tiny] [--json OUT] [-- FINETUNE OPTIONS]
--compilation-cache: JAX's persistent compilation cache (a re-run then compiles nothing; the bar is a
cold cache, so the default is none). --tiny: a small T5 (the test's smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "finetune-tweetsum-lora.json"
FRAMEWORKS = ("torch", "jax")
TOKENIZER_VOCAB = 32000  # asked of the Unigram trainer; TweetSum's train split yields about 10.5k pieces
TINY = {"d_model": 32, "num_heads": 2, "head_size": 16, "d_ff": 48, "num_encoder_layers": 2, "num_decoder_layers": 2}  # fmt: skip
FIGURES = ("tokens_per_s", "tokens_per_s_steady")


def build_base(work: Path, data_dir: str | None, tokenizer_dir: str | None, tiny: bool, layers: int | None = None) -> Path:
    """A random flan-t5-base-shaped checkpoint (or --tiny's small T5; `layers` per side if given) with a
    TweetSum tokenizer, once per work dir."""
    from shared.checkpoints.checkpoint import save_checkpoint
    from shared.checkpoints.init import initial_tensors
    from shared.config.model_config import ModelConfig
    from shared.data.t5_tokenizer import T5Tokenizer, train_t5_tokenizer
    from shared.data.tweetsum import PROMPT, load_tweetsum_pairs

    base = work / (("base-tiny" if tiny else "base") + (f"-{layers}-layers" if layers else ""))
    if (base / "config.json").is_file():
        return base
    if tokenizer_dir is not None:
        tokenizer = T5Tokenizer.load(tokenizer_dir, eos_id=1, pad_id=0, start_id=0)
    else:
        pairs = load_tweetsum_pairs("train", data_dir)
        texts = [PROMPT] + [text for pair in pairs for text in pair]
        tokenizer = train_t5_tokenizer(texts, 500 if tiny else TOKENIZER_VOCAB)
    # A run's vocabulary is its tokenizer's (the loop checks it against the base), so the embedding
    # and the tied output projection have the tokenizer's rows, not flan-t5's 32128.
    vocab = {"src_vocab_size": tokenizer.vocab_size, "tgt_vocab_size": tokenizer.vocab_size}
    depth = {"num_encoder_layers": layers, "num_decoder_layers": layers} if layers else {}
    config = ModelConfig.from_preset("flan-t5-base", **({**TINY, **vocab, **depth} if tiny else {**vocab, **depth}))
    save_checkpoint(base, config, initial_tensors(config, seed=0))
    tokenizer.save(base)
    return base


def recipe_with(work: Path, pad_to_multiple: int | None) -> Path:
    """The book's recipe, or a copy in `work` padding to another multiple (to compare shape ladders)."""
    if pad_to_multiple is None:
        return RECIPE
    recipe = json.loads(RECIPE.read_text())
    recipe["train"]["pad_to_multiple"] = pad_to_multiple
    path = work / f"recipe-pad-{pad_to_multiple}.json"
    path.write_text(json.dumps(recipe, indent=2))
    return path


def run_finetune(framework: str, base: Path, run_dir: Path, steps: int, data_dir: str | None,
                 cache: str | None, extra: Sequence[str], recipe: Path = RECIPE) -> dict[str, Any]:  # fmt: skip
    """One `finetune --lora` subprocess; its summary JSON (the last line it prints) and wall time."""
    env = dict(os.environ)
    if cache is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = cache
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    command = [sys.executable, "-m", "twinformer.cli", "finetune", "--framework", framework, "--lora", str(recipe),
               "--base", str(base), "--steps", str(steps), "--run-dir", str(run_dir), "--no-progress", "--overwrite",
               *(["--data-dir", data_dir] if data_dir else []), *extra]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{framework} finetune failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {"summary": summary, "process_wall_s": wall, "log": done.stdout}


def train_windows(run_dir: Path) -> list[dict[str, Any]]:
    """The run's training log windows (metrics.jsonl "train" records: tokens, shapes, new-shape seconds)."""
    from shared.training.metrics_log import METRICS_FILE, read_metrics

    return [r for r in read_metrics(run_dir / METRICS_FILE) if r.get("kind") == "train"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--data-dir", default=os.environ.get("TWINFORMER_TWEETSUM_DIR"))
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "twinformer" / "finetune_speed"))
    parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=list(FRAMEWORKS))
    parser.add_argument("--tokenizer", default=None, help="a real T5 tokenizer directory (spiece.model / tokenizer.json)")
    parser.add_argument("--compilation-cache", default=None, help="JAX persistent compilation cache dir (re-runs)")
    parser.add_argument("--tiny", action="store_true", help="a small T5 instead of flan-t5-base's shapes")
    parser.add_argument("--pad-to-multiple", type=int, default=None, help="override the recipe's shape ladder")
    parser.add_argument("--layers", type=int, default=None,
                        help="layers per side (flan-t5-base: 12); fewer fit a shared machine's memory (12: ~12 GB in torch)")
    parser.add_argument("--json", default=None, help="also write the report here")
    parser.add_argument("extra", nargs="*", help="more finetune options, after --")
    args = parser.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = build_base(work, args.data_dir, args.tokenizer, args.tiny, args.layers)
    results: dict[str, Any] = {}
    for framework in args.frameworks:
        run = run_finetune(framework, base, work / f"run-{framework}", args.steps, args.data_dir,
                           args.compilation_cache if framework == "jax" else None, args.extra,
                           recipe_with(work, args.pad_to_multiple))  # fmt: skip
        s, windows = run["summary"], train_windows(work / f"run-{framework}")
        results[framework] = {
            **{k: s.get(f"train_{k}") for k in FIGURES},
            "batch_shapes": max(w["batch_shapes"] for w in windows),  # distinct (B, S, T): compiles of the step
            "new_shape_s": sum(w["new_shape_s"] for w in windows),  # wall time of the steps that met a new shape
            "tokens": sum(w["tokens"] for w in windows),
            "first_loss": s.get("first_loss"), "last_loss": s.get("last_loss"),
            "process_wall_s": run["process_wall_s"],
        }
        print(f"{framework}: {json.dumps(results[framework])}", flush=True)
    report: dict[str, Any] = {
        "steps": args.steps, "base": str(base), "layers_per_side": args.layers or (TINY["num_encoder_layers"] if args.tiny else 12), "tokenizer": args.tokenizer or "trained on TweetSum train (Unigram)",
        "compilation_cache": args.compilation_cache,
        "pad_to_multiple": args.pad_to_multiple or json.loads(RECIPE.read_text())["train"]["pad_to_multiple"], "results": results,
    }  # fmt: skip
    if set(FRAMEWORKS) <= set(results):
        report["jax_over_torch"] = {
            k: results["jax"][k] / results["torch"][k] for k in FIGURES if results["jax"][k] and results["torch"][k]
        }
        print(f"jax/torch: {json.dumps(report['jax_over_torch'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
