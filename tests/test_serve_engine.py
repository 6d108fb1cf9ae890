"""The batching engine (twinformer/serving/batching.py) against each stack's own `generate`.

Small random models of every family (the peaked weights of parity_tests/test_torch_generate.py: a
near-uniform model repeats one token, which would hide a cache or position bug), saved as
checkpoints and loaded by `BatchingEngine(framework, checkpoint, adapters, max_batch)` as the
server loads them. Requests outnumber the rows and differ in prompt length and max_new_tokens, and
some are submitted from another request's sink mid-stream, so rows join at many different steps
while others run; every request must get exactly the tokens `generate` gives it alone.

JAX compiles per shape, so the JAX references are one padded `generate` call per family (rows are
independent in generate: a row's tokens do not depend on the others) and the prompt lengths share
one length bucket.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import torch_impl
from parity_tests.test_torch_generate import FAMILIES, peaked
from shared.checkpoints.adapter_io import expected_adapter_shapes, save_adapter
from shared.checkpoints.init import initial_tensors
from shared.checkpoints.lora_config import LoRAConfig
from shared.decoding.generation import GenerationConfig
from twinformer.decoding_model import load_decoding_model
from twinformer.serving.batching import BatchingEngine
from twinformer.serving.protocol import DecodeRequest

TIMEOUT = 120  # seconds a test waits for its requests (JAX compiles on first use)


class Sink:
    """Records one request's tokens and finish; `on_token(count)` runs after each token."""

    def __init__(self, on_token=None):
        self.tokens: list[int] = []
        self.finished: list[tuple[str, str | None]] = []
        self.done = threading.Event()
        self.on_token = on_token

    def token(self, token_id: int) -> None:
        assert not self.finished, "token after finish"
        self.tokens.append(token_id)
        if self.on_token is not None:
            self.on_token(len(self.tokens))

    def finish(self, reason, message=None) -> None:
        self.finished.append((reason, message))
        self.done.set()

    def wait(self) -> "Sink":
        assert self.done.wait(TIMEOUT), "request never finished"
        assert len(self.finished) == 1, f"finish called {len(self.finished)} times"
        return self

    def reason(self) -> str:
        return self.finished[0][0]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One checkpoint per family (book, t5, gpt2, llama), readable by both stacks."""
    paths = {}
    for name, config in FAMILIES.items():
        model = torch_impl.from_numpy(config, peaked(initial_tensors(config, 0)))
        paths[name] = torch_impl.save(model, tmp_path_factory.mktemp(name) / "checkpoint")
    return paths


def prompts(config, lengths, seed: int = 1) -> list[tuple[int, ...]]:
    """Random prompts (no pad, bos or eos inside) of the given lengths."""
    rng = np.random.default_rng(seed)
    return [tuple(int(i) for i in rng.integers(3, config.tgt_vocab_size, size=n)) for n in lengths]


def until_stop(tokens, config, budget: int) -> list[int]:
    """What the engine reports of generate's row: at most `budget` tokens, cut before the stop token."""
    tokens = [int(t) for t in tokens[:budget]]
    return tokens[: tokens.index(config.eos_id)] if config.eos_id in tokens else tokens


def expected(decode, config, request: DecodeRequest) -> list[int]:
    """What the engine must report for `request`: generate's tokens for it alone."""
    sample = request.temperature > 0
    gen = GenerationConfig(max_new_tokens=request.max_new_tokens, do_sample=sample,
                           temperature=request.temperature if sample else 1.0, top_p=request.top_p)
    return until_stop(decode(np.asarray([request.prompt_ids]), None, gen, request.seed)[0], config, request.max_new_tokens)


def expected_greedy(framework: str, decode, config, requests: list[DecodeRequest], decoder_only: bool) -> list[list[int]]:
    """Each greedy request's tokens from generate: torch one request at a time; JAX, which compiles
    per shape, in ONE call (prompts left-padded, sources right-padded; rows of generate are
    independent, and a greedy row's first n tokens do not depend on the budget)."""
    if framework == "torch":
        return [expected(decode, config, request) for request in requests]
    L = max(len(r.prompt_ids) for r in requests)
    ids = np.full((len(requests), L), config.pad_id, dtype=np.int64)
    mask = np.zeros((len(requests), L), dtype=bool)
    for i, r in enumerate(requests):
        where = slice(L - len(r.prompt_ids), L) if decoder_only else slice(0, len(r.prompt_ids))
        ids[i, where], mask[i, where] = r.prompt_ids, True
    out = decode(ids, mask, GenerationConfig(max_new_tokens=max(r.max_new_tokens for r in requests)), 0)
    return [until_stop(row, config, r.max_new_tokens) for row, r in zip(out, requests)]


