"""The serial engine: one request at a time through the stack's one generation loop ("batching off").

Each request is one `generate` call of twinformer/decoding_model.py's loader (torch_impl/generate.py
or jax_impl/generate.py) with `on_token` streaming its tokens to the request's sink as they come.
`on_token` is also where a request ends early: at a stop id of the request, once max_new_tokens are
out, or when it was cancelled (its client left), it raises `_Ended`, which leaves the loop at that
step boundary.

Adapters: each adapter loaded at start keeps its own merged copy of the weights (the loader's
W + scaling * B @ A, as `generate --adapter` decodes), so a request for an adapter costs nothing
extra per step, and memory grows by one model per adapter. (The batching engine shares one base
across adapters; this engine is the simple fallback.)

JAX compiles one decode program per (prompt length, new tokens) shape: the JAX stack rounds both
up to powers of two (prompts padded and masked: left for decoder-only prompts, right for sources;
the pads are masked out of attention, and positions count real tokens only), so a new request
compiles only for a new bucket. Torch runs each request at its own shape.
"""

from __future__ import annotations

import itertools
import queue
import threading
from pathlib import Path

import numpy as np

from shared.data.batching import bucket_width
from shared.decoding.generation import GenerationConfig
from shared.families import family_of
from twinformer.serving.limits import check_request, max_context, room_for
from twinformer.serving.protocol import DecodeRequest, TokenSink

_STOP = object()  # the queue item that ends the worker thread


class _Ended(Exception):
    """Raised from on_token to leave the generation loop: reason is the request's finish reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SerialEngine:
    """Engine (twinformer/serving/protocol.py) decoding one request at a time on its own thread."""

    slots = 1

    def __init__(self, framework: str, checkpoint: Path, adapters: dict[str, Path] | None = None):
        from twinformer.decoding_model import load_decoding_model

        self.framework = framework
        self.config, base = load_decoding_model(framework, Path(checkpoint))
        self._decoders = {None: base}
        for name, directory in (adapters or {}).items():
            self._decoders[name] = load_decoding_model(framework, Path(checkpoint), Path(directory))[1]
        self.adapters = tuple(adapters or ())
        self.max_context = max_context(self.config)
        self.decoder_only = family_of(self.config).decoder_only
        self._bucketed = framework == "jax"  # fixed shapes: few compiles (module docstring)
        self._queue: queue.Queue = queue.Queue()
        self._tickets = itertools.count(1)
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()
        self._accepting = True
        self._running: int | None = None
        self._waiting = 0  # requests queued, not yet decoding (for load())
        self._thread = threading.Thread(target=self._work, name="twinformer-serial-engine", daemon=True)
        self._thread.start()

    # -- the Engine protocol (called from the server's event loop) -----------------------------------
    def submit(self, request: DecodeRequest, sink: TokenSink) -> int:
        check_request(request, self.config, self.decoder_only, self.adapters)
        with self._lock:
            if not self._accepting:
                raise RuntimeError("the engine is shutting down: it takes no new requests")
            ticket = next(self._tickets)
            self._waiting += 1
            self._queue.put((ticket, request, sink))
        return ticket

    def cancel(self, ticket: int) -> None:
        with self._lock:
            self._cancelled.add(ticket)

    def load(self) -> dict[str, int]:
        return {"queued": self._waiting, "running": int(self._running is not None), "slots": self.slots}

    def shutdown(self, drain: bool = True) -> None:
        with self._lock:
            if not self._accepting:
                return
            self._accepting = False
            if not drain:
                self._cancelled.update(range(1, next(self._tickets)))
            self._queue.put(_STOP)
        self._thread.join()

    # -- the engine thread ----------------------------------------------------------------------------
    def _work(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            ticket, request, sink = item
            with self._lock:
                self._waiting -= 1
            self._running = ticket
            try:
                if ticket in self._cancelled:
                    sink.finish("cancelled")
                else:
                    self._decode(ticket, request, sink)
            finally:
                self._running = None
                with self._lock:
                    self._cancelled.discard(ticket)

    def _inputs(self, request: DecodeRequest) -> tuple[np.ndarray, np.ndarray, int]:
        """(ids (1, L), mask (1, L), N steps to compile for) of one request."""
        c, n, wanted = self.config, len(request.prompt_ids), request.max_new_tokens
        width, steps = n, wanted
        if self._bucketed:
            steps = bucket_width(wanted, 1, room_for(c.max_len, self.decoder_only, n))  # a power of two, or the room
            width = bucket_width(n, 1, c.max_len)
            if self.decoder_only and width + steps > c.max_len:  # no room to pad: this request's own shape
                width = n
        ids = np.full((1, width), c.pad_id, dtype=np.int64)
        mask = np.zeros((1, width), dtype=bool)
        if self.decoder_only:  # left-padded, as decoder-only prompts are
            ids[0, width - n:], mask[0, width - n:] = request.prompt_ids, True
        else:  # a source: right-padded
            ids[0, :n], mask[0, :n] = request.prompt_ids, True
        return ids, mask, steps

    def _decode(self, ticket: int, request: DecodeRequest, sink: TokenSink) -> None:
        ids, mask, steps = self._inputs(request)
        sampling = request.temperature > 0
        config = GenerationConfig(max_new_tokens=steps, do_sample=sampling,
                                  temperature=request.temperature if sampling else 1.0,
                                  top_p=request.top_p if sampling else 1.0)  # fmt: skip
        stops = set(request.stop_ids) | {self.config.eos_id}
        produced = 0

        def on_token(tokens: np.ndarray) -> None:  # (1,) the step's token
            nonlocal produced
            if ticket in self._cancelled:
                raise _Ended("cancelled")
            token = int(tokens[0])
            if token in stops:
                raise _Ended("stop")
            sink.token(token)
            produced += 1
            if produced >= request.max_new_tokens:
                raise _Ended("length")

        try:
            self._decoders[request.adapter](ids, mask, config, seed=request.seed, on_token=on_token)
        except _Ended as ended:
            sink.finish(ended.reason)
        except Exception as error:  # noqa: BLE001  one failed request must not stop the engine
            sink.finish("error", f"{type(error).__name__}: {error}")
        else:  # the loop ran its steps without a stop token (cannot outlast max_new_tokens: steps >= it)
            sink.finish("length")


__all__ = ["SerialEngine"]
