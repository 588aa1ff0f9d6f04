"""JSON Lines logs: append-only, one event a line, flushed per event.

    <run>/log.jsonl             run-start, job-start, job-end, image-build-start|end,
                                container-start, container-died, container-end, run-end
    <run>/jobs/<id>/log.jsonl   sh-start, stdout, stderr, sh-exit

Each line has `t` (RFC 3339 UTC) and `event`. Output chunks carry `data`:
UTF-8 text, or base64 with `"encoding": "base64"` when the bytes are not
valid UTF-8. A multi-byte character split across two reads is held back
until it is whole, so it never turns into base64 or garbage.

Readers tolerate a torn last line (a crash mid-write) and say so.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from quire.errors import StoreWriteFailed


def timestamp() -> str:
    """Now as RFC 3339 UTC with milliseconds: 2026-05-04T16:20:01.123Z."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class LogWriter:
    """Appends events to one log.jsonl; each line is written at once, in one write.

    The file is the user's alone (0600): it holds everything the jobs printed.
    A failed write raises `StoreWriteFailed` naming the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreWriteFailed.of(path, exc) from exc
        # Unbuffered: one write per line, nothing held in Python to be retried
        # half-written after a failure.
        self._file: BinaryIO = os.fdopen(fd, "ab", buffering=0)

    def event(self, event: str, **fields: Any) -> None:
        """Append `{"t": ..., "event": event, **fields}`; raises `StoreWriteFailed`."""
        # orjson encodes newline-heavy output ~40x faster than json.dumps (which
        # made logging the bottleneck of a chatty command) and writes UTF-8 as is.
        line = orjson.dumps({"t": timestamp(), "event": event, **fields}) + b"\n"
        view = memoryview(line)
        try:
            while view:  # a filling disk may take part of a line before it refuses
                view = view[self._file.write(view) or 0 :]
        except OSError as exc:
            raise StoreWriteFailed.of(self.path, exc) from exc

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Beside each job's log.jsonl: the same output bytes as they came, nothing else (a
# download's fast path; the log stays the record).
PLAIN_OUTPUT = "output.txt"


class PlainWriter:
    """Appends a job's output bytes to its `PLAIN_OUTPUT` file as they are logged.

    Only an accelerator: a write that fails (a full disk) removes the file and
    stops writing it, so that readers fall back to decoding the log, which stays
    the record. Never raises.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError:
            self._give_up()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view and self._fd is not None:
                view = view[os.write(self._fd, view) :]
        except OSError:
            self._give_up()

    def _give_up(self) -> None:
        self.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)


class ChunkEncoder:
    """Turns a byte stream into log `data` fields, chunk by chunk.

    Valid UTF-8 becomes text; a chunk with invalid bytes is kept whole as
    base64. An incomplete character at the end of a chunk waits for the
    next one (or `flush`).
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")

    def feed(self, chunk: bytes) -> dict[str, str] | None:
        """The fields for this chunk, or None if everything is held back."""
        pending = self._decoder.getstate()[0]
        try:
            text = self._decoder.decode(chunk)
        except UnicodeDecodeError:
            self._decoder.reset()
            return _base64(pending + chunk)
        return {"data": text} if text else None

    def flush(self) -> dict[str, str] | None:
        """Fields for bytes still held back at the end of the stream."""
        pending = self._decoder.getstate()[0]
        self._decoder.reset()
        return _base64(pending) if pending else None


def _base64(data: bytes) -> dict[str, str]:
    return {"data": base64.b64encode(data).decode("ascii"), "encoding": "base64"}


def event_bytes(event: dict[str, Any]) -> bytes:
    """The raw bytes of an output event's `data`."""
    data = event.get("data", "")
    if event.get("encoding") == "base64":
        return base64.b64decode(data)
    return str(data).encode("utf-8")


class LogReader:
    """Iterates a log's events; lines that do not parse are counted, not fatal.

    After iteration `torn` says whether the last line was incomplete (a
    crash mid-write) and `bad_lines` how many other lines were unreadable.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.torn = False
        self.bad_lines = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with open(self.path, "rb") as handle:
            yield from self.read_from(handle)

    def read_from(self, handle: BinaryIO) -> Iterator[dict[str, Any]]:
        """Events from `handle`'s position on; stops at a torn line and leaves it unread."""
        while True:
            start = handle.tell()
            line = handle.readline()
            if not line:
                return
            if not line.endswith(b"\n"):
                self.torn = True
                handle.seek(start)
                return
            self.torn = False
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                self.bad_lines += 1
                continue
            if isinstance(event, dict):
                yield event
            else:
                self.bad_lines += 1