def run_requests(engine: BatchingEngine, requests: list[DecodeRequest], join_late: dict[int, tuple[int, int]] = {}
                 ) -> list[Sink]:
    """Submit requests (request j with join_late[j] = (i, k): from request i's sink after its k-th token)."""
    sinks = [Sink() for _ in requests]
    for j, (i, k) in join_late.items():
        def submit_late(n: int, j=j, k=k) -> None:
            if n == k:
                engine.submit(requests[j], sinks[j])
        sinks[i].on_token = submit_late
    for j, (request, sink) in enumerate(zip(requests, sinks)):
        if j not in join_late:
            engine.submit(request, sink)
    return [sink.wait() for sink in sinks]


def greedy_requests(config, decoder_only: bool) -> list[DecodeRequest]:
    # L - 1 (decoder-only) or L (encoder-decoder) in 5..7: one JAX length bucket (8)
    lengths = (7, 6, 8, 7, 6) if decoder_only else (6, 5, 7, 6, 5)
    # rows leave at different steps, queued ones join then; request 0 runs past slot 16, where the
    # step's attention span grows (torch_impl/slots.py, jax_impl/slots.py)
    budgets = (17, 3, 6, 4, 7)
    return [DecodeRequest(p, n) for p, n in zip(prompts(config, lengths), budgets)]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_batched_greedy_equals_alone(framework, family, checkpoints):
    config, decode = load_decoding_model(framework, checkpoints[family])
    engine = BatchingEngine(framework, checkpoints[family], max_batch=2)
    try:
        requests = greedy_requests(config, engine.decoder_only)
        # request 4 joins from request 0's sink after its 2nd token: mid-stream, not at a row's exit
        sinks = run_requests(engine, requests, join_late={4: (0, 2)})
    finally:
        engine.shutdown()
    for request, sink, tokens in zip(requests, sinks, expected_greedy(framework, decode, config, requests,
                                                                       engine.decoder_only)):
        assert sink.tokens == tokens, request
        assert sink.reason() == ("length" if len(sink.tokens) == request.max_new_tokens else "stop")
    assert engine.steps_run < sum(len(s.tokens) + 1 for s in sinks)  # rows did share steps


def test_planted_position_bug_is_caught(checkpoints, monkeypatch):
    """A joining row one position off (its first fed token at slot L instead of L - 1) changes tokens."""
    from torch_impl import slots

    real_prefill = slots.CausalLMSlots.prefill

    def off_by_one(self, row, ids):
        first = real_prefill(self, row, ids)
        self.at[row] += 1
        return first

    monkeypatch.setattr(slots.CausalLMSlots, "prefill", off_by_one)
    config, decode = load_decoding_model("torch", checkpoints["llama"])
    engine = BatchingEngine("torch", checkpoints["llama"], max_batch=2)
    try:
        requests = greedy_requests(config, True)
        sinks = run_requests(engine, requests)
    finally:
        engine.shutdown()
    assert any(sink.tokens != expected(decode, config, r) for r, sink in zip(requests, sinks))


def test_cancel_frees_the_row_and_leaves_the_others_unchanged(checkpoints):
    config, decode = load_decoding_model("torch", checkpoints["gpt2"])
    engine = BatchingEngine("torch", checkpoints["gpt2"], max_batch=2)
    requests = [DecodeRequest(p, 12) for p in prompts(config, (5, 6, 4))]
    sinks = [Sink() for _ in requests]
    try:
        tickets = {}
        sinks[0].on_token = lambda n: engine.cancel(tickets[0]) if n == 2 else None
        for i, (request, sink) in enumerate(zip(requests, sinks)):
            tickets[i] = engine.submit(request, sink)
        for sink in sinks:
            sink.wait()
    finally:
        engine.shutdown()
    assert sinks[0].reason() == "cancelled" and len(sinks[0].tokens) == 2
    for request, sink in zip(requests[1:], sinks[1:]):  # request 2 ran in the freed row
        assert sink.tokens == expected(decode, config, request)
    assert engine.load() == {"queued": 0, "running": 0, "slots": 2}


def test_queue_beyond_max_batch_waits_then_runs(checkpoints):
    config, decode = load_decoding_model("torch", checkpoints["llama"])
    engine = BatchingEngine("torch", checkpoints["llama"], max_batch=1)
    loads = []
    requests = [DecodeRequest(p, 4) for p in prompts(config, (3, 5, 4))]
    sinks = [Sink() for _ in requests]
    sinks[0].on_token = lambda n: loads.append(engine.load()) if n == 1 else None
    try:
        for request, sink in zip(requests, sinks):
            engine.submit(request, sink)
        for sink in sinks:
            sink.wait()
    finally:
        engine.shutdown()
    assert loads == [{"queued": 2, "running": 1, "slots": 1}]
    for request, sink in zip(requests, sinks):
        assert sink.tokens == expected(decode, config, request)


