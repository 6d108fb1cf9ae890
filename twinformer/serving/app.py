"""The FastAPI app of `twinformer serve`: OpenAI's completions and chat completions (streamed with
server-sent events, `data: [DONE]` last), the model list, health, Prometheus metrics, and the chat
page at `/`.

`create_app(engine, model_text, chat_format, model_name, ...)` wires an engine (protocol.py) to HTTP.
Models are `model_name` (the base) and `model_name:adapter` for each adapter the engine loaded at
start: a request names one, and nothing in a request reaches the file system. Every failure a client
can cause is a 4xx with an OpenAI-style error body saying what to change (errors.py).

Shutdown (SIGTERM under uvicorn): uvicorn stops accepting connections and waits for the open ones;
requests already in flight (streams too: sse-starlette's shutdown signal is answered by carrying on,
`shutdown_grace_period`) finish, then the lifespan's end drains the engine.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from importlib import resources

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError
from sse_starlette.sse import EventSourceResponse

from twinformer.serving.chat_template import ChatTemplateError
from twinformer.serving.choices import Choices
from twinformer.serving.errors import ApiError, bad_request, validation_error
from twinformer.serving.limits import room_for
from twinformer.serving.metrics import ServerMetrics
from twinformer.serving.openai_schemas import DEFAULT_MAX_TOKENS, ChatRequest, CompletionRequest
from twinformer.serving.protocol import DecodeRequest
from twinformer.serving.request_body import DEFAULT_MAX_BODY_BYTES, read_json

OPEN_PATHS = ("/health", "/")  # no API key: the health probe, and the chat page (it asks for the key)
METRIC_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/")
DRAIN_SECONDS = 600.0  # how long a stream in flight may run on after SIGTERM


class Guard:
    """ASGI middleware: the API key on every path but OPEN_PATHS, 503 once shutting down, and the
    request counter by path and status."""

    def __init__(self, app, api_key: str | None, metrics: ServerMetrics, closing: asyncio.Event):
        self.app, self.api_key, self.metrics, self.closing = app, api_key, metrics, closing

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        label = path if path in METRIC_PATHS else "other"

        async def counted(message):
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(label, str(message["status"])).inc()
            await send(message)

        refusal = None
        if self.api_key and path not in OPEN_PATHS and not self._authorised(scope):
            refusal = ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                               code="invalid_api_key", type="authentication_error")  # fmt: skip
        elif self.closing.is_set() and path.startswith("/v1/"):
            refusal = ApiError(503, "the server is shutting down: send the request to another server or later",
                               code="shutting_down")  # fmt: skip
        if refusal is not None:
            return await refusal.response()(scope, receive, counted)
        await self.app(scope, receive, counted)

    def _authorised(self, scope) -> bool:
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, key = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(key.strip().encode(), self.api_key.encode())


def create_app(engine, model_text, chat_format, model_name: str, api_key: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, drain_seconds: float = DRAIN_SECONDS) -> FastAPI:  # fmt: skip
    metrics = ServerMetrics(engine)
    closing = asyncio.Event()
    created = int(time.time())
    models = {model_name: None, **{f"{model_name}:{name}": name for name in engine.adapters}}

    @asynccontextmanager
    async def lifespan(app):
        yield
        closing.set()
        await asyncio.to_thread(engine.shutdown, True)  # drain: what is queued and running finishes

    app = FastAPI(title="twinformer serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, api_key=api_key, metrics=metrics, closing=closing)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return error.response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):  # a bug of ours: logged by uvicorn, the client told so
        return ApiError(500, f"internal error ({type(error).__name__}): the request was not completed",
                        code="internal_error").response()  # fmt: skip

    @app.exception_handler(404)
    async def not_found(request: Request, error):
        return ApiError(404, f"no endpoint {request.method} {request.url.path}: see GET /v1/models, POST "
                             "/v1/completions, POST /v1/chat/completions", code="not_found").response()  # fmt: skip

    @app.exception_handler(405)
    async def wrong_method(request: Request, error):
        return ApiError(405, f"{request.url.path} does not take {request.method}", code="method_not_allowed").response()

    @app.get("/health")
    async def health():
        return {"status": "shutting down" if closing.is_set() else "ok", **engine.load()}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def list_models():
        data = [{"id": name, "object": "model", "created": created, "owned_by": "twinformer",
                 **({"parent": model_name} if adapter else {})} for name, adapter in models.items()]  # fmt: skip
        return {"object": "list", "data": data}

    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return resources.files("twinformer.serving").joinpath("chat_page.html").read_text(encoding="utf-8")

    def adapter_of(name: str) -> str | None:
        if name not in models:
            raise ApiError(404, f"unknown model {name!r}: use one of {', '.join(models)} (GET /v1/models)",
                           code="model_not_found", param="model")  # fmt: skip
        return models[name]

    def decode_requests(params, prompts: list[list[int]], param: str) -> list[DecodeRequest]:
        """n engine requests per prompt, each checked against the model's context."""
        limit, decoder_only = engine.max_context, engine.decoder_only
        wanted = params.new_tokens
        for ids in prompts:
            if not ids:
                raise bad_request(f"{param} has no tokens: send some text", param=param, code="empty_prompt")
            room = room_for(limit, decoder_only, len(ids))
            if (not decoder_only and len(ids) > limit) or room < 1 or (wanted is not None and wanted > room):
                asked = "" if wanted is None else f" and max_tokens asks for {wanted}"
                raise bad_request(f"this model's context is {limit} tokens; the {param} has {len(ids)} tokens{asked}: "
                                  "shorten the prompt or lower max_tokens", param=param,
                                  code="context_length_exceeded")  # fmt: skip
        adapter = adapter_of(params.model)
        seed = params.seed if params.seed is not None else secrets.randbelow(2**31)
        return [DecodeRequest(tuple(ids), wanted or min(DEFAULT_MAX_TOKENS, room_for(limit, decoder_only, len(ids))),
                              adapter, params.temperature, params.top_p, seed + i)
                for ids in prompts for i in range(params.n)]  # fmt: skip

    async def parse(request: Request, schema):
        try:
            return schema.model_validate(await read_json(request, max_body_bytes))
        except ValidationError as error:
            raise validation_error(error) from error

    @app.post("/v1/completions")
    async def completions(request: Request):
        params = await parse(request, CompletionRequest)
        texts = [params.prompt] if isinstance(params.prompt, str) else params.prompt
        if not texts:
            raise bad_request("prompt: give a prompt (a string, or a list of strings)", param="prompt", code="empty_prompt")
        prompts = [model_text.encode(text) for text in texts]
        return await respond(request, params, prompts, "prompt", chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        params = await parse(request, ChatRequest)
        try:
            rendered = chat_format.render([{"role": m.role, "content": m.text} for m in params.messages])
        except ChatTemplateError as error:
            raise bad_request(str(error), param="messages", code="invalid_messages") from error
        encode = model_text.encode_rendered if chat_format.templated else model_text.encode
        return await respond(request, params, [encode(rendered)], "messages", chat=True)

    async def respond(request: Request, params, prompts: list[list[int]], param: str, chat: bool):
        started = time.perf_counter()
        path = request.url.path
        requests = decode_requests(params, prompts, param)
        try:
            choices = Choices(engine, requests, model_text, params.stop)
        except ValueError as error:  # the engine's own check (limits.py): the client's to fix
            raise bad_request(str(error), param=param) from error
        except RuntimeError as error:  # shutting down
            raise ApiError(503, str(error), code="shutting_down") from error
        metrics.prompt_tokens.inc(sum(len(ids) for ids in prompts))
        reply = Reply(chat, params.model, len(requests), sum(len(ids) for ids in prompts))

        def record() -> None:
            metrics.completion_tokens.inc(choices.completion_tokens)
            metrics.latency.labels(path).observe(time.perf_counter() - started)
            if choices.first_token_at is not None:
                metrics.first_token.labels(path).observe(choices.first_token_at - started)

        if params.stream:
            return EventSourceResponse(stream(choices, reply, params.include_usage, record), ping=15,
                                       shutdown_event=anyio.Event(), shutdown_grace_period=drain_seconds)  # fmt: skip
        watcher = asyncio.create_task(cancel_on_disconnect(request, choices))
        try:
            texts, reasons = [""] * len(requests), [None] * len(requests)
            async for index, delta, reason in choices.events():
                texts[index] += delta
                reasons[index] = reason or reasons[index]
        finally:
            watcher.cancel()
            choices.cancel()
        record()
        return JSONResponse(reply.whole(texts, reasons, choices.completion_tokens))

    async def stream(choices: Choices, reply: "Reply", include_usage: bool, record):
        try:
            if reply.chat:
                for index in range(reply.count):
                    yield json.dumps(reply.chunk(index, None, None, role=True))
            async for index, delta, reason in choices.events():
                yield json.dumps(reply.chunk(index, delta, reason))
            if include_usage:
                yield json.dumps({**reply.head(chunk=True), "choices": [], "usage": reply.usage(choices.completion_tokens)})
            yield "[DONE]"
            record()
        except ApiError as error:
            yield json.dumps(error.body())
            yield "[DONE]"
        finally:  # the client left (sse-starlette closes this generator) or it ended: free the slots
            choices.cancel()

    return app


async def cancel_on_disconnect(request: Request, choices: Choices) -> None:
    """The body is read: the next ASGI message is the client's disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    choices.cancel()


class Reply:
    """OpenAI's response shapes for one request: whole, or as stream chunks."""

    def __init__(self, chat: bool, model: str, count: int, prompt_tokens: int):
        self.chat, self.model, self.count, self.prompt_tokens = chat, model, count, prompt_tokens
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def head(self, chunk: bool) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}  # fmt: skip

    def whole(self, texts: list[str], reasons: list[str | None], completion_tokens: int) -> dict:
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                        "logprobs": None} for i, (text, reason) in enumerate(zip(texts, reasons))]  # fmt: skip
        else:
            choices = [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                       for i, (text, reason) in enumerate(zip(texts, reasons))]  # fmt: skip
        return {**self.head(chunk=False), "choices": choices, "usage": self.usage(completion_tokens)}

    def chunk(self, index: int, delta: str | None, reason: str | None, role: bool = False) -> dict:
        if self.chat:
            body = {"role": "assistant", "content": ""} if role else ({} if reason and not delta else {"content": delta})
            choice = {"index": index, "delta": body, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": index, "text": delta or "", "finish_reason": reason, "logprobs": None}
        return {**self.head(chunk=True), "choices": [choice]}


__all__ = ["create_app"]
