"""Decoding speed: sentences/s of beam search (or greedy) on a test split, with and without the KV cache.

    python -m benchmarks.decode_speed                                   # random weights, CPU, beam 4
    python -m benchmarks.decode_speed --checkpoint runs/m30k/checkpoints/step_0004200 --device gpu

Both stacks decode the same source batches (length-bucketed, fixed row counts, as `twinformer
translate` does) with the same weights: a trained checkpoint and its tokenizer (--checkpoint), or
the shared numpy init of --config's model with a BPE tokenizer trained on the train split. A
random model rarely emits EOS, so every batch there runs to its step cap: ceil(a * S + b) new
tokens for a batch of padded source length S (--len-a, --len-b; the usual max_len_a / max_len_b
of translation decoders), the length a trained model's output stops at most. Cached and uncached
decode the same steps, batch by batch interleaved (a shared CPU slows both alike), and must give
the same tokens (checked, reported as `identical`; exit 1 if not).
JAX compiles once per batch shape; one untimed call per shape comes first (its time is reported
as `compile_s`). Timing: wall clock of all batches, after which the outputs are on the host.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared.decoding.batching import length_buckets, pad_sources
from shared.decoding.generation import GenerationConfig

STACKS = ("torch", "jax")


def load_sources(args) -> tuple[object, dict, list[list[int]]]:
    """(ModelConfig, numpy weights, encoded test sources) from a checkpoint or a config's fresh init."""
    from shared.data import load_corpus, train_tokenizer
    from shared.training.train_config import TrainConfig

    config = TrainConfig.load(args.config)
    split = args.split or ("test_2016_flickr" if config.corpus == "multi30k" else "test")
    sentences = [s for s, _ in load_corpus(config.corpus, split, config.src_lang, config.tgt_lang, config.data_dir)]
    if args.checkpoint is not None:
        from shared.checkpoints.checkpoint import load_checkpoint
        from shared.data.tokenizer import Tokenizer

        model_config, tensors = load_checkpoint(args.checkpoint)
        tokenizer = Tokenizer.load(args.checkpoint)
    else:
        from shared.checkpoints.init import initial_tensors

        train_pairs = load_corpus(config.corpus, "train", config.src_lang, config.tgt_lang, config.data_dir)
        tokenizer = train_tokenizer(train_pairs, config.vocab_size, joint=config.joint_vocab)
        model_config = config.resolve_model_config(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
        tensors = initial_tensors(model_config, config.seed)
    sources = [tokenizer.encode_source(s)[: model_config.max_len] for s in sentences]
    if args.sentences is not None:  # an evenly spread subset keeps the length mix
        sources = sources[:: max(1, len(sources) // args.sentences)][: args.sentences]
    return model_config, tensors, sources


def batches(sources: list[list[int]], rows: int, pad_id: int, max_len: int) -> list[np.ndarray]:
    """Length-bucketed (rows, S) source batches, S a multiple of 8 (few shapes, few compiles)."""
    return [
        pad_sources([sources[i] for i in bucket], pad_id, 8, max_len, rows=rows)
        for bucket in length_buckets([len(s) for s in sources], rows)
    ]


def step_cap(src: np.ndarray, args, max_len: int) -> int:
    """New tokens allowed for a batch of padded source length S: ceil(a * S + b), at most max_len - 1."""
    return min(max_len - 1, math.ceil(args.len_a * src.shape[1] + args.len_b))


def decoder_for(stack: str, model_config, tensors: dict, device: str):
    """A function (src (B, S), GenerationConfig) -> ids (B, T_out) numpy, for one stack."""
    if stack == "torch":
        from torch_impl.checkpoint import from_numpy
        from torch_impl.generate import generate

        model = from_numpy(model_config, tensors).to("cuda" if device == "gpu" else "cpu").eval()
        return lambda src, config: generate(model, src, None, config)
    from jax_impl.convert import params_from_state_dict
    from jax_impl.families.transformer import Transformer
    from jax_impl.generate import generate

    model, params = Transformer(model_config), params_from_state_dict(model_config, tensors)
    return lambda src, config: generate(model, params, src, config=config)


def run_modes(decode, modes: dict[str, list[tuple[np.ndarray, GenerationConfig]]], warm: bool) -> dict[str, dict]:
    """{mode: {compile_s, seconds, outputs}}; batches interleaved across modes, so a CPU shared
    with other work slows every mode alike. One untimed call per distinct shape first if warm."""
    out = {mode: {"compile_s": 0.0, "seconds": 0.0, "outputs": []} for mode in modes}
    if warm:
        for mode, work in modes.items():
            seen = {}
            for src, config in work:
                seen.setdefault((src.shape, config), (src, config))
            start = time.perf_counter()
            for src, config in seen.values():
                decode(src, config)
            out[mode]["compile_s"] = time.perf_counter() - start
    for index in range(len(next(iter(modes.values())))):
        for mode, work in modes.items():
            start = time.perf_counter()
            out[mode]["outputs"].append(decode(*work[index]))
            out[mode]["seconds"] += time.perf_counter() - start
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/multi30k-cpu-small.json"),
                        help="its corpus, languages and model (with fresh weights when no --checkpoint)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="a trained checkpoint (with its tokenizer)")
    parser.add_argument("--split", default=None, help="default: test_2016_flickr (multi30k), test (toy)")
    parser.add_argument("--sentences", type=int, default=None, help="an evenly spread subset (default: all)")
    parser.add_argument("--beam", type=int, default=4, help="beams; 1 = greedy")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--len-a", type=float, default=1.2)
    parser.add_argument("--len-b", type=float, default=5.0)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--stacks", nargs="+", choices=STACKS, default=list(STACKS))
    parser.add_argument("--modes", nargs="+", choices=("cached", "uncached"), default=["cached", "uncached"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.device == "cpu":
        import jax

        jax.config.update("jax_platforms", "cpu")

    model_config, tensors, sources = load_sources(args)
    src_batches = batches(sources, args.batch_size, model_config.pad_id, model_config.max_len)
    results: dict[str, dict] = {}
    for stack in args.stacks:
        decode = decoder_for(stack, model_config, tensors, args.device)
        modes = {
            mode: [
                (src, GenerationConfig(step_cap(src, args, model_config.max_len), num_beams=args.beam, use_cache=mode == "cached"))
                for src in src_batches
            ]
            for mode in args.modes
        }
        runs = run_modes(decode, modes, warm=stack == "jax")
        for mode, run in runs.items():
            seconds = run["seconds"]
            results[f"{stack}_{mode}"] = {
                "stack": stack, "mode": mode, "seconds": round(seconds, 3), "compile_s": round(run["compile_s"], 3),
                "sentences": len(sources), "sentences_per_s": round(len(sources) / seconds, 2),
                "new_tokens": int(sum(int(np.count_nonzero(ids)) for ids in run["outputs"])),
            }
            print(f"{stack:5s} {mode:8s} {seconds:8.2f} s  {len(sources) / seconds:8.2f} sentences/s", flush=True)
        if len(runs) == 2:
            pairs = zip(runs["cached"]["outputs"], runs["uncached"]["outputs"])
            same = all(np.array_equal(a, b) for a, b in pairs)
            speedup = results[f"{stack}_uncached"]["seconds"] / results[f"{stack}_cached"]["seconds"]
            results[f"{stack}_cached"].update(identical=same, speedup=round(speedup, 2))
            print(f"{stack:5s} cached / uncached: {speedup:.2f}x, tokens identical: {same}", flush=True)
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "model": model_config.to_dict(), "results": results}
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True))
    return 0 if all(r.get("identical", True) for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
