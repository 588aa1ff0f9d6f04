"""A job's output as plain text (`output.txt`): as the run wrote it, else decoded and cached.

A finished job's download is the `PLAIN_OUTPUT` file the run wrote beside
the log as it went (quire.ci.store.eventlog), streamed as it is. Logs
without one (runs of older versions, runs copied from the run index, a job
whose store filled up) are decoded:

Decoding reads the log `BLOCK_BYTES` at a time and does per-line Python
work only on output lines (a line naming neither stream is skipped by one
substring test); a torn last line is left out, as everywhere else. Memory
stays flat: one block in, one block of output out.

Decoding costs about ten times reading: JSON strings are parsed and the
text encoded back to UTF-8. So the first download of a finished run's job
writes what it sends to `CACHE_NAME` beside the log (0600, like the log:
it holds everything the job printed); later downloads stream that file as
it is. The cache counts only while its mtime equals the log's (set when it
is written): a log that changed since is decoded afresh. A running job's
log is always decoded (it is still growing); so is every log when the job
directory is not writable.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Generator, Iterator
from functools import partial
from pathlib import Path
from typing import BinaryIO

import anyio
import orjson

from quire.ci.store.logs import PLAIN_OUTPUT, event_bytes

BLOCK_BYTES = 256 * 1024  # 1 MiB blocks cost ~3 MiB more of peak memory, for ~5% speed
CACHE_NAME = ".output.txt"
CACHED_BLOCK_BYTES = 1024 * 1024
SEND_BYTES = 256 * 1024
_STREAMS = (b'"stdout"', b'"stderr"')


def decoded(handle: BinaryIO) -> Iterator[bytes]:
    """Every output byte of the log open in `handle`, from its start, a block at a time."""
    handle.seek(0)
    rest = b""
    while True:
        block = handle.read(BLOCK_BYTES)
        if not block:
            return  # what is left in `rest` is a torn last line: never shown half
        data = rest + block if rest else block
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        if cut:
            chunk = _output_of(data, cut)
            if chunk:
                yield chunk


def _output_of(data: bytes, end: int) -> bytes:
    pieces: list[bytes] = []
    for line in data[:end].split(b"\n"):
        if _STREAMS[0] not in line and _STREAMS[1] not in line:
            continue  # sh-start, sh-exit, messages: no output in them
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("event") in ("stdout", "stderr"):
            pieces.append(event_bytes(event))
    return b"".join(pieces)


class PlainText:
    """The output of one job log, for one download: from the cache or decoded."""

    def __init__(self, log: Path, *, finished: bool) -> None:
        self.log = log
        self.cache = log.parent / CACHE_NAME
        self.finished = finished
        self._handle: BinaryIO = open(log, "rb")  # noqa: SIM115 - closed by the iterator
        self._cached: BinaryIO | None = None
        if finished:
            self._cached = self._open_plain(log.parent / PLAIN_OUTPUT) or self._open_cache()

    @property
    def size(self) -> int | None:
        """The byte count when it is known before sending (a cache hit)."""
        return os.fstat(self._cached.fileno()).st_size if self._cached else None

    @staticmethod
    def _open_plain(path: Path) -> BinaryIO | None:
        """The run's own plain output, when it is a regular file (never through a link)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return os.fdopen(fd, "rb")

    def _open_cache(self) -> BinaryIO | None:
        try:
            fd = os.open(self.cache, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        handle = os.fdopen(fd, "rb")
        log_mtime = os.fstat(self._handle.fileno()).st_mtime_ns
        cache = os.fstat(fd)
        if not stat.S_ISREG(cache.st_mode) or cache.st_mtime_ns != log_mtime:
            handle.close()
            return None
        return handle

    async def stream(self) -> AsyncIterator[bytes | memoryview]:
        """`blocks()` for the server: a worker thread reads (or decodes) each block, and a
        block is sent in slices a socket takes whole (asyncio copies what it cannot send
        at once, and moves the rest down for every send that follows)."""
        blocks = self.blocks()
        try:
            while True:
                block = await anyio.to_thread.run_sync(next, blocks, None)
                if block is None:
                    return
                view = memoryview(block)
                for start in range(0, len(view), SEND_BYTES):
                    yield view[start : start + SEND_BYTES]
        finally:
            await anyio.to_thread.run_sync(blocks.close)

    def blocks(self) -> Generator[bytes, None, None]:
        """The bytes, a block at a time; closes the files when done or dropped."""
        try:
            if self._cached is not None:
                yield from iter(partial(self._cached.read, CACHED_BLOCK_BYTES), b"")
            elif self.finished:
                yield from self._decode_into_cache()
            else:
                yield from decoded(self._handle)
        finally:
            self._handle.close()
            if self._cached is not None:
                self._cached.close()

    def _decode_into_cache(self) -> Iterator[bytes]:
        before = os.fstat(self._handle.fileno())
        try:
            fd, temp = tempfile.mkstemp(prefix=".output-", suffix=".tmp", dir=self.log.parent)
        except OSError:
            yield from decoded(self._handle)  # a read-only store: decode each time
            return
        sink: BinaryIO | None = os.fdopen(fd, "wb")
        try:
            for chunk in decoded(self._handle):
                if sink is not None:
                    try:
                        sink.write(chunk)
                    except OSError:  # a full disk: the download goes on, uncached
                        sink.close()
                        sink = None
                yield chunk
            after = os.fstat(self._handle.fileno())
            if sink is not None and _same(before, after):
                sink.close()
                with contextlib.suppress(OSError):  # the download went out whole regardless
                    os.utime(temp, ns=(after.st_atime_ns, after.st_mtime_ns))
                    os.replace(temp, self.cache)
                    temp = ""
        finally:
            if sink is not None:
                sink.close()
            if temp:
                with contextlib.suppress(OSError):
                    os.unlink(temp)


def _same(before: os.stat_result, after: os.stat_result) -> bool:
    return (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
