"""The batching engine in a process of its own: decoding and HTTP no longer share one interpreter lock.

In one process the decode thread and the server's event loop take turns on Python's GIL: every
torch op hands it over, every streamed token takes it back, and the server uses about one core
however many the machine has. `ProcessEngine` runs the `BatchingEngine` (batching.py) in a child
process started with "spawn" and speaks to it over two pipes:

  parent -> child   ("submit", ticket, DecodeRequest) | ("cancel", ticket) | ("shutdown", drain)
  child -> parent   (ticket, "token", id) | (ticket, "finish", (reason, message))
                    | ("load", {...}) | ("ready", facts) | ("failed", message) | ("closed",)

A reader thread in the parent hands each child message to its request's sink (which forwards it to
the event loop, as before). The parent checks every request (limits.check_request) before sending
it, so a bad request is still refused synchronously with a ValueError; the child checks again. The
child ignores SIGINT/SIGTERM: the server decides when it stops (`shutdown`, which drains as the
in-process engine does). If the child dies, every open request finishes with "error" and new ones
are refused (RuntimeError: 503).

The tokens are the in-process engine's: the same BatchingEngine and slot decoders run in the child.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from pathlib import Path

from twinformer.serving.limits import check_request
from twinformer.serving.protocol import DecodeRequest, TokenSink

log = logging.getLogger("twinformer.serve")

LOAD_EVERY_S = 0.1  # how often the child reports its queue and batch occupancy (for /health, /metrics)


class ProcessEngine:
    """`Engine` (protocol.py): continuous batching in a child process; see the module docstring."""

    def __init__(self, framework: str, checkpoint: Path, adapters: dict[str, Path] | None = None, max_batch: int = 8):
        context = multiprocessing.get_context("spawn")  # no fork: the parent may hold threads and a device
        child_commands, self._commands = context.Pipe(duplex=False)  # (receiving end, sending end)
        self._events, child_events = context.Pipe(duplex=False)
        self._process = context.Process(target=child_main, name="twinformer-engine", daemon=True,
                                        args=(framework, str(checkpoint), {k: str(v) for k, v in (adapters or {}).items()},
                                              max_batch, child_commands, child_events))  # fmt: skip
        self._process.start()
        child_commands.close()
        child_events.close()
        first = self._receive_or_none()
        if first is None or first[0] != "ready":
            self._process.join(5)
            why = first[1] if first is not None else f"it exited with code {self._process.exitcode}"
            raise RuntimeError(f"the decoding process did not start: {why}")
        facts = first[1]
        self.config = facts["config"]
        self.adapters: tuple[str, ...] = tuple(facts["adapters"])
        self.max_context: int = facts["max_context"]
        self.decoder_only: bool = facts["decoder_only"]
        self._load = {"queued": 0, "running": 0, "slots": facts["slots"]}
        self._sinks: dict[int, TokenSink] = {}
        self._lock = threading.Lock()  # the sinks table, the ticket counter and the command pipe
        self._next_ticket = 0
        self._accepting = True
        self._alive = True
        self._reader = threading.Thread(target=self._read, name="twinformer-engine-reader", daemon=True)
        self._reader.start()

    # -- Engine -------------------------------------------------------------------------------------
    def submit(self, request: DecodeRequest, sink: TokenSink) -> int:
        check_request(request, self.config, self.decoder_only, self.adapters)
        with self._lock:
            if not self._accepting:
                raise RuntimeError("the server is shutting down: no new requests are accepted")
            if not self._alive:
                raise RuntimeError("the decoding process has exited: restart the server")
            ticket = self._next_ticket
            self._sinks[ticket] = sink  # before sending: the child's first token may come back at once
            if not self._send(("submit", ticket, request)):
                del self._sinks[ticket]
                raise RuntimeError("the decoding process has exited: restart the server")
            self._next_ticket += 1
            return ticket

    def cancel(self, ticket: int) -> None:
        with self._lock:
            if self._alive and ticket in self._sinks:
                self._send(("cancel", ticket))

    def load(self) -> dict[str, int]:
        return dict(self._load)

    def shutdown(self, drain: bool = True) -> None:
        with self._lock:
            first = self._accepting
            self._accepting = False
            if first and self._alive:
                self._send(("shutdown", drain))
        self._reader.join()
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    def _send(self, command) -> bool:
        """Send to the child (the lock held); False if it is gone (the reader then ends what was open)."""
        try:
            self._commands.send(command)
            return True
        except OSError:  # a broken pipe: the child has exited
            self._alive = False
            return False

    # -- the reader thread --------------------------------------------------------------------------
    def _receive_or_none(self):
        try:
            return self._events.recv()
        except (EOFError, OSError):
            return None

    def _read(self) -> None:
        while True:
            message = self._receive_or_none()
            if message is None:  # the child is gone without saying "closed": nothing more will come
                self._child_died()
                return
            head = message[0]
            if head == "closed":
                return
            if head == "load":
                self._load = message[1]
                continue
            ticket, kind, value = message
            if kind == "token":
                sink = self._sinks.get(ticket)
                if sink is not None:
                    _call(sink.token, value)
                continue
            with self._lock:
                sink = self._sinks.pop(ticket, None)
            if sink is not None:
                _call(sink.finish, *value)

    def _child_died(self) -> None:
        with self._lock:
            self._alive = False
            orphans, self._sinks = list(self._sinks.values()), {}
        if orphans:
            log.error("the decoding process exited (code %s) with %d requests open", self._process.exitcode, len(orphans))
        for sink in orphans:
            _call(sink.finish, "error", "the decoding process exited")


def _call(fn, *args) -> None:
    """A sink method; a sink that raises must not stop the reader (the HTTP layer's bug, logged)."""
    try:
        fn(*args)
    except Exception:
        log.exception("token sink raised")


# -- the child ------------------------------------------------------------------------------------------
class _ForwardingSink:
    """TokenSink in the child: each call becomes one message to the parent."""

    def __init__(self, ticket: int, send, tickets: dict[int, int]):
        self.ticket, self.send, self.tickets = ticket, send, tickets

    def token(self, token_id: int) -> None:
        self.send((self.ticket, "token", int(token_id)))

    def finish(self, reason: str, message: str | None = None) -> None:
        self.tickets.pop(self.ticket, None)  # nothing left to cancel
        self.send((self.ticket, "finish", (reason, message)))


def child_main(framework: str, checkpoint: str, adapters: dict[str, str], max_batch: int, commands, events) -> None:
    """The child process: a BatchingEngine fed from `commands`, reporting on `events`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent's server decides when to stop (shutdown)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from twinformer.threads import apply_threads

    apply_threads(None)  # the parent's count, inherited through OMP_NUM_THREADS / XLA_FLAGS
    lock = threading.Lock()  # the engine thread and this one both send

    def send(message) -> None:
        with lock:
            events.send(message)

    try:
        from twinformer.serving.batching import BatchingEngine

        engine = BatchingEngine(framework, Path(checkpoint), {k: Path(v) for k, v in adapters.items()}, max_batch)
    except BaseException as error:  # noqa: BLE001  reported to the parent, which raises it
        send(("failed", f"{type(error).__name__}: {error}"))
        return
    send(("ready", {"config": engine.decoder.config, "adapters": engine.adapters, "max_context": engine.max_context,
                    "decoder_only": engine.decoder_only, "slots": engine.load()["slots"]}))  # fmt: skip
    tickets: dict[int, int] = {}  # the parent's ticket -> the engine's
    last_load = None
    while True:
        if commands.poll(LOAD_EVERY_S):
            try:
                command = commands.recv()
            except EOFError:  # the parent is gone: stop at once
                engine.shutdown(drain=False)
                return
            if command[0] == "submit":
                _, ticket, request = command
                try:
                    tickets[ticket] = engine.submit(request, _ForwardingSink(ticket, send, tickets))
                except (ValueError, RuntimeError) as error:
                    send((ticket, "finish", ("error", str(error))))
            elif command[0] == "cancel":
                engine_ticket = tickets.pop(command[1], None)
                if engine_ticket is not None:
                    engine.cancel(engine_ticket)
            elif command[0] == "shutdown":
                engine.shutdown(drain=command[1])
                send(("closed",))
                return
        load = engine.load()
        if load != last_load:
            send(("load", load))
            last_load = load


__all__ = ["ProcessEngine"]
