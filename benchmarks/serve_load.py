"""Load test of `twinformer serve` on loopback: N concurrent streaming clients for T seconds against a
small model, in both stacks, with batching on and off, in one run.

    python -m benchmarks.serve_load                          # 8 clients x 30 s, torch and jax, batching and serial
    python -m benchmarks.serve_load --engines serial --seconds 5 --frameworks torch   # a dry run
    python -m benchmarks.serve_load --checkpoint DIR --model NAME ...                 # your own checkpoint

Each (stack, engine) pair runs the real command (`python -m twinformer.cli serve`) in a subprocess on
a free loopback port; the clients are one asyncio loop of httpx streams in this process, each
sending one greedy streamed completion (`stream_options.include_usage`) after another with the
prompts in turn. Before the clock starts every prompt is sent once (JAX compiles its buckets).

Per run: p50/p95 time to first token (request sent -> first text), p50/p95 latency (sent -> [DONE]),
tokens/s (completion tokens the server reported, over the wall time of the window; a request still
running at the end is waited for and counted), requests, errors (a non-200, an error event, or a
stream without [DONE]: nothing may be lost). Last: batching/serial tokens/s per stack (the bar: >= 3x
at 8 clients on the 2-core CI machine). `--json FILE` also writes the rows.

The default model: a random GPT-2-shaped causal LM (d 128, 4 layers, a byte-level BPE of 300 tokens
trained here), written to a temporary directory: small enough that a 2-core machine serves it at
many requests per second, so the engine's scheduling, not the matmuls alone, is what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["the cat sat on the", "a dog ran in the park and", "the sun is bright", "once upon a time there",
           "my phone does not", "the flight was delayed and", "please reset my", "we went to the"]  # fmt: skip


def byte_level_bpe(texts: list[str], special_tokens: list[str], vocab_size: int = 300):
    """A GPT-2-style byte-level BPE tokenizer trained on `texts` (special tokens first, from id 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))  # fmt: skip
    return tok


def small_model(directory: Path) -> Path:
    """The default checkpoint (module docstring) in `directory`."""
    from shared.checkpoints.checkpoint import save_checkpoint
    from shared.checkpoints.init import initial_tensors
    from shared.config.model_config import ModelConfig

    tok = byte_level_bpe(PROMPTS * 4, ["<|endoftext|>"])
    vocab = tok.get_vocab_size()
    config = ModelConfig.from_preset("gpt2", d_model=128, num_heads=4, d_ff=512, num_decoder_layers=4,
                                     src_vocab_size=vocab, tgt_vocab_size=vocab, pad_id=0, bos_id=0, eos_id=0,
                                     max_len=256)  # fmt: skip
    checkpoint = directory / "serve-load-gpt2"
    save_checkpoint(checkpoint, config, initial_tensors(config, seed=0))
    tok.save(str(checkpoint / "tokenizer.json"))
    return checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, framework: str, engine: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "twinformer.cli", "serve", "--checkpoint", str(args.checkpoint), "--framework",
               framework, "--port", str(port), "--model-name", args.model, "--max-batch", str(args.max_batch),
               "--threads", str(args.threads)] + (["--no-batching"] if engine == "serial" else [])  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TWINFORMER_API_KEY"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return process, f"http://127.0.0.1:{port}"


async def wait_healthy(client, url: str, process: subprocess.Popen, timeout: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}): {process.stderr.read().strip()[-2000:]}")
        try:
            if (await client.get(url + "/health", timeout=2)).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError("the server did not come up")


