"""`twinformer serve` under concurrent clients and through its life: concurrent greedy requests each
give what they give alone; a client that leaves mid-stream frees its slot; a shutdown (what SIGTERM
does to uvicorn) lets the requests in flight finish; the real command under SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.serve_support import (ENGINES, SlowEngine, ThreadServer, build_app, client, serve_checkpoints,  # noqa: F401
                                 servers, wait_until)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["the cat", "a dog ran in", "the sun is", "the cat sat on the", "a dog", "the mat"]


@pytest.mark.parametrize("engine", ENGINES)
def test_concurrent_greedy_requests_each_equal_the_request_alone(servers, engine):
    api = client(servers("gpt2", "torch", engine))

    def complete(prompt: str) -> str:
        return api.completions.create(model="gpt2", prompt=prompt, max_tokens=10, temperature=0).choices[0].text

    alone = [complete(prompt) for prompt in PROMPTS]
    assert len(set(alone)) > 1, "the check needs different continuations"
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(complete, PROMPTS))
    assert together == alone


def stream_lines(url: str, body: dict, headers: dict | None = None):
    """The SSE `data:` payloads of a streamed request, as they arrive."""
    with httpx.stream("POST", url, json=body, headers=headers, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data:"):
                yield line[5:].strip()


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
@pytest.mark.parametrize("engine", ENGINES)
def test_a_client_leaving_mid_request_frees_its_slot(serve_checkpoints, engine, stream):
    slow = None

    def wrap(decoder):
        nonlocal slow
        slow = SlowEngine(decoder, delay=0.1)  # 100 tokens would take 10 s
        return slow

    server = ThreadServer(build_app(serve_checkpoints, "gpt2", "torch", engine, wrap=wrap))
    try:
        body = {"model": "gpt2", "prompt": "the cat", "max_tokens": 100, "temperature": 0, "stream": stream}
        if stream:
            lines = stream_lines(server.url + "/v1/completions", body)
            for _ in range(3):  # a few tokens in, the client goes away
                next(lines)
            lines.close()
        else:  # the client gives up waiting for the whole reply
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(server.url + "/v1/completions", json=body, timeout=0.8)
        started = time.monotonic()
        assert wait_until(lambda: slow.finished == ["cancelled"], timeout=8), slow.finished
        assert time.monotonic() - started < 5, "the slot was freed only when the request had run out"
        health = httpx.get(server.url + "/health").json()
        assert health["running"] == 0 and health["queued"] == 0
        # and the next request gets the engine
        assert client(server).completions.create(model="gpt2", prompt="a dog", max_tokens=2, temperature=0).choices
    finally:
        server.stop()


@pytest.mark.parametrize("engine", ENGINES)
def test_shutdown_finishes_the_requests_in_flight(serve_checkpoints, engine):
    wrapped = []
    server = ThreadServer(build_app(serve_checkpoints, "gpt2", "torch", engine,
                                   wrap=lambda d: wrapped.append(SlowEngine(d, 0.05)) or wrapped[-1]))  # fmt: skip
    body = {"model": "gpt2", "prompt": "the cat", "max_tokens": 30, "temperature": 0}
    payloads = []

    def stream() -> None:
        payloads.extend(stream_lines(server.url + "/v1/completions", {**body, "stream": True}))

    whole = {}

    def complete() -> None:
        whole["reply"] = httpx.post(server.url + "/v1/completions", json=body, timeout=120).json()

    threads = [threading.Thread(target=stream), threading.Thread(target=complete)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: len(payloads) >= 2)
    stopper = threading.Thread(target=server.stop)  # uvicorn's SIGTERM path: should_exit, then drain
    stopper.start()
    for thread in threads:
        thread.join(120)
    stopper.join(120)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    streamed_text = "".join(c["choices"][0]["text"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    assert whole["reply"]["choices"][0]["text"] == streamed_text
    assert wrapped[0].finished in (["length", "length"], ["stop", "stop"])
    with pytest.raises(httpx.ConnectError):  # and no new requests
        httpx.post(server.url + "/v1/completions", json=body, timeout=5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_serve_command_finishes_a_stream_in_flight_on_sigterm(serve_checkpoints):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "TWINFORMER_API_KEY": "k"}
    process = subprocess.Popen([sys.executable, "-m", "twinformer.cli", "serve", "--checkpoint", str(serve_checkpoints["gpt2"]),
                                "--port", str(port), "--no-batching"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert wait_until(lambda: _healthy(url), timeout=120), process.stderr.read() if process.poll() is not None else ""
        body = {"model": "gpt2", "prompt": "the cat", "max_tokens": 100, "temperature": 0, "stream": True}
        lines = stream_lines(url + "/v1/completions", body, headers={"Authorization": "Bearer k"})
        first = next(lines)
        process.send_signal(signal.SIGTERM)
        rest = list(lines)
        assert rest[-1] == "[DONE]" and len(rest) > 2
        finish = json.loads(rest[-2])["choices"][0]["finish_reason"]
        assert finish in ("length", "stop") and json.loads(first)["choices"][0]["finish_reason"] is None
        # uvicorn re-raises the signal once it has shut down: the process ends as killed by SIGTERM
        # (143 in a shell), the exit status the CLI's other commands give for it (twinformer/cli.py)
        assert process.wait(60) == -signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "twinformer serve: gpt2" in process.stderr.read()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
