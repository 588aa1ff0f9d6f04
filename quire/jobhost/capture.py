"""A job's own writes (`print()`, `sys.stdout`/`sys.stderr`, `logging`) as `out` messages.

In the job process, `sys.stdout` and `sys.stderr` become unbuffered text
streams whose every write is one message to quire, on the same socket as
the job's requests, so its output stays in order with its commands'. Logging
handlers ci.py pointed at the real streams are pointed at these.

File descriptors 1 and 2 become pipes too, read by a thread each: what a
program the job's Python starts itself (`subprocess.run`) or a C extension
writes there is the job's output as well, masked and logged like the rest,
never written past quire to its terminal or log file.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from typing import BinaryIO, TextIO, cast

from quire.jobhost.protocol import ProtocolError, pack
from quire.jobhost.runtime import JobLink

# How long the job's end waits for what its fd 1 and 2 still hold: processes it started
# and left running may keep the pipes open; they end with the job anyway.
_DRAIN_S = 1.0


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


class FdCapture:
    """The job process's fds 1 and 2 as pipes whose bytes become `out` messages."""

    def __init__(self, link: JobLink) -> None:
        self._threads: list[threading.Thread] = []
        for fd, name in ((1, "stdout"), (2, "stderr")):
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            thread = threading.Thread(
                target=_forward, args=(read_end, link, name), name=f"job-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def finish(self) -> None:
        """Close our write ends and forward what is left (bounded: see `_DRAIN_S`)."""
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        for thread in self._threads:
            thread.join(_DRAIN_S)


def _forward(read_end: int, link: JobLink, stream: str) -> None:
    try:
        while chunk := os.read(read_end, 64 * 1024):
            link.tell({"t": "out", "stream": stream, "data": pack(chunk)})
    except (OSError, ProtocolError):
        pass  # quire is gone, or the job is over
    finally:
        os.close(read_end)
