"""`twinformer serve` through the official `openai` client: completions, chat and streaming for a T5
with a LoRA adapter and for a causal LM, in both stacks; the tokens are the ones the stack's own
generation loop gives for the same prompt (greedy), streaming or not."""

from __future__ import annotations

import numpy as np
import pytest

from shared.decoding.generation import GenerationConfig
from tests.serve_support import ADAPTER, ENGINES, client, serve_checkpoints, servers  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "the cat sat"
MESSAGES = [{"role": "user", "content": "Summarize: my phone does not record my steps"}]


def reference_text(paths, family: str, framework: str, ids: list[int], max_new: int, adapter: bool = False) -> str:
    """What the one generation loop decodes for `ids` alone (greedy), cut at the model's eos.

    Torch's loop is the reference for both stacks' servers: the stacks decode the same tokens
    (parity_tests/, tests/test_commands_by_family.py), and a JAX reference would compile a second
    program (the whole loop) beside the server's streaming step, for minutes on the CI machine.
    """
    framework = "torch"
    from shared.checkpoints.checkpoint import read_config
    from shared.decoding.batching import trim_at_eos
    from twinformer.decoding_model import load_decoding_model
    from twinformer.serving.model_text import ModelText

    checkpoint = paths[family]
    config = read_config(checkpoint)
    _, decode = load_decoding_model(framework, checkpoint, paths["t5-adapter"] if adapter else None)
    out = decode(np.array([ids]), np.ones((1, len(ids)), bool), GenerationConfig(max_new_tokens=max_new))
    return ModelText.load(checkpoint, config).decode(list(trim_at_eos(out[0], config.eos_id)))


def prompt_ids(paths, family: str, text: str) -> list[int]:
    from shared.checkpoints.checkpoint import read_config
    from twinformer.serving.model_text import ModelText

    return ModelText.load(paths[family], read_config(paths[family])).encode(text)


def streamed(stream) -> tuple[list[str], str | None]:
    """(text pieces, finish reason) of a streamed completion or chat completion."""
    pieces, reason = [], None
    for chunk in stream:
        for choice in chunk.choices:
            piece = choice.delta.content if hasattr(choice, "delta") else choice.text
            if piece:
                pieces.append(piece)
            reason = choice.finish_reason or reason
    return pieces, reason


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("framework", ["torch", "jax"])
@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_completion_streamed_and_whole_equal_the_generation_loop(servers, serve_checkpoints, family, framework, engine):
    api = client(servers(family, framework, engine))
    ids = prompt_ids(serve_checkpoints, family, PROMPT)
    expected = reference_text(serve_checkpoints, family, framework, ids, 8)
    whole = api.completions.create(model=family, prompt=PROMPT, max_tokens=8, temperature=0)
    assert whole.choices[0].text == expected and expected
    assert whole.usage.prompt_tokens == len(ids) and 1 <= whole.usage.completion_tokens <= 8
    assert whole.choices[0].finish_reason in ("stop", "length")
    pieces, reason = streamed(api.completions.create(model=family, prompt=PROMPT, max_tokens=8, temperature=0,
                                                     stream=True))  # fmt: skip
    assert "".join(pieces) == expected and reason == whole.choices[0].finish_reason
    assert len(pieces) > 1, "the completion came in one piece: not streamed"


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_t5_chat_with_the_adapter_streamed_and_whole(servers, serve_checkpoints, framework, engine):
    """The book's case: the chapter-5 style adapter over T5, picked by model name base:adapter."""
    api = client(servers("t5", framework, engine))
    ids = prompt_ids(serve_checkpoints, "t5", MESSAGES[0]["content"])  # one message: sent as it is
    with_adapter = reference_text(serve_checkpoints, "t5", framework, ids, 8, adapter=True)
    base = reference_text(serve_checkpoints, "t5", framework, ids, 8)
    assert with_adapter != base, "the test adapter must change the output"
    reply = api.chat.completions.create(model=f"t5:{ADAPTER}", messages=MESSAGES, max_tokens=8, temperature=0)
    assert reply.choices[0].message.content == with_adapter and reply.choices[0].message.role == "assistant"
    assert reply.usage.prompt_tokens == len(ids)
    pieces, _ = streamed(api.chat.completions.create(model=f"t5:{ADAPTER}", messages=MESSAGES, max_tokens=8,
                                                     temperature=0, stream=True))  # fmt: skip
    assert "".join(pieces) == with_adapter and len(pieces) > 1
    assert api.chat.completions.create(model="t5", messages=MESSAGES, max_tokens=8,
                                       temperature=0).choices[0].message.content == base  # fmt: skip


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_causal_lm_chat_uses_the_checkpoint_chat_template(servers, serve_checkpoints, framework, engine):
    from tests.serve_support import CHAT_TEMPLATE
    from twinformer.serving.chat_template import ChatFormat

    api = client(servers("gpt2", framework, engine))
    messages = [{"role": "user", "content": "a dog ran"}]
    rendered = ChatFormat(CHAT_TEMPLATE).render(messages)
    assert rendered.endswith("<|im_start|>assistant\n")
    from shared.data.prompt_codec import PromptCodec

    ids = PromptCodec.load(serve_checkpoints["gpt2"]).tokenizer.encode(rendered, add_special_tokens=False).ids
    expected = reference_text(serve_checkpoints, "gpt2", framework, ids, 8)
    reply = api.chat.completions.create(model="gpt2", messages=messages, max_tokens=8, temperature=0)
    assert reply.choices[0].message.content == expected and reply.usage.prompt_tokens == len(ids)
    pieces, _ = streamed(api.chat.completions.create(model="gpt2", messages=messages, max_tokens=8, temperature=0,
                                                     stream=True))  # fmt: skip
    assert "".join(pieces) == expected


