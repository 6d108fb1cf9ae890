"""Stop a training run cleanly on Ctrl-C or SIGTERM: finish the step, save, then exit.

The first SIGINT or SIGTERM only records the request; the training loop checks it after every step
and stops as a `--max-minutes` budget stops it (shared/training_loop.py), saving a checkpoint that
`--resume` continues. A second signal means "now": it raises KeyboardInterrupt where the program
is (a checkpoint being written is never left half-done: saves are atomic, run_checkpoint.py).
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
    """Within the block, SIGINT/SIGTERM set the yielded StopRequest; a second one raises KeyboardInterrupt.

    Silent: the command that stops reports it, in one line, once the checkpoint is saved.
    Outside the main thread (where Python cannot install handlers) the request is never set.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum, frame) -> None:
        if request.requested:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
        request.signum = signum

    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, handle)
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


__all__ = ["STOP_SIGNALS", "StopRequest", "stop_on_signals"]
