"""Following a running run for the browser: server-sent events from its logs and records.

One `RunFollower` per watching browser; `poll()` is called every `POLL_S`
(in a worker thread: it reads files) and returns the messages to send:

    jobs    {"state", "html", ...}      the jobs table (and the run's facts) changed
    output  {"job", "html", "offset"}   new output of a job, rendered; offset = where it ends
    end     {"state"}                   the run finished and every log has been sent

A job's output resumes at the byte offset the page last showed (offsets
fall on line boundaries), so a page renders the tail and the stream picks
up exactly there; a browser that reconnects says where it stopped. Log
files stay open while followed: the run's directory is renamed when it
ends, and an open file survives that. A follower that falls far behind
(a job printing faster than a browser can take) skips to the tail and
says how much it skipped: the full log is a page away.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from quire.ci.store.runs import FINISHED, RunDir
from quire.ci.store.views import RunDetails, details
from quire.web.logview import LogRenderer, read_after, read_before
from quire.web.lookup import NotFound, StoreView

POLL_S = 0.1
PING_S = 15.0
# Per job and poll: at most this much new log is rendered...
CHUNK_BYTES = 256 * 1024
# ...and a follower further behind than this jumps to the last TAIL_BYTES.
SKIP_BYTES = 4 * 1024 * 1024
TAIL_BYTES = 128 * 1024

Message = tuple[str, dict[str, Any]]


def sse(name: str, data: dict[str, Any]) -> bytes:
    """One server-sent event."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class _JobTail:
    """One job log being followed: its open file, where we are, and its terminal state."""

    def __init__(self, handle: BinaryIO, offset: int) -> None:
        self.handle = handle
        self.offset = offset
        self.renderer = LogRenderer()

    def read(self, job: str) -> list[Message]:
        size = os.fstat(self.handle.fileno()).st_size
        messages: list[Message] = []
        if size - self.offset > SKIP_BYTES:
            skipped_to = read_before(self.handle, size, TAIL_BYTES).start
            mib = (skipped_to - self.offset) / (1024 * 1024)
            note = f"[{mib:.1f} MiB of log not shown here: see the full log]"
            self.offset = skipped_to
            self.renderer = LogRenderer()
            html = f'\n<span class="note">{note}</span>\n'
            messages.append(("output", {"job": job, "html": html, "offset": self.offset}))
        if size > self.offset:
            window = read_after(self.handle, self.offset, CHUNK_BYTES)
            if window.end > self.offset:
                self.offset = window.end
                html = self.renderer.render(window.events)
                messages.append(("output", {"job": job, "html": html, "offset": self.offset}))
        return messages

    def behind(self) -> bool:
        """Whether complete lines are still waiting (a torn last line does not count)."""
        size = os.fstat(self.handle.fileno()).st_size
        if size <= self.offset:
            return False
        return read_after(self.handle, self.offset, CHUNK_BYTES).end > self.offset


class RunFollower:
    """Follows one run (or one of its jobs) from given log offsets."""

    def __init__(
        self,
        view: StoreView,
        run: RunDir,
        render_jobs: Callable[[RunDetails], dict[str, str]],
        *,
        offsets: dict[str, int] | None = None,
        job: str | None = None,
    ) -> None:
        self.view = view
        self.run = run
        self.render_jobs = render_jobs
        self.job = job
        self.finished = False
        self._offsets = dict(offsets or {})
        self._tails: dict[str, _JobTail] = {}
        self._signature: object = None
        self._jobs_html: dict[str, str] | None = None

    def poll(self) -> list[Message]:
        """What changed since the last poll; sets `finished` once the run ended and all
        of it has been sent."""
        try:
            self.run = self.view.refind(self.run)
        except NotFound:
            self.finished = True
            return [("end", {"state": "gone"})]
        # The state is read BEFORE the logs: a run writes everything before its
        # final rename, so seeing it finished here means the logs below are whole.
        ended = self.run.state in FINISHED
        try:
            messages = self._jobs_changed()
        except NotFound:
            self.finished = True
            return [("end", {"state": "gone"})]
        for job, tail in self._open_tails().items():
            messages += tail.read(job)
        if ended and not any(tail.behind() for tail in self._tails.values()):
            self.finished = True
            messages.append(("end", {"state": self.run.state.value}))
        return messages

    def _jobs_changed(self) -> list[Message]:
        signature = self._records_signature()
        if signature == self._signature:
            return []
        self._signature = signature
        # The records changed (a new job among them, perhaps): read them only while
        # none leads outside the state directory.
        html = self.render_jobs(details(self.view.check(self.run)))
        if not self.run.path.is_dir():
            # The run moved while its records were read: they read as missing, which
            # would flash an empty jobs table. The next poll reads them where they are.
            self._signature = None
            return []
        if html == self._jobs_html:
            return []
        self._jobs_html = html
        return [("jobs", {"state": self.run.state.value, **html})]

    def _records_signature(self) -> object:
        """Changes whenever anything the jobs table shows may have changed."""
        path = self.run.path
        stamps: list[object] = [self.run.state.value]
        for name in ("log.jsonl", "times.yml", "result.yml", "container.yml"):
            stamps.append(_stamp(path / name))
        for job in self._job_names():
            stamps.append((job, _stamp(path / "jobs" / job / "state.yml")))
        return tuple(stamps)

    def _job_names(self) -> list[str]:
        try:
            names = sorted(os.listdir(self.run.path / "jobs"))
        except OSError:
            return []
        return [n for n in names if not n.startswith(".") and (self.job in (None, n))]

    def _open_tails(self) -> dict[str, _JobTail]:
        for job in self._job_names():
            job_dir = self.run.path / "jobs" / job
            if job in self._tails or not self.view.job_confined(job_dir):
                continue
            try:
                handle = open(job_dir / "log.jsonl", "rb")  # noqa: SIM115
            except OSError:
                continue  # the job has not written its log yet
            self._tails[job] = _JobTail(handle, self._offsets.get(job, 0))
        return self._tails

    def close(self) -> None:
        """Close every log this follower holds open."""
        for tail in self._tails.values():
            tail.handle.close()
        self._tails.clear()


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def parse_offsets(text: str | None) -> dict[str, int]:
    """`{"job": offset, ...}` from a query parameter; raises ValueError if malformed."""
    if not text:
        return {}
    data = orjson.loads(text)
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in data.items()
    ):
        raise ValueError("offsets must be an object of job names to byte offsets")
    return {str(k): int(v) for k, v in data.items()}
