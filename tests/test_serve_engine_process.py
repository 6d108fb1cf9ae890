"""The batching engine in its own process (twinformer/serving/engine_process.py), as `serve` runs it.

The in-process engine's own tests (test_serve_engine.py) prove the tokens; here the process
boundary: the same tokens come through the pipes, a bad request is refused before it is sent, a
child that cannot start says why, shutdown drains, a cancelled request frees its row, and a child
that dies ends its open requests with "error" and refuses new ones.
"""

from __future__ import annotations

import pytest

from tests.serve_support import wait_until
from tests.test_serve_engine import FAMILIES, Sink, checkpoints, expected, prompts  # noqa: F401  (fixture)
from twinformer.decoding_model import load_decoding_model
from twinformer.serving.engine_process import ProcessEngine
from twinformer.serving.protocol import DecodeRequest


@pytest.fixture(scope="module")
def engine(checkpoints):  # noqa: F811
    engine = ProcessEngine("torch", checkpoints["gpt2"], max_batch=2)
    yield engine
    engine.shutdown()


def test_requests_get_their_alone_tokens_through_the_process(engine, checkpoints):  # noqa: F811
    config = FAMILIES["gpt2"]
    requests = [DecodeRequest(p, n) for p, n in zip(prompts(config, (3, 6, 4, 5), seed=7), (5, 3, 6, 4))]
    sinks = [Sink() for _ in requests]  # four requests over two rows: some wait for a free row
    for request, sink in zip(requests, sinks):
        engine.submit(request, sink)
    decode = load_decoding_model("torch", checkpoints["gpt2"])[1]
    for request, sink in zip(requests, sinks):
        assert sink.wait().tokens == expected(decode, config, request)
    assert wait_until(lambda: engine.load() == {"queued": 0, "running": 0, "slots": 2})


def test_a_bad_request_is_refused_before_it_reaches_the_child(engine):
    config = FAMILIES["gpt2"]
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.submit(DecodeRequest(prompts(config, (4,))[0], config.max_len * 2), Sink())
    with pytest.raises(ValueError, match="adapter"):
        engine.submit(DecodeRequest(prompts(config, (4,))[0], 2, adapter="nope"), Sink())


def test_a_cancelled_request_leaves_its_row(engine):
    config = FAMILIES["gpt2"]
    prompt = prompts(config, (2,), seed=3)[0]
    sink = Sink()
    engine.cancel(engine.submit(DecodeRequest(prompt, config.max_len - 2), sink))
    # the child may finish a short request before the cancel arrives: either way it ends, and the row is free
    assert sink.wait().reason() in ("cancelled", "length", "stop")
    assert wait_until(lambda: engine.load()["running"] == 0)


def test_a_child_that_cannot_start_says_why(tmp_path):
    with pytest.raises(RuntimeError, match="did not start: CheckpointError: .*does not exist"):
        ProcessEngine("torch", tmp_path / "no-such-checkpoint")


def test_shutdown_drains_and_a_dead_child_ends_open_requests(checkpoints):  # noqa: F811
    config = FAMILIES["gpt2"]
    drained = ProcessEngine("torch", checkpoints["gpt2"], max_batch=1)
    sinks = [Sink() for _ in range(3)]
    for prompt, sink in zip(prompts(config, (3, 4, 5), seed=9), sinks):
        drained.submit(DecodeRequest(prompt, 4), sink)
    drained.shutdown(drain=True)  # queued and running requests finish first
    assert {sink.wait().reason() for sink in sinks} <= {"length", "stop"}
    with pytest.raises(RuntimeError, match="shutting down"):
        drained.submit(DecodeRequest(prompts(config, (3,))[0], 2), Sink())

    dying = ProcessEngine("torch", checkpoints["gpt2"], max_batch=1)
    try:
        dying._process.kill()
        dying._process.join()
        open_request = Sink()
        try:
            dying.submit(DecodeRequest(prompts(config, (3,))[0], 4), open_request)
        except RuntimeError:
            pass  # the reader already saw the child go
        else:
            assert open_request.wait().finished == [("error", "the decoding process exited")]
        assert wait_until(lambda: not dying._alive)
        with pytest.raises(RuntimeError, match="decoding process has exited"):
            dying.submit(DecodeRequest(prompts(config, (3,))[0], 2), Sink())
    finally:
        dying.shutdown()
