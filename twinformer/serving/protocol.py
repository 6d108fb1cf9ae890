"""The contract between the HTTP layer and the engines that decode for it.

The HTTP layer (FastAPI under uvicorn) turns OpenAI-shaped requests into `DecodeRequest`s and hands
them to an `Engine`. An engine owns one loaded model (one stack) and the LoRA adapters loaded at
start; it decodes on its own thread and reports each request's tokens to that request's `TokenSink`
as they are produced. Two engines implement it:
  - the serial engine: one request at a time through the stack's one generation loop;
  - the batching engine: requests join the running batch on the KV cache at a step boundary and leave
    it when they stop or are cancelled (continuous batching), with no waiting for the slowest.
For the same greedy request both give the same tokens as the request decoded alone.

Threading: `submit`, `cancel` and `shutdown` are called from the server's event loop thread and must
not block on decoding. Sink methods are called from the engine thread; the HTTP layer forwards them
into asyncio with `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class DecodeRequest:
    """One sequence to decode (an OpenAI request with n > 1 becomes n of these, seeds seed + i).

    prompt_ids: encoder-decoder: the source ids (as the model's tokenizer encodes them, eos
        included); decoder-only: the prompt ids (the chat template already applied).
    adapter: None for the base model, else one of Engine.adapters (validated before submit).
    temperature 0 means greedy (argmax); otherwise sampling with temperature and top_p through
        shared.decoding.generation.choose_next's rule, drawing u from shared.decoding.generation.uniforms(seed, ...).
    stop_ids: token ids that end the request (the engine adds the model's own stop ids).
    """

    prompt_ids: tuple[int, ...]
    max_new_tokens: int
    adapter: str | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    stop_ids: tuple[int, ...] = ()


class TokenSink(Protocol):
    """Where an engine reports one request's progress (called on the engine thread)."""

    def token(self, token_id: int) -> None:
        """One new token (a stop token is not reported: `finish("stop")` follows instead)."""

    def finish(self, reason: FinishReason, message: str | None = None) -> None:
        """Called exactly once per submitted request; no `token` after it. message: why, for "error"."""


class Engine(Protocol):
    """A loaded model that decodes submitted requests (see the module docstring)."""

    adapters: tuple[str, ...]  # LoRA adapter names loaded at start; requests pick one or the base
    max_context: int  # prompt tokens + max_new_tokens allowed for one request (the model's max_len)
    decoder_only: bool

    def submit(self, request: DecodeRequest, sink: TokenSink) -> int:
        """Queue `request`; returns a ticket for `cancel`. Raises ValueError for a request that can
        never run (too long, unknown adapter), before anything is queued (the server answers 400), and
        RuntimeError once shutting down (503: the client may retry elsewhere)."""

    def cancel(self, ticket: int) -> None:
        """The request leaves at the next step boundary (its slot is freed); finish("cancelled") follows.
        Unknown or finished tickets are ignored."""

    def load(self) -> dict[str, int]:
        """{"queued": requests waiting, "running": requests in the batch, "slots": batch rows}: for /metrics."""

    def shutdown(self, drain: bool = True) -> None:
        """Stop taking requests; with drain, finish the running and queued ones first; then stop the thread."""


__all__ = ["DecodeRequest", "Engine", "FinishReason", "TokenSink"]