@pytest.mark.parametrize("engine", ENGINES)
def test_n_choices_seeds_and_stop_strings(servers, engine):
    api = client(servers("gpt2", "torch", engine))
    sampled = api.completions.create(model="gpt2", prompt=PROMPT, max_tokens=8, temperature=1.5, n=3, seed=7)
    again = api.completions.create(model="gpt2", prompt=PROMPT, max_tokens=8, temperature=1.5, n=3, seed=7)
    texts = [choice.text for choice in sampled.choices]
    assert [c.index for c in sampled.choices] == [0, 1, 2] and texts == [c.text for c in again.choices]
    assert len(set(texts)) > 1, "choices i use seeds seed + i: they differ"
    whole = api.completions.create(model="gpt2", prompt=PROMPT, max_tokens=12, temperature=0).choices[0].text
    stop = whole[3:5]
    cut = api.completions.create(model="gpt2", prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].text == whole[: whole.index(stop)] and cut.choices[0].finish_reason == "stop"
    pieces, reason = streamed(api.completions.create(model="gpt2", prompt=PROMPT, max_tokens=12, temperature=0,
                                                     stop=stop, stream=True))  # fmt: skip
    assert "".join(pieces) == cut.choices[0].text and reason == "stop"


def test_models_health_and_metrics(servers):
    import httpx

    server = servers("t5", "torch")
    assert [m.id for m in client(server).models.list().data] == ["t5", f"t5:{ADAPTER}"]
    client(server).completions.create(model="t5", prompt=PROMPT, max_tokens=3, temperature=0)
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["running"] == 0 and health["queued"] == 0
    text = httpx.get(server.url + "/metrics").text
    for name in ("twinformer_requests_total", "twinformer_completion_tokens_total", "twinformer_queue_depth",
                 "twinformer_request_latency_seconds_bucket", "twinformer_time_to_first_token_seconds_bucket"):
        assert name in text, name
    assert 'twinformer_requests_total{path="/v1/completions",status="200"}' in text
