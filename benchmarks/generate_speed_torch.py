"""Generation speed of torch_impl.generate against transformers' `generate` (CPU, one thread).

    python -m benchmarks.generate_speed_torch                 # GPT-2 124M shape + flan-t5-base beam 4
    python -m benchmarks.generate_speed_torch --tiny          # the same runs at toy sizes (a smoke test)

1. GPT-2 124M shape (d 768, 12 layers, 12 heads, vocab 50257), random weights: batch 1, a 32-token
   prompt, 128 new greedy tokens; tokens/s of ours (KV cache), transformers with its cache and
   without (use_cache=False), the same process, interleaved round by round (a shared CPU slows
   all alike); identical tokens asserted (exit 1 if not).
2. flan-t5-base shape, beam 4: ours with the cache vs without (the bar: >= 5x), identical tokens.

GPT-2's random weights are scaled up (x PEAK on every matrix) so the logits are far from uniform
and a near-tie cannot flip a greedy token between two correct implementations (T5: see T5_PEAK). The merger combines this
file with the JAX one into benchmarks/generate_speed.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from twinformer.threads import apply_threads

PEAK = 3.0  # GPT-2: every matrix x 3, logits far from uniform
# flan-t5-base keeps its init: T5's unscaled q.k over d_kv 64 and 24 layers makes x 3 weights so
# ill-conditioned in float32 that cached and uncached logits (equal to 1e-11 in float64) differ by
# 0.1 and beam search follows different near-ties.
T5_PEAK = 1.0


def best_of(rounds: dict[str, list[float]]) -> dict[str, float]:
    return {name: min(times) for name, times in rounds.items()}


def gpt2_run(args) -> dict:
    import torch
    import transformers

    import torch_impl
    from shared.hf_checkpoint import tensors_from_hf
    from shared.config import ModelConfig
    from shared.families import family_of
    from shared.generation import GenerationConfig
    from torch_impl.generate import generate

    sizes = dict(d_model=64, num_heads=4, d_ff=256, num_decoder_layers=2, src_vocab_size=500, tgt_vocab_size=500,
                 pad_id=0, bos_id=1, eos_id=2) if args.tiny else {}
    config = ModelConfig.from_preset("gpt2", **sizes)
    hf_config = dict(family_of(config).hf.config_to_hf(config))
    hf_config.pop("architectures"), hf_config.pop("model_type")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim >= 2:
                p.mul_(PEAK)
    hf_tensors = {key: value.detach().numpy() for key, value in hf.state_dict().items()}
    ours = torch_impl.from_numpy(config, tensors_from_hf(family_of(config), config, hf_tensors, "GPT-2")).eval()
    prompt = np.random.default_rng(0).integers(0, config.tgt_vocab_size, (1, args.prompt))
    N = args.new_tokens
    ids = torch.as_tensor(prompt)

    def hf_generate(use_cache: bool) -> np.ndarray:
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=N, min_new_tokens=N,
                              do_sample=False, use_cache=use_cache, eos_token_id=None, pad_token_id=config.pad_id)
        return out[:, prompt.shape[1]:].numpy()

    runs = {
        "ours_cached": lambda: generate(ours, prompt, None, GenerationConfig(max_new_tokens=N, eos_token_id=())),
        "hf_cached": lambda: hf_generate(True),
        "hf_uncached": lambda: hf_generate(False),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs = {}
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            outputs[name] = np.asarray(run())
            times[name].append(time.perf_counter() - start)
    identical = all(np.array_equal(outputs["ours_cached"], o) for o in outputs.values())
    best = best_of(times)
    return {
        "run": "gpt2-124M greedy" if not args.tiny else "gpt2-tiny greedy", "prompt": args.prompt, "new_tokens": N,
        "tokens_per_s": {name: N / t for name, t in best.items()},
        "ours_vs_hf_cached": best["hf_cached"] / best["ours_cached"],
        "ours_vs_hf_uncached": best["hf_uncached"] / best["ours_cached"],
        "distinct_tokens": int(len(np.unique(outputs["ours_cached"]))), "identical": identical,
    }


def t5_run(args) -> dict:
    import torch

    import torch_impl
    from shared.config import ModelConfig
    from shared.generation import GenerationConfig
    from shared.init import initial_tensors
    from torch_impl.generate import generate

    sizes = dict(d_model=64, num_heads=4, d_ff=128, num_encoder_layers=2, num_decoder_layers=2, src_vocab_size=500,
                 tgt_vocab_size=500) if args.tiny else {}
    config = ModelConfig.from_preset("flan-t5-base", **sizes)
    tensors = {k: (v * T5_PEAK if v.ndim >= 2 else v) for k, v in initial_tensors(config, 0).items()}
    model = torch_impl.from_numpy(config, tensors).eval()
    src = np.random.default_rng(1).integers(2, config.src_vocab_size, (1, args.prompt))
    beam = GenerationConfig(max_new_tokens=args.beam_tokens, num_beams=4, eos_token_id=())
    runs = {"cached": beam, "uncached": beam.replace(use_cache=False)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs = {}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, gc in runs.items():
                start = time.perf_counter()
                outputs[name] = generate(model, src, None, gc)
                times[name].append(time.perf_counter() - start)
    best = best_of(times)
    return {
        "run": "flan-t5-base beam 4" if not args.tiny else "t5-tiny beam 4", "source": args.prompt,
        "new_tokens": args.beam_tokens, "seconds": best, "cached_vs_uncached": best["uncached"] / best["cached"],
        "identical": bool(np.array_equal(outputs["cached"], outputs["uncached"])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="toy sizes: a smoke test of the script")
    parser.add_argument("--prompt", type=int, default=32, help="prompt / source tokens")
    parser.add_argument("--new-tokens", type=int, default=128, help="greedy tokens generated (GPT-2)")
    parser.add_argument("--beam-tokens", type=int, default=32, help="beam-search tokens generated (T5)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--only", choices=("gpt2", "t5"), default=None)
    args = parser.parse_args(argv)
    apply_threads(1)
    import torch

    torch.set_num_threads(1)
    results = []
    if args.only in (None, "gpt2"):
        results.append(gpt2_run(args))
        print(json.dumps(results[-1]), flush=True)
    if args.only in (None, "t5"):
        results.append(t5_run(args))
        print(json.dumps(results[-1]), flush=True)
    return 0 if all(r["identical"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