async def one_request(client, url: str, model: str, prompt: str, max_tokens: int) -> dict:
    """One streamed greedy completion: {"ttft", "latency", "tokens", "error"}."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    sent = time.perf_counter()
    ttft, tokens, done, error = None, 0, False, None
    try:
        async with client.stream("POST", url + "/v1/completions", json=body, timeout=600) as response:
            if response.status_code != 200:
                return {"error": f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"}
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    error = event["error"]["message"]
                elif event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                elif ttft is None and any(choice.get("text") for choice in event["choices"]):
                    ttft = time.perf_counter() - sent
    except Exception as failure:  # noqa: BLE001  a failed request is counted, never fatal
        error = f"{type(failure).__name__}: {failure}"
    if error is None and not done:
        error = "the stream ended without [DONE]"
    return {"ttft": ttft, "latency": time.perf_counter() - sent, "tokens": tokens, "error": error}


async def load(args, url: str) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    async with httpx.AsyncClient(limits=limits) as client:
        for prompt in PROMPTS:  # warm-up: every prompt once (JAX compiles), not timed
            warm = await one_request(client, url, args.model, prompt, args.max_tokens)
            if warm["error"]:
                raise RuntimeError(f"warm-up request failed: {warm['error']}")
        results: list[dict] = []
        start = time.perf_counter()
        end = start + args.seconds

        async def worker(index: int) -> None:
            turn = index
            while time.perf_counter() < end:
                results.append(await one_request(client, url, args.model, PROMPTS[turn % len(PROMPTS)], args.max_tokens))
                turn += 1

        await asyncio.gather(*(worker(i) for i in range(args.clients)))
        wall = time.perf_counter() - start
    ok = [r for r in results if not r["error"]]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    latency = [r["latency"] for r in ok]

    def pct(values, q):
        return round(float(np.percentile(values, q)), 4) if values else None

    return {"requests": len(results), "errors": len(results) - len(ok), "tokens": sum(r["tokens"] for r in ok),
            "tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 2), "wall_s": round(wall, 2),
            "ttft_p50": pct(ttft, 50), "ttft_p95": pct(ttft, 95), "latency_p50": pct(latency, 50),
            "latency_p95": pct(latency, 95),
            "first_errors": sorted({r["error"] for r in results if r["error"]})[:3]}  # fmt: skip


async def run_one(args, framework: str, engine: str) -> dict:
    import httpx

    process, url = start_server(args, framework, engine)
    try:
        async with httpx.AsyncClient() as client:
            await wait_healthy(client, url, process)
        return {"framework": framework, "engine": engine, "clients": args.clients, **await load(args, url)}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def table(rows: list[dict]) -> str:
    head = "| stack | engine | clients | requests | errors | tokens/s | TTFT p50 / p95 (s) | latency p50 / p95 (s) |"
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['framework']} | {r['engine']} | {r['clients']} | skipped: {r['skipped']} ||||")
            continue
        lines.append(f"| {r['framework']} | {r['engine']} | {r['clients']} | {r['requests']} | {r['errors']} | "
                     f"{r['tokens_per_s']} | {r['ttft_p50']} / {r['ttft_p95']} | {r['latency_p50']} / {r['latency_p95']} |")
    return "\n".join(lines)


def ratios(rows: list[dict]) -> dict[str, float]:
    """batching / serial tokens/s per stack, where both ran."""
    out = {}
    for framework in sorted({r["framework"] for r in rows}):
        by_engine = {r["engine"]: r for r in rows if r["framework"] == framework and "tokens_per_s" in r}
        if {"batching", "serial"} <= set(by_engine) and by_engine["serial"]["tokens_per_s"]:
            out[framework] = round(by_engine["batching"]["tokens_per_s"] / by_engine["serial"]["tokens_per_s"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--frameworks", default="torch,jax", help="comma-separated: torch,jax")
    parser.add_argument("--engines", default="batching,serial", help="comma-separated: batching,serial")
    parser.add_argument("--checkpoint", type=Path, help="serve this checkpoint (default: the small random GPT-2)")
    parser.add_argument("--model", default="small", help="the served model's name")
    parser.add_argument("--threads", type=int, default=1, help="the server's --threads")
    parser.add_argument("--json", type=Path, help="also write the rows and ratios here")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0 or args.max_tokens < 1:
        parser.error("--clients, --seconds and --max-tokens must be positive")
    with tempfile.TemporaryDirectory(prefix="serve-load-") as scratch:
        if args.checkpoint is None:
            args.checkpoint = small_model(Path(scratch))
        rows = []
        for framework in args.frameworks.split(","):
            for engine in args.engines.split(","):
                try:
                    row = asyncio.run(run_one(args, framework, engine))
                except RuntimeError as error:  # e.g. the batching engine not in this build
                    row = {"framework": framework, "engine": engine, "clients": args.clients, "skipped": str(error)}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    print(table(rows))
    found = ratios(rows)
    for framework, ratio in found.items():
        print(f"{framework}: batching / serial tokens/s = {ratio}x at {args.clients} clients")
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "ratios": found}, indent=2) + "\n")
    return 1 if any(r.get("errors") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