@pytest.mark.parametrize("drain", [True, False])
def test_shutdown(checkpoints, drain):
    config, decode = load_decoding_model("torch", checkpoints["t5"])
    engine = BatchingEngine("torch", checkpoints["t5"], max_batch=2)
    requests = [DecodeRequest(p, 6) for p in prompts(config, (4, 6, 5))]
    started = threading.Event()
    sinks = [Sink(on_token=lambda n: started.set()) for _ in requests]
    for request, sink in zip(requests, sinks):
        engine.submit(request, sink)
    assert started.wait(TIMEOUT)
    engine.shutdown(drain=drain)  # returns once the engine thread has stopped
    assert all(sink.done.is_set() for sink in sinks)
    if drain:
        for request, sink in zip(requests, sinks):
            assert sink.reason() in ("length", "stop") and sink.tokens == expected(decode, config, request)
    else:
        assert {sink.reason() for sink in sinks} <= {"cancelled", "length", "stop"}
        assert sinks[2].reason() == "cancelled"  # still queued: never ran
    with pytest.raises(RuntimeError, match="shutting down"):
        engine.submit(requests[0], Sink())


def test_submit_refuses_requests_that_can_never_run(checkpoints):
    engine = BatchingEngine("torch", checkpoints["gpt2"], max_batch=2)
    config = FAMILIES["gpt2"]
    try:
        with pytest.raises(ValueError, match="exceeds the model's 24 positions"):
            engine.submit(DecodeRequest(prompts(config, (20,))[0], 5), Sink())
        with pytest.raises(ValueError, match="unknown adapter 'nope'"):
            engine.submit(DecodeRequest((3, 4), 2, adapter="nope"), Sink())
        with pytest.raises(ValueError, match="max_new_tokens must be a positive integer"):
            engine.submit(DecodeRequest((3, 4), 0), Sink())
        with pytest.raises(ValueError, match="prompt ids must be integers"):
            engine.submit(DecodeRequest((3, 999), 2), Sink())
        assert engine.load()["queued"] == 0
    finally:
        engine.shutdown()
    t5 = BatchingEngine("torch", checkpoints["t5"], max_batch=1)
    try:
        with pytest.raises(ValueError, match="the source has 21 tokens"):
            t5.submit(DecodeRequest(prompts(FAMILIES["t5"], (21,))[0], 2), Sink())
    finally:
        t5.shutdown()


# -- sampling ------------------------------------------------------------------------------------------
SAMPLED = [dict(temperature=1.3, top_p=1.0, seed=5), dict(temperature=0.8, top_p=0.7, seed=11),
           dict(temperature=0.0, top_p=1.0, seed=0), dict(temperature=2.0, top_p=0.9, seed=3)]


def test_sampling_batched_equals_alone_and_across_stacks(checkpoints):
    """torch: every request batched == alone; JAX batched == torch batched (and == JAX alone for one
    sampled request: JAX's generate compiles once per temperature/top_p, so not for all)."""
    results = {}
    for framework in ("torch", "jax"):
        config, decode = load_decoding_model(framework, checkpoints["llama"])
        engine = BatchingEngine(framework, checkpoints["llama"], max_batch=3)
        requests = [DecodeRequest(p, 8, **options) for p, options in zip(prompts(config, (7, 6, 8, 7)), SAMPLED)]
        try:
            sinks = run_requests(engine, requests, join_late={3: (0, 3)})
        finally:
            engine.shutdown()
        results[framework] = [sink.tokens for sink in sinks]
        checked = requests if framework == "torch" else requests[1:2]
        for request, sink in zip(checked, sinks if framework == "torch" else sinks[1:2]):
            assert sink.tokens == expected(decode, config, request), (framework, request)
    assert results["torch"] == results["jax"]
    assert len({tuple(tokens) for tokens in results["torch"]}) == len(SAMPLED)  # the seeds and settings matter


