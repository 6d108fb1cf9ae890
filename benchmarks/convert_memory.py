"""Peak memory of `convert --from hf` and `export --to hf` at Llama-3.2-1B's real shape.

    python -m benchmarks.convert_memory --work-dir /tmp/convert-memory [--keep]

1. Generates locally (transformers, random bf16 weights, no network) a LlamaForCausalLM of
   Llama-3.2-1B's shape: hidden 2048, 16 layers, 32 heads, 8 kv heads, intermediate 8192, vocab
   128256, tied embeddings, rope_theta 500000, rope_scaling llama3 (factor 32, original context
   8192) — 1.24B parameters, 2.47 GB in bf16 — built on the meta device, materialised in bf16, and
   written by `save_pretrained` in 500MB shards (the 525 MB embedding gets a shard of its own).
2. Runs each direction in a subprocess: `convert --from hf` (HF shards -> our checkpoint) and
   `export --to hf --max-shard-size 500MB` (our checkpoint -> HF shards). The subprocess imports
   everything first, records its resident memory (RSS), then runs the command while a thread samples
   its RSS every 2 ms; its peak above the post-import footprint is the figure. ru_maxrss (the
   kernel's own high-water mark, which samples cannot miss) minus the same footprint is reported
   too, and the larger of the two is held against the bar: <= 1.5x the largest shard.
Prints one line per direction and a JSON summary; exit 1 if a direction misses the bar.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

SHARD = "500MB"
BAR = 1.5  # peak RSS above the post-import footprint, in largest shards
LLAMA_3_2_1B = dict(
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
    head_dim=64, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
    bos_token_id=128000, eos_token_id=128001, hidden_act="silu",
    rope_parameters={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_theta": 500000.0},
)


def generate(directory: Path) -> None:
    """Llama-3.2-1B's shape with random bf16 weights, saved by save_pretrained in 500MB shards."""
    import torch
    import transformers

    config = transformers.LlamaConfig(**LLAMA_3_2_1B)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.to_empty(device="cpu")  # bf16 storage only: ~2.5 GB, never a float32 copy
    model.tie_weights()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, 0.02, generator=generator)
    model.save_pretrained(directory, max_shard_size=SHARD)


def child(argv: list[str]) -> None:
    """In the subprocess: import, note the footprint, run the command while sampling RSS; print JSON."""
    import resource

    import psutil

    import shared.checkpoints.checkpoint  # noqa: F401  (everything the commands import, before the baseline)
    import shared.checkpoints.hf_checkpoint  # noqa: F401
    from twinformer.cli import main

    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"code": code, "baseline": baseline, "sampled_peak": peak - baseline,
                      "maxrss_peak": max_rss - baseline, "seconds": seconds}))


def run_child(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.convert_memory", "--child", *argv],
                         check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=Path("convert-memory"))
    parser.add_argument("--keep", action="store_true", help="keep the generated directories")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.add_argument("--generate", type=Path, default=None, help=argparse.SUPPRESS)
    options = parser.parse_args(args)
    if options.child is not None:
        child(options.child)
        return 0
    if options.generate is not None:
        generate(options.generate)
        return 0
    work = options.work_dir
    hf_dir, ckpt, out = work / "hf", work / "ckpt", work / "out"
    if not (hf_dir / "config.json").is_file():
        print(f"generating Llama-3.2-1B's shape in {hf_dir} ...", flush=True)
        # in a subprocess: Linux carries a parent's peak RSS into a child's ru_maxrss (through fork and
        # exec), so this process must stay small for the children's ru_maxrss to be theirs
        subprocess.run([sys.executable, "-m", "benchmarks.convert_memory", "--generate", str(hf_dir)], check=True)
    for path in (ckpt, out):
        shutil.rmtree(path, ignore_errors=True)
    shards = sorted(hf_dir.glob("*.safetensors"))
    largest = max(path.stat().st_size for path in shards)
    model_bytes = sum(path.stat().st_size for path in shards)
    results = {}
    for direction, argv in (("convert --from hf", ["convert", "--from", "hf", str(hf_dir), str(ckpt)]),
                            ("export --to hf", ["export", "--to", "hf", str(ckpt), str(out), "--max-shard-size", SHARD])):
        result = run_child(argv)
        peak = max(result["sampled_peak"], result["maxrss_peak"])
        result |= {"peak_over_largest_shard": peak / largest, "peak_over_model": peak / model_bytes}
        results[direction] = result
        print(f"{direction}: peak RSS +{peak / 1e6:.0f} MB above the post-import footprint "
              f"(sampled {result['sampled_peak'] / 1e6:.0f} MB, ru_maxrss {result['maxrss_peak'] / 1e6:.0f} MB) = "
              f"{peak / largest:.2f}x the largest shard ({largest / 1e6:.0f} MB), {peak / model_bytes:.2f}x the model "
              f"({model_bytes / 1e9:.2f} GB, {len(shards)} shards); {result['seconds']:.0f} s", flush=True)
    print(json.dumps(results, indent=2))
    if not options.keep:
        shutil.rmtree(work, ignore_errors=True)
    failed = [d for d, r in results.items() if r["code"] != 0 or r["peak_over_largest_shard"] > BAR]
    if failed:
        print(f"over the bar ({BAR}x the largest shard): {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
