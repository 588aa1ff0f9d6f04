"""`quire ci logs --timestamps`: each line of a log read back with the time it was written.

A job's log stores output as chunks, each with its `t` (quire/ci/store/logs.py);
a line gets the time of the chunk it began in. Commands (`$ ...`), their
exits and the pipeline's own messages get their events' times. Headers
(`==> job`) stay as they were: a log read back has no time for them.
"""

from __future__ import annotations

from datetime import datetime

from quire.ci.events import (
    CommandFinished,
    CommandStarted,
    Event,
    JobFinished,
    Message,
    Output,
    RunFinished,
    StreamName,
)
from quire.cli.console import PlainReporter, TerminalReporter, line_for


def stamp(at: datetime | None) -> str:
    """As the logs write `t`: 2026-05-04T16:20:01.123Z (`-` for a time not known)."""
    if at is None:
        return "-"
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


class Timestamped:
    """Passes events on to `inner`, each line of output and each command line stamped."""

    def __init__(self, inner: PlainReporter | TerminalReporter) -> None:
        self.inner = inner
        # Per (job, stream): the unfinished line, and the time it began.
        self._partial: dict[tuple[str | None, StreamName], tuple[bytes, datetime | None]] = {}

    def handle(self, event: Event) -> None:
        if isinstance(event, Output):
            self._output(event)
            return
        job = getattr(event, "job", None)
        if isinstance(event, CommandStarted | CommandFinished | Message | JobFinished):
            self._flush(job)
        elif isinstance(event, RunFinished):
            self._flush(None)
        shown = line_for(event)
        if isinstance(event, CommandStarted | CommandFinished | Message) and shown is not None:
            line = f"{stamp(event.at)} {shown[0]}\n".encode()
            self.inner.handle(Output(event.job, "stdout", line))
            return
        self.inner.handle(event)

    def _output(self, event: Output) -> None:
        key = (event.job, event.stream)
        data, began = self._partial.pop(key, (b"", event.at))
        *lines, rest = (data + event.data).split(b"\n")
        stamped = []
        for line in lines:
            stamped.append(stamp(began).encode() + b" " + line + b"\n")
            began = event.at  # the next line begins in this chunk
        if rest:
            self._partial[key] = (rest, began)
        if stamped:
            self.inner.handle(Output(event.job, event.stream, b"".join(stamped), event.at))

    def _flush(self, job: str | None) -> None:
        for key in [key for key in self._partial if job is None or key[0] == job]:
            data, began = self._partial.pop(key)
            line = stamp(began).encode() + b" " + data + b"\n"
            self.inner.handle(Output(key[0], key[1], line))

    def close(self) -> None:
        self._flush(None)
        self.inner.close()
