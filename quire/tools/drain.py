"""Output of background processes that outlive their command (`server &`).

A command ends when its own process exits; a background child it started
may still hold its stdout and stderr. Those pipes are handed to a `Drainer`,
which keeps reading them on a thread of its own and passes what arrives on
to the command's output handler, so the job's log and terminal still get
it, and the child never blocks on a full pipe or dies of a closed one.
The job's end closes them (`close`), after its processes are ended.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import threading
import time
from collections.abc import Callable
from typing import IO, Literal

StreamName = Literal["stdout", "stderr"]
OutputHandler = Callable[[StreamName, bytes], None]
_CHUNK = 256 * 1024


class Drainer:
    """Reads adopted pipes until their writers close them or `close` is called."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._pipes: dict[int, tuple[IO[bytes], StreamName, OutputHandler, object]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def adopt(
        self, pipe: IO[bytes], name: StreamName, on_output: OutputHandler, *, owner: object
    ) -> None:
        """Keep reading `pipe` (a command's stdout or stderr) into `on_output`. `owner` (the
        command's process object) is kept too: collecting it would close the pipe."""
        with self._lock:
            os.set_blocking(pipe.fileno(), False)
            self._pipes[pipe.fileno()] = (pipe, name, on_output, owner)
            self._selector.register(pipe.fileno(), selectors.EVENT_READ)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="quire-drain", daemon=True)
                self._thread.start()

    @property
    def open(self) -> int:
        """How many pipes are still being read."""
        with self._lock:
            return len(self._pipes)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._read_ready(0.05)

    def _read_ready(self, wait: float) -> None:
        with self._lock:
            ready = self._selector.select(0) if self._pipes else []
        if not ready:
            time.sleep(wait)
            return
        for key, _ in ready:
            self._read(key.fd)

    def _read(self, fd: int) -> None:
        with self._lock:
            entry = self._pipes.get(fd)
        if entry is None:
            return
        _, name, on_output, _ = entry
        while True:
            try:
                data = os.read(fd, _CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._forget(fd)
                return
            on_output(name, data)

    def _forget(self, fd: int) -> None:
        with self._lock:
            entry = self._pipes.pop(fd, None)
            if entry is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(fd)
                entry[0].close()

    def close(self, *, wait_s: float = 0.5) -> None:
        """Read what is left (for up to `wait_s`, while writers remain), then close all."""
        self._stop.set()  # one reader at a time keeps the chunks in order
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        self._stop.clear()
        deadline = time.monotonic() + wait_s
        while self.open and time.monotonic() < deadline:
            self._read_ready(0.01)
        for fd in list(self._pipes):
            self._forget(fd)
