"""`twinformer serve`'s trust rules: every bad input gets a 4xx with an OpenAI-style error that says
what to change, and the next good request still succeeds; the API key; the body size limit; adapter
names only from the loaded list."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.serve_support import ADAPTER, client, serve_checkpoints, servers  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GOOD = {"model": "gpt2", "prompt": "the cat", "max_tokens": 3, "temperature": 0}


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def assert_still_serving(server) -> None:
    reply = client(server).completions.create(**GOOD)
    assert reply.choices[0].text and reply.usage.completion_tokens >= 1


@pytest.mark.parametrize("body, status, code, says", [
    (b'{"model": "gpt2", "prompt": "the cat"', 400, "invalid_json", "not valid JSON"),
    (b'{"model": "gpt2", "prompt": "the \xff\xfe cat"}', 400, "invalid_utf8", "not valid UTF-8"),
    (b'{"model": "gpt2", "prompt": "the \\udcff cat"}', 400, "invalid_utf8", "lone surrogate"),
    (b'["a list"]', 400, "invalid_json", "JSON object"),
    (b'{"prompt": "the cat"}', 400, "invalid_value", "model"),
    (b'{"model": "gpt2", "prompt": "the cat", "max_tokens": 0}', 400, "invalid_value", "max_tokens"),
    (b'{"model": "gpt2", "prompt": "the cat", "max_tokens": -5}', 400, "invalid_value", "max_tokens"),
    (b'{"model": "gpt2", "prompt": "the cat", "n": 100000}', 400, "invalid_value", "n:"),
    (b'{"model": "gpt2", "prompt": "the cat", "temperature": 9}', 400, "invalid_value", "temperature"),
    (b'{"model": "gpt-4", "prompt": "the cat"}', 404, "model_not_found", "gpt2"),
    (b'{"model": "gpt2:../../etc", "prompt": "the cat"}', 404, "model_not_found", "unknown model"),
    (b'{"model": "gpt2", "prompt": "' + b"the cat sat on the mat " * 40 + b'"}', 400, "context_length_exceeded",
     "shorten the prompt"),
    (b'{"model": "gpt2", "prompt": "the cat", "max_tokens": 500}', 400, "context_length_exceeded", "lower max_tokens"),
    (b'{"model": "gpt2", "prompt": ""}', 400, "empty_prompt", "no tokens"),
])  # fmt: skip
def test_bad_input_gets_a_4xx_that_says_what_to_change_and_the_server_keeps_serving(servers, body, status, code, says):
    server = servers("gpt2", "torch")
    response = httpx.post(server.url + "/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["code"] == code and says in error["message"], error
    assert_still_serving(server)


def test_the_openai_client_sees_the_errors(servers):
    server = servers("gpt2", "torch")
    api = client(server)
    with pytest.raises(openai.BadRequestError, match="context"):
        api.completions.create(model="gpt2", prompt="the cat sat on the mat " * 40, max_tokens=3)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        api.chat.completions.create(model="gpt2", messages=[{"role": "user", "content": "hi"}], max_tokens=0)
    with pytest.raises(openai.NotFoundError, match="unknown model"):
        api.chat.completions.create(model="gpt2:nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="n"):
        api.completions.create(model="gpt2", prompt="the cat", n=1000)
    assert_still_serving(server)


def test_adapter_names_come_only_from_the_loaded_list(servers):
    server = servers("t5", "torch")
    api = client(server)
    for name in ("t5:other", "t5:/tmp/adapter", f"t5:{ADAPTER}/../x", ADAPTER):
        with pytest.raises(openai.NotFoundError, match=f"t5, t5:{ADAPTER}"):
            api.completions.create(model=name, prompt="the cat", max_tokens=2)
    assert api.completions.create(model=f"t5:{ADAPTER}", prompt="the cat", max_tokens=2, temperature=0).choices


def test_body_size_limit(servers):
    server = servers("gpt2", "torch", max_body_bytes=2000)
    response = httpx.post(server.url + "/v1/completions", json={**GOOD, "prompt": "x" * 5000})
    assert response.status_code == 413 and "limit of 2000 bytes" in error_of(response)["message"]
    assert_still_serving(server)


def test_api_key_on_every_endpoint_but_health(servers):
    server = servers("gpt2", "torch", api_key="s3cret")
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"),
                         ("GET", "/metrics")):  # fmt: skip
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = httpx.request(method, server.url + path, json=GOOD, headers=headers)
            assert response.status_code == 401 and error_of(response)["code"] == "invalid_api_key", (path, headers)
    assert httpx.get(server.url + "/health").status_code == 200
    with pytest.raises(openai.AuthenticationError):
        client(server, api_key="wrong").models.list()
    reply = client(server, api_key="s3cret").completions.create(**GOOD)
    assert reply.choices[0].text
    assert httpx.get(server.url + "/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_unknown_paths_and_methods_get_openai_errors(servers):
    server = servers("gpt2", "torch")
    assert error_of(httpx.get(server.url + "/v1/nothing"))["code"] == "not_found"
    assert httpx.get(server.url + "/v1/completions").status_code == 405
