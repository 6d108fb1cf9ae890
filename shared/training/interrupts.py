"""Stop a training run cleanly on Ctrl-C or SIGTERM: finish the step, save, then exit.

The first SIGINT or SIGTERM only records the request; the training loop checks it after every step
and stops as a `--max-minutes` budget stops it (shared/training/loop.py), saving a checkpoint that
`--resume` continues. A second signal means "now": it ends the process at once, by the signal's
default action (exit status 130 / 143 as the shell reports it), wherever the program is — also in
the middle of an XLA compile or a long torch / XLA kernel, where a Python-level handler would not
run until the C call returned (tens of seconds for a base-size model: why a KeyboardInterrupt
raised by the handler was not "at once"). A checkpoint being written is never left half-done: saves
go to a temporary sibling and are renamed at the end (run_checkpoint.py).
The previous handlers are restored on leaving, so a caller's own handling is untouched.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StopRequest:
    """Set by the first stop signal; `signum` says which (None: no request)."""

    signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_status(self) -> int:
        """128 + the signal number, as a shell reports a process the signal ended (130, 143)."""
        return 128 + int(self.signum) if self.signum is not None else 0


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Within the block, SIGINT/SIGTERM set the yielded StopRequest; a second one ends the process.

    Silent: the command that stops reports it, in one line, once the checkpoint is saved.
    Outside the main thread (where Python cannot install handlers) the request is never set.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum, frame) -> None:
        request.signum = signum
        # The next stop signal must act even while the main thread is inside C code (no Python
        # handler runs there): hand both back to the kernel's default action, which ends the process.
        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, signal.SIG_DFL)

    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, handle)
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


__all__ = ["STOP_SIGNALS", "StopRequest", "stop_on_signals"]
