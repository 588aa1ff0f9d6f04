"""The worker's signals as readable events: one fd for its selector, no polling.

SIGTERM, SIGINT and SIGHUP ask the worker to stop (counted: a second one
means "now"); SIGCHLD means a child ended. Python's own signal wake-up fd
makes the worker's `select` return the moment any of them arrives.
"""

from __future__ import annotations

import signal
import socket
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class SignalWatch:
    """A context manager; `stops` counts stop signals, `fileno()` becomes readable on any."""

    def __init__(self) -> None:
        self.stops = 0
        self.last: str | None = None
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stops += 1
        self.last = signal.Signals(signum).name

    def _on_child(self, signum: int, frame: FrameType | None) -> None:
        pass  # the wake-up fd already told the selector

    def __enter__(self) -> SignalWatch:
        self._previous_fd = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_stop)
        self._previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._on_child)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        signal.set_wakeup_fd(self._previous_fd)
        self._read.close()
        self._write.close()

    def fileno(self) -> int:
        return self._read.fileno()

    def drain(self) -> None:
        """Empty the wake-up fd (the handlers have counted what matters)."""
        try:
            while self._read.recv(512):
                pass
        except (BlockingIOError, InterruptedError):
            return
