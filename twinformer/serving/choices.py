"""One API request's choices in flight: engine tokens -> text deltas, on the server's event loop.

An OpenAI request becomes one engine request per (prompt, choice) (n > 1: seeds seed + i). Their
sinks forward the engine thread's calls into one asyncio queue (`call_soon_threadsafe`), and
`events()` turns them into (choice index, text delta, finish reason or None): tokens become text
through prompt_codec's TextStream, and the OpenAI `stop` strings are matched on the text (a stop
string may span tokens): text that might begin one is held back until it cannot, a choice that
reaches one ends with "stop" at the text before it, and its engine request is cancelled.
"""

from __future__ import annotations

import asyncio
import time

from twinformer.serving.errors import ApiError
from twinformer.serving.protocol import DecodeRequest


class QueueSink:
    """TokenSink of one choice: engine-thread calls -> (index, kind, value) items on the loop's queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, index: int):
        self.loop, self.queue, self.index = loop, queue, index

    def _put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop has closed (server gone): nobody is listening
            pass

    def token(self, token_id: int) -> None:
        self._put((self.index, "token", int(token_id)))

    def finish(self, reason: str, message: str | None = None) -> None:
        self._put((self.index, "finish", (reason, message)))


class StopText:
    """Text of one choice, cut before the first of `stops` (see the module docstring)."""

    def __init__(self, stream, stops: list[str]):
        self.stream, self.stops = stream, stops
        self.pending, self.stopped, self.tokens = "", False, 0

    def push(self, token: int) -> str:
        self.tokens += 1
        return self._feed(self.stream.push(token), final=False)

    def flush(self) -> str:
        return self._feed(self.stream.flush(), final=True)

    def _feed(self, text: str, final: bool) -> str:
        if self.stopped:
            return ""
        self.pending += text
        hits = [i for i in (self.pending.find(stop) for stop in self.stops) if i >= 0]
        if hits:
            out, self.pending, self.stopped = self.pending[: min(hits)], "", True
            return out
        keep = 0 if final else max((k for stop in self.stops for k in range(1, len(stop))
                                    if self.pending.endswith(stop[:k])), default=0)  # fmt: skip
        out, self.pending = self.pending[: len(self.pending) - keep], self.pending[len(self.pending) - keep :]
        return out


class Choices:
    """The engine requests of one API request (submitted on construction; all or none)."""

    def __init__(self, engine, requests: list[DecodeRequest], model_text, stops: list[str]):
        self.engine = engine
        self.queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.texts = [StopText(model_text.stream(), stops) for _ in requests]
        self.done = [False] * len(requests)
        self.first_token_at: float | None = None
        self.tickets: list[int] = []
        try:
            for index, request in enumerate(requests):
                self.tickets.append(engine.submit(request, QueueSink(loop, self.queue, index)))
        except BaseException:
            self.cancel()
            raise

    @property
    def completion_tokens(self) -> int:
        return sum(text.tokens for text in self.texts)

    def cancel(self) -> None:
        """Every unfinished choice leaves the engine (client gone); events() ends."""
        for index, ticket in enumerate(self.tickets):
            if not self.done[index]:
                self.done[index] = True
                self.engine.cancel(ticket)
        self.queue.put_nowait(None)

    async def events(self):
        """Yields (index, text delta, finish reason or None) until every choice has finished.

        Tokens that piled up while the loop was busy (the engine steps faster than the loop streams)
        go out as one delta per choice: under load the server sends fewer, larger events, as vLLM's
        stream does, and a client's text is the same either way.
        """
        while not all(self.done):
            items = [await self.queue.get()]
            while not self.queue.empty():
                items.append(self.queue.get_nowait())
            pending: dict[int, str] = {}  # choice index -> text not yet yielded
            try:
                for item in items:
                    for index, delta, reason in self._take(item):
                        if reason is None:
                            pending[index] = pending.get(index, "") + delta
                        else:
                            yield index, pending.pop(index, "") + delta, reason
            except ApiError:  # an engine error: the text before it still goes out first
                for index, delta in pending.items():
                    yield index, delta, None
                raise
            for index, delta in pending.items():
                yield index, delta, None

    def _take(self, item):
        """One queue item -> the (index, delta, reason) it gives: none, or one."""
        if item is None:
            return
        index, kind, value = item
        if self.done[index]:
            return  # a cancelled choice's last words
        text = self.texts[index]
        if kind == "token":
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            delta = text.push(value)
            if text.stopped:  # a stop string: the choice ends here
                self.done[index] = True
                self.engine.cancel(self.tickets[index])
                yield index, delta, "stop"
            elif delta:
                yield index, delta, None
            return
        reason, message = value
        self.done[index] = True
        if reason == "error":
            raise ApiError(500, f"decoding failed: {message}", code="engine_error")
        if reason == "cancelled":
            raise ApiError(503, "the server stopped this request (shutting down): send it again", code="cancelled")
        yield index, text.flush(), reason

__all__ = ["Choices", "QueueSink", "StopText"]
