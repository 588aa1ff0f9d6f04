"""A job's own writes (`print()`, `sys.stdout`/`sys.stderr`, `logging`) as the job's output.

Job code runs inside quire's process, so without this its `print()` would
go straight to the terminal: unmasked, missing from the logs, and shown
under `--quiet`. While a job runs, `sys.stdout` and `sys.stderr` are text
streams that hand every write to the run's outlet as that job's output, and
`logging` handlers writing to the real stdout/stderr are pointed at them.
Unbuffered: a `print(..., end="")` shows at once, like a command's output.
Jobs running side by side (`--jobs N`) each get their own: the streams
route every write by the thread that makes it.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO, TextIO, cast

from quire.ci.events import StreamName
from quire.ci.run.outlet import RunOutlet


class _OutletBuffer(io.BufferedIOBase):
    """The bytes side of a job's stream: every write is one output chunk."""

    def __init__(self, outlet: RunOutlet, job: str, stream: StreamName) -> None:
        super().__init__()
        self._outlet = outlet
        self._job = job
        self._stream = stream

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = bytes(data)
        if chunk:
            self._outlet.output(self._job, self._stream, chunk)
        return len(chunk)


def job_stream(outlet: RunOutlet, job: str, stream: StreamName) -> TextIO:
    """A text stream (with `.buffer`) whose writes are `job`'s `stream` output."""
    # write_through, over a buffer that buffers nothing: each write reaches the
    # outlet at once, no newline needed.
    buffer = cast(BinaryIO, _OutletBuffer(outlet, job, stream))
    return io.TextIOWrapper(buffer, encoding="utf-8", errors="replace", write_through=True)


class _Routed(io.TextIOBase):
    """sys.stdout (or stderr) while jobs run: each write goes to the stream of the job
    running on the writing thread (jobs may run side by side), else to the real one."""

    def __init__(self, real: TextIO, name: StreamName) -> None:
        self._real = real
        self._name = name

    def _target(self) -> TextIO:
        streams: dict[StreamName, TextIO] | None = getattr(_current, "streams", None)
        return streams[self._name] if streams else self._real

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def writable(self) -> bool:
        return True

    @property
    def buffer(self) -> BinaryIO:
        return self._target().buffer

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


_current = threading.local()
_lock = threading.Lock()
_users = 0
_installed: tuple[TextIO, TextIO, _Restore] | None = None


@contextmanager
def captured_output(outlet: RunOutlet, job: str) -> Iterator[None]:
    """While inside, this thread's stdout/stderr writes (print, sys.stdout, logging to
    the console) are `job`'s output."""
    streams: dict[StreamName, TextIO] = {
        "stdout": job_stream(outlet, job, "stdout"),
        "stderr": job_stream(outlet, job, "stderr"),
    }
    previous = getattr(_current, "streams", None)
    _install()
    _current.streams = streams
    try:
        yield
    finally:
        _current.streams = previous
        _uninstall()


def _install() -> None:
    """Route sys.stdout/sys.stderr (and console logging) by thread, once for all jobs."""
    global _users, _installed
    with _lock:
        _users += 1
        if _installed is not None:
            return
        real_out, real_err = sys.stdout, sys.stderr
        out = cast(TextIO, _Routed(real_out, "stdout"))
        err = cast(TextIO, _Routed(real_err, "stderr"))
        targets: dict[int, TextIO] = {id(real_out): out, id(real_err): err}
        if sys.__stdout__ is not None:
            targets.setdefault(id(sys.__stdout__), out)
        if sys.__stderr__ is not None:
            targets.setdefault(id(sys.__stderr__), err)
        redirected = _redirect_logging(targets)
        _installed = (real_out, real_err, redirected)
        sys.stdout, sys.stderr = out, err


def _uninstall() -> None:
    global _users, _installed
    with _lock:
        _users -= 1
        if _users or _installed is None:
            return
        real_out, real_err, redirected = _installed
        _installed = None
        sys.stdout, sys.stderr = real_out, real_err
        for handler, stream in redirected:
            handler.setStream(stream)


_Restore = list[tuple["logging.StreamHandler[TextIO]", TextIO]]


def _redirect_logging(targets: dict[int, TextIO]) -> _Restore:
    """Point stream handlers that write to the real stdout/stderr at the job's streams;
    returns what to put back."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    changed = []
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, logging.StreamHandler) and id(handler.stream) in targets:
                old = handler.setStream(targets[id(handler.stream)])
                if old is not None:
                    changed.append((handler, old))
    return changed
