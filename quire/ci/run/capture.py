"""A job's own writes (`print()`, `sys.stdout`/`sys.stderr`, `logging`) as the job's output.

Job code runs inside quire's process, so without this its `print()` would
go straight to the terminal: unmasked, missing from the logs, and shown
under `--quiet`. While a job runs, `sys.stdout` and `sys.stderr` are text
streams that hand every write to the run's outlet as that job's output, and
`logging` handlers writing to the real stdout/stderr are pointed at them.
Unbuffered: a `print(..., end="")` shows at once, like a command's output.
"""

from __future__ import annotations

import io
import logging
import sys
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


@contextmanager
def captured_output(outlet: RunOutlet, job: str) -> Iterator[None]:
    """While inside, the process's stdout/stderr writes are `job`'s output."""
    out, err = job_stream(outlet, job, "stdout"), job_stream(outlet, job, "stderr")
    real = {id(sys.stdout): out, id(sys.stderr): err}
    if sys.__stdout__ is not None:
        real.setdefault(id(sys.__stdout__), out)
    if sys.__stderr__ is not None:
        real.setdefault(id(sys.__stderr__), err)
    redirected = _redirect_logging(real)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
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
