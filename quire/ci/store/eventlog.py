"""A run's events in JSON Lines: written as they happen, read back as the same events.

    <run>/log.jsonl            run-start, job-start, job-end, image-build-start,
                               image-build-output, image-build-end, container-start,
                               container-stop, container-died, container-end,
                               notice, warning, run-end
    <run>/jobs/<id>/log.jsonl  sh-start, stdout, stderr, message, sh-exit
    <run>/jobs/<id>/output.txt the same stdout and stderr bytes alone, as they came (downloads)

`JsonLogs` is the outlet's subscriber that writes them (one flushed line per
event, so another process can follow a live run by tailing); `job_event`
turns a job log's line back into the event it came from. Lines of older
versions have the same names and fields (new fields were only added), so old
runs read back as they always did.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quire.ci.events import (
    CommandFinished,
    CommandStarted,
    ContainerDied,
    ContainerRemoved,
    ContainerStarted,
    ContainerStopping,
    Event,
    ImageBuildFinished,
    ImageBuildStarted,
    JobFinished,
    JobStarted,
    Level,
    Message,
    Notice,
    Output,
    RunFinished,
    RunStarted,
    StreamName,
)
from quire.ci.store.logs import PLAIN_OUTPUT, ChunkEncoder, LogWriter, PlainWriter, event_bytes
from quire.errors import StoreWriteFailed


class JsonLogs:
    """Writes a run's events to its log.jsonl files (a subscriber of the run's outlet)."""

    def __init__(self, run_path: Callable[[], Path]) -> None:
        # A callable: the run's directory moves between state directories.
        self._run_path = run_path
        self._run_log = LogWriter(run_path() / "log.jsonl")
        self._job_logs: dict[str, LogWriter] = {}
        self._plain: dict[str, PlainWriter] = {}  # each job's output bytes alone
        self._encoders: dict[tuple[str | None, StreamName], ChunkEncoder] = {}

    def handle(self, event: Event) -> None:
        if isinstance(event, Output):
            self._output(event)
        elif isinstance(event, CommandStarted | CommandFinished | Message):
            self._job_event(event)
        else:
            self._run_event(event)

    def _output(self, event: Output) -> None:
        key = (event.job, event.stream)
        encoder = self._encoders.get(key)
        if encoder is None:
            encoder = self._encoders[key] = ChunkEncoder()
        fields = encoder.feed(event.data)
        if fields:
            self._write_output(event.job, event.stream, fields)
        if event.job is not None:
            # The bytes as they came, in the order they came (not re-encoded from `fields`:
            # a character cut in two is whole here even if the other stream came between).
            self._job_log(event.job)
            self._plain[event.job].write(event.data)

    def _write_output(self, job: str | None, stream: StreamName, fields: dict[str, str]) -> None:
        if job is None:
            self._run_log.event("image-build-output", stream=stream, **fields)
        else:
            self._job_log(job).event(stream, **fields)

    def _job_event(self, event: CommandStarted | CommandFinished | Message) -> None:
        log = self._job_log(event.job)
        if isinstance(event, CommandStarted):
            log.event("sh-start", cmd=event.display, env=list(event.env_names))
        elif isinstance(event, Message):
            log.event("message", text=event.text)
        else:
            self._flush(event.job)
            extra = {"timed_out": True} if event.timed_out else {}
            log.event("sh-exit", exit=event.exit, duration_s=round(event.duration_s, 6), **extra)

    def _run_event(self, event: Event) -> None:
        name, fields = _run_line(event)
        if isinstance(event, JobStarted):
            self._job_log(event.job)
        elif isinstance(event, JobFinished):
            self._flush(event.job)
            log = self._job_logs.pop(event.job, None)
            if log is not None:
                log.close()
            plain = self._plain.pop(event.job, None)
            if plain is not None:
                plain.close()
        elif isinstance(event, ImageBuildFinished):
            self._flush(None)
        elif isinstance(event, RunFinished):
            self._flush_all()
        if name:
            self._run_log.event(name, **fields)

    def _job_log(self, job: str) -> LogWriter:
        log = self._job_logs.get(job)
        if log is None:
            directory = self._run_path() / "jobs" / job
            try:
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreWriteFailed.of(directory, exc) from exc
            log = self._job_logs[job] = LogWriter(directory / "log.jsonl")
            self._plain[job] = PlainWriter(directory / PLAIN_OUTPUT)
        return log

    def _flush(self, job: str | None) -> None:
        """Bytes of an incomplete character held at the end of a command or build."""
        for stream in ("stdout", "stderr"):
            encoder = self._encoders.pop((job, stream), None)
            fields = encoder.flush() if encoder else None
            if fields:
                self._write_output(job, stream, fields)

    def _flush_all(self) -> None:
        for job in {job for job, _ in self._encoders}:
            self._flush(job)

    def close(self) -> None:
        try:
            self._flush_all()
        finally:
            for log in self._job_logs.values():
                log.close()
            self._job_logs.clear()
            for plain in self._plain.values():
                plain.close()
            self._plain.clear()
            self._run_log.close()


def _run_line(event: Event) -> tuple[str | None, dict[str, Any]]:
    """The run log line of a run-level event (name None: it has none)."""
    match event:
        case RunStarted():
            return "run-start", {
                "run_id": event.run_id,
                "sha": event.sha,
                "executor": event.executor.value,
            }
        case RunFinished():
            return "run-end", {"exit_code": event.result.exit_code, "reason": event.result.reason}
        case JobStarted():
            return "job-start", {"job": event.job}
        case JobFinished():
            return "job-end", {"job": event.job, "status": event.state.status.value}
        case Notice():
            return ("warning" if event.level == Level.warning else "notice"), {"text": event.text}
        case ImageBuildStarted():
            return "image-build-start", {"image": event.image}
        case ImageBuildFinished():
            extra = {} if event.error is None else {"error": event.error}
            return "image-build-end", {"image": event.image, "ok": event.ok, **extra}
        case ContainerStarted():
            return "container-start", {"container": event.container, "image": event.image}
        case ContainerStopping():
            return "container-stop", {"container": event.container}
        case ContainerDied():
            return "container-died", {
                "container": event.container,
                "exit_code": event.exit_code,
                "oom_killed": event.oom_killed,
            }
        case ContainerRemoved():
            return "container-end", {"container": event.container}
    return None, {}


def job_event(job: str, line: dict[str, Any]) -> Event | None:
    """The event a job log line records (None for kinds a reader does not show)."""
    kind = line.get("event")
    if kind in ("stdout", "stderr"):
        stream: StreamName = "stdout" if kind == "stdout" else "stderr"
        return Output(job, stream, event_bytes(line), _time_of(line))
    at = _time_of(line)
    if kind == "sh-start":
        env = tuple(str(name) for name in line.get("env") or [])
        return CommandStarted(job, str(line.get("cmd", "")), env, at=at)
    if kind == "sh-exit":
        exit_code, duration = int(line.get("exit", 0)), float(line.get("duration_s", 0.0))
        return CommandFinished(job, exit_code, duration, bool(line.get("timed_out")), at=at)
    if kind == "message":
        return Message(job, str(line.get("text", "")), at=at)
    return None


def _time_of(line: dict[str, Any]) -> datetime:
    """The line's `t` (when it was written); the epoch for a line without one."""
    try:
        return datetime.fromisoformat(str(line["t"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return datetime.fromtimestamp(0, UTC)
