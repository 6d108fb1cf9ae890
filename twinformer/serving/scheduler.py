"""Which request sits in which batch row: the framework-free bookkeeping of continuous batching.

The engine thread (twinformer/serving/batching.py) owns a `Scheduler`; `submit` and `cancel` come
from the server's event loop thread, so the queue and the cancel set are guarded by one lock and
the rest (the rows) is touched by the engine thread alone.

A row's life: `admit` moves queued requests into free rows (first come, first served) at a step
boundary; each step every running row feeds one token; a row leaves (`release`) when it stops, hits
its max_new_tokens, or is cancelled, and is free for the next queued request at the next boundary.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

import numpy as np

from shared.decoding.generation import GenerationConfig
from twinformer.serving.protocol import DecodeRequest, TokenSink


@dataclass
class Running:
    """One request in a batch row: what it has produced and what it feeds next."""

    ticket: int
    request: DecodeRequest
    sink: TokenSink
    adapter_index: int  # 0: the base model, i: adapter i - 1 of the engine's list
    stop_ids: frozenset[int]
    sampling: GenerationConfig | None  # its temperature / top_p rule; None: greedy
    draws: np.ndarray | None  # (N,) its own uniforms (sampling), None for greedy
    next_token: int = 0  # fed at the next step
    produced: int = 0  # tokens generated so far (the stop token included)


class Scheduler:
    """A FIFO queue of submitted requests and `rows` batch rows (index = KV-cache row)."""

    def __init__(self, rows: int):
        self.rows: list[Running | None] = [None] * rows
        self._queue: collections.deque[tuple[int, DecodeRequest, TokenSink]] = collections.deque()
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._next_ticket = 0
        self.accepting = True

    # -- the event loop's side --------------------------------------------------------------------
    def enqueue(self, request: DecodeRequest, sink: TokenSink) -> int:
        with self._lock:
            if not self.accepting:
                raise RuntimeError("the server is shutting down: no new requests are accepted")
            ticket = self._next_ticket
            self._next_ticket += 1
            self._queue.append((ticket, request, sink))
            self._wake.notify()
            return ticket

    def cancel(self, ticket: int) -> None:
        with self._lock:
            self._cancelled.add(ticket)
            self._wake.notify()

    def stop_accepting(self, drop_queue: bool) -> list[tuple[int, DecodeRequest, TokenSink]]:
        """No more submits; with drop_queue, the queued requests are returned (to be finished as cancelled)."""
        with self._lock:
            self.accepting = False
            dropped = list(self._queue) if drop_queue else []
            if drop_queue:
                self._queue.clear()
            self._wake.notify()
            return dropped

    def load(self) -> dict[str, int]:
        with self._lock:
            queued = len(self._queue)
        return {"queued": queued, "running": sum(r is not None for r in self.rows), "slots": len(self.rows)}

    # -- the engine thread's side -----------------------------------------------------------------
    def wait_for_work(self, timeout: float = 0.5) -> None:
        """Block while nothing runs and nothing is queued (returns on a submit, cancel or shutdown)."""
        with self._lock:
            if not self._queue and not any(self.rows) and self.accepting:
                self._wake.wait(timeout)

    def take_cancelled(self) -> set[int]:
        """The tickets cancelled since the last call; queued ones among them are dropped from the queue."""
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
            return cancelled

    def drop_queued(self, tickets: set[int]) -> list[tuple[int, DecodeRequest, TokenSink]]:
        with self._lock:
            dropped = [item for item in self._queue if item[0] in tickets]
            self._queue = collections.deque(item for item in self._queue if item[0] not in tickets)
            return dropped

    def admit(self) -> list[tuple[int, tuple[int, DecodeRequest, TokenSink]]]:
        """(row, queued item) for as many queued requests as there are free rows, oldest first."""
        joined = []
        with self._lock:
            for row, occupant in enumerate(self.rows):
                if occupant is None and self._queue:
                    joined.append((row, self._queue.popleft()))
        return joined

    def running(self) -> list[tuple[int, Running]]:
        return [(row, r) for row, r in enumerate(self.rows) if r is not None]

    def idle(self) -> bool:
        """Nothing running, nothing queued."""
        with self._lock:
            return not self._queue and not any(self.rows)

    def release(self, row: int) -> None:
        self.rows[row] = None


__all__ = ["Running", "Scheduler"]