# -- multi-LoRA ----------------------------------------------------------------------------------------
ADAPTERS = {"a": LoRAConfig(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj")),
            "b": LoRAConfig(r=2, alpha=4, dropout=0.0, target_modules=("k_proj", "wo"))}


@pytest.fixture(scope="module")
def t5_adapters(checkpoints, tmp_path_factory) -> dict[str, Path]:
    """Two random adapters over the tiny T5 (different ranks and targets; B nonzero, so they matter)."""
    config, paths = FAMILIES["t5"], {}
    for k, (name, lora) in enumerate(ADAPTERS.items()):
        rng = np.random.default_rng(10 + k)
        tensors = {key: (rng.standard_normal(shape) * 0.5).astype(np.float32)
                   for key, shape in expected_adapter_shapes(config, lora).items()}
        paths[name] = save_adapter(tmp_path_factory.mktemp(f"adapter_{name}"), config, lora, tensors)
    return paths


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_mixed_adapter_batch_equals_each_alone_merged(framework, checkpoints, t5_adapters):
    config = FAMILIES["t5"]
    engine = BatchingEngine(framework, checkpoints["t5"], adapters=t5_adapters, max_batch=3)
    assert engine.adapters == ("a", "b")
    sources = prompts(config, (6, 5, 7, 6))
    requests = [DecodeRequest(p, 7, adapter=a) for p, a in zip(sources, ("a", None, "b", "a"))]
    try:
        sinks = run_requests(engine, requests)
    finally:
        engine.shutdown()
    decoders = {name: load_decoding_model(framework, checkpoints["t5"], path)[1] for name, path in t5_adapters.items()}
    decoders[None] = load_decoding_model(framework, checkpoints["t5"])[1]
    # every request decoded by each model (adapter merged): one shape for all three under JAX
    alone = {name: expected_greedy(framework, decode, config, requests, False) for name, decode in decoders.items()}
    for i, (request, sink) in enumerate(zip(requests, sinks)):
        assert sink.tokens == alone[request.adapter][i], request
    # the adapters change the output, or the test would prove nothing
    assert len({tuple(alone[name][0]) for name in alone}) == 3


# -- JAX compiles ---------------------------------------------------------------------------------------
def test_jax_new_requests_never_recompile_the_step(checkpoints):
    config = FAMILIES["gpt2"]
    engine = BatchingEngine("jax", checkpoints["gpt2"], max_batch=2)
    decoder = engine.decoder

    def compiled() -> tuple[int, int]:  # (step programs, prefill programs)
        return sum(step._cache_size() for step in decoder._steps.values()), decoder._prefill._cache_size()

    try:
        run_requests(engine, [DecodeRequest(p, 3) for p in prompts(config, (6, 7, 8), seed=2)])  # one bucket (8)
        assert compiled() == (1, 1)  # one attention span: every slot written is < 16
        # new lengths in the same bucket, other budgets, other rows: nothing new to compile
        run_requests(engine, [DecodeRequest(p, n) for p, n in zip(prompts(config, (9, 6, 7), seed=3), (5, 2, 4))])
        assert compiled() == (1, 1)
        # a length in a new bucket compiles its prefill once, the step never
        run_requests(engine, [DecodeRequest(p, 2) for p in prompts(config, (4, 5), seed=4)])
        assert compiled() == (1, 2)
        # requests whose slots pass 16 compile the step over the next span once, and only once, and
        # still get their alone tokens
        long = [DecodeRequest(p, config.max_len - 8) for p in prompts(config, (8, 8), seed=5)]
        run_requests(engine, long)
        sinks = run_requests(engine, long)
        assert compiled() == (2, 2) and len(decoder._steps) == 2
        decode = load_decoding_model("jax", checkpoints["gpt2"])[1]
        assert [sink.tokens for sink in sinks] == expected_greedy("jax", decode, config, long, True)
        assert max(len(sink.tokens) for sink in sinks) > 16 - 7  # a row did write past slot 15
    finally:
        engine.shutdown()


def test_request_stop_ids_end_it_and_failures_end_only_the_affected_requests(checkpoints):
    config, decode = load_decoding_model("torch", checkpoints["gpt2"])
    engine = BatchingEngine("torch", checkpoints["gpt2"], max_batch=2)
    try:
        request = DecodeRequest(prompts(config, (5,))[0], 8)
        alone = expected(decode, config, request)
        stop_at = alone[3]
        sink = run_requests(engine, [DecodeRequest(request.prompt_ids, 8, stop_ids=(stop_at,))])[0]
        assert sink.reason() == "stop" and sink.tokens == alone[: alone.index(stop_at)]
        # a sink that raises is logged; its request and the others go on
        rude = Sink(on_token=lambda n: 1 / 0)
        engine.submit(request, rude)
        assert rude.wait().tokens == alone
        # a failing step ends the requests in it with "error" and the engine keeps serving
        real_step = engine.decoder.step
        engine.decoder.step = lambda *args: (_ for _ in ()).throw(RuntimeError("planted"))
        failed = run_requests(engine, [request])[0]
        assert failed.finished == [("error", "decoding failed: planted")]
        engine.decoder.step = real_step
        assert run_requests(engine, [request])[0].tokens == alone
    finally:
        engine.shutdown()


def test_jax_sinusoid_reads_each_row_at_its_own_position():
    """The book's sinusoid positions per row (the engine's book test model has learned ones)."""
    from jax_impl.positions import sinusoid

    starts = np.array([[0], [5], [3]])
    per_row = np.asarray(sinusoid(16, 8, 1, starts))  # (3, 1, 8)
    one_by_one = np.stack([np.asarray(sinusoid(16, 8, 1, int(s))) for s in starts[:, 0]])
    assert per_row.shape == (3, 1, 8) and np.array_equal(per_row, one_by_one)
