"""Tokens/s of the batching engine: R concurrent greedy requests batched vs one at a time, per stack.

    python -m benchmarks.batching_engine                       # both stacks, 8 requests, a small GPT-2
    python -m benchmarks.batching_engine --stacks torch --requests 8 --new-tokens 64 --threads 1

The same engine (twinformer/serving/batching.py) decodes the same requests twice in one process:
with max_batch = --requests (all rows step together) and with max_batch = 1 (the requests queue
and run one at a time), on a random causal LM (GPT-2 shapes scaled down: --d-model, --layers).
Random weights rarely emit EOS, so every request runs its --new-tokens. Both runs must give the
same tokens (checked: `identical`). An untimed warm-up request first (JAX compiles the step and
the prefill of the prompt's length bucket there). Prints one JSON line per stack; figures are
ratios within one process (a shared CPU slows both runs alike).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


class Collect:
    def __init__(self):
        self.tokens: list[int] = []
        self.done = threading.Event()

    def token(self, token_id: int) -> None:
        self.tokens.append(token_id)

    def finish(self, reason, message=None) -> None:
        self.done.set()


def run(engine, requests) -> tuple[float, list[list[int]]]:
    """(seconds until every request finished, each request's tokens)."""
    sinks = [Collect() for _ in requests]
    start = time.perf_counter()
    for request, sink in zip(requests, sinks):
        engine.submit(request, sink)
    for sink in sinks:
        sink.done.wait()
    return time.perf_counter() - start, [sink.tokens for sink in sinks]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", nargs="+", default=["torch", "jax"], choices=["torch", "jax"])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (twinformer/threads.py)")
    args = parser.parse_args(argv)

    from twinformer.threads import apply_threads

    apply_threads(args.threads)
    import torch_impl
    from shared.checkpoints.init import initial_tensors
    from shared.config.model_config import ModelConfig
    from twinformer.serving.batching import BatchingEngine
    from twinformer.serving.protocol import DecodeRequest

    config = ModelConfig.from_preset("gpt2", d_model=args.d_model, num_heads=4, d_ff=4 * args.d_model,
                                     num_decoder_layers=args.layers, src_vocab_size=1000, tgt_vocab_size=1000,
                                     max_len=args.prompt_tokens + args.new_tokens, pad_id=0, bos_id=1, eos_id=2)
    rng = np.random.default_rng(0)
    requests = [DecodeRequest(tuple(int(i) for i in rng.integers(3, 1000, size=args.prompt_tokens)), args.new_tokens)
                for _ in range(args.requests)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = torch_impl.save(torch_impl.from_numpy(config, initial_tensors(config, 0)), Path(tmp) / "model")
        for stack in args.stacks:
            timings, outputs = {}, {}
            for max_batch in (args.requests, 1):
                engine = BatchingEngine(stack, checkpoint, max_batch=max_batch)
                try:
                    run(engine, requests[:1])  # warm-up (JAX: compiles)
                    timings[max_batch], outputs[max_batch] = run(engine, requests)
                finally:
                    engine.shutdown()
            tokens = sum(len(t) for t in outputs[args.requests])
            batched, serial = tokens / timings[args.requests], tokens / timings[1]
            row = {"stack": stack, "requests": args.requests, "new_tokens": args.new_tokens,
                   "tokens_per_s_batched": round(batched, 1), "tokens_per_s_one_at_a_time": round(serial, 1),
                   "speedup": round(batched / serial, 2), "identical": outputs[args.requests] == outputs[1]}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
