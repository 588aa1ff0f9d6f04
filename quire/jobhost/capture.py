"""A job's own writes (`print()`, `sys.stdout`/`sys.stderr`, `logging`) as `out` messages.

In the job process, `sys.stdout` and `sys.stderr` become unbuffered text
streams whose every write is one message to quire, on the same socket as
the job's requests, so its output stays in order with its commands'. Logging
handlers ci.py pointed at the real streams are pointed at these.
"""

from __future__ import annotations

import io
import sys
from typing import BinaryIO, TextIO, cast

from quire.jobhost.protocol import pack
from quire.jobhost.runtime import JobLink


class _LinkBuffer(io.RawIOBase):
    """The bytes side of a job's stream: every write is one `out` message."""

    def __init__(self, link: JobLink, stream: str) -> None:
        super().__init__()
        self._link = link
        self._stream = stream

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = bytes(data)
        # A process forked from the job writes nowhere: it cannot speak for the job.
        if chunk and self._link.owned():
            self._link.tell({"t": "out", "stream": self._stream, "data": pack(chunk)})
        return len(chunk)


def _stream(link: JobLink, name: str) -> TextIO:
    raw = cast(BinaryIO, _LinkBuffer(link, name))
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", write_through=True)


def capture(link: JobLink) -> None:
    """From now on, this process's stdout/stderr writes are the job's output."""
    real = {id(sys.stdout): "stdout", id(sys.stderr): "stderr"}
    if sys.__stdout__ is not None:
        real.setdefault(id(sys.__stdout__), "stdout")
    if sys.__stderr__ is not None:
        real.setdefault(id(sys.__stderr__), "stderr")
    streams = {"stdout": _stream(link, "stdout"), "stderr": _stream(link, "stderr")}
    sys.stdout, sys.stderr = streams["stdout"], streams["stderr"]
    logging = sys.modules.get("logging")  # only if ci.py used it: never imported for nothing
    if logging is None:
        return
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, logging.StreamHandler) and id(handler.stream) in real:
                handler.setStream(streams[real[id(handler.stream)]])
