"""The JSON Lines form of a run's events: written as they happen, read back as the same events."""

from __future__ import annotations

import errno
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from quire.ci.events import (
    CommandFinished,
    CommandStarted,
    ContainerStarted,
    JobFinished,
    JobStarted,
    Message,
    Notice,
    Output,
)
from quire.ci.store.eventlog import JsonLogs, job_event
from quire.ci.store.logs import LogReader
from quire.ci.store.records import JobState, JobStatus


def write(tmp_path: Path, *events: object) -> JsonLogs:
    logs = JsonLogs(lambda: tmp_path)
    for event in events:
        logs.handle(event)  # type: ignore[arg-type]
    logs.close()
    return logs


def test_a_jobs_events_read_back_as_the_events_written(tmp_path: Path) -> None:
    written = [
        CommandStarted("build", ("make", "all"), ("TOKEN",)),
        Output("build", "stdout", b"compiling\n"),
        Output("build", "stderr", b"\xff not utf-8\n"),
        CommandFinished("build", 2, 0.25, timed_out=True),
        Message("build", "a note"),
    ]
    write(tmp_path, JobStarted("build"), *written)
    lines = list(LogReader(tmp_path / "jobs" / "build" / "log.jsonl"))
    read = [job_event("build", line) for line in lines]
    assert read[0] == CommandStarted("build", "make all", ("TOKEN",), at=T(lines[0]))
    assert read[1:3] == written[1:3]
    assert read[3] == CommandFinished("build", 2, 0.25, True, at=T(lines[3]))
    assert read[4] == Message("build", "a note", at=T(lines[4]))


def test_an_incomplete_character_at_a_commands_end_is_kept_as_base64(tmp_path: Path) -> None:
    write(
        tmp_path,
        JobStarted("build"),
        Output("build", "stdout", "é".encode()[:1]),
        CommandFinished("build", 0, 0.1),
    )
    lines = list(LogReader(tmp_path / "jobs" / "build" / "log.jsonl"))
    assert lines[0] == {**lines[0], "event": "stdout", "encoding": "base64"}
    assert job_event("build", lines[0]) == Output("build", "stdout", b"\xc3")


def test_run_events_go_to_the_run_log_with_the_names_older_versions_used(tmp_path: Path) -> None:
    state = JobState(job_id="build", status=JobStatus.success)
    write(
        tmp_path,
        ContainerStarted("c0ffee", "quire-ci/proj:1"),
        JobStarted("build"),
        JobFinished(state),
        Notice("reconcile: something"),
        Output(None, "stdout", b"Step 1/2\n"),
    )
    names = [(line["event"], line.get("job")) for line in LogReader(tmp_path / "log.jsonl")]
    assert names == [
        ("container-start", None),
        ("job-start", "build"),
        ("job-end", "build"),
        ("notice", None),
        ("image-build-output", None),
    ]


def test_a_line_of_an_older_version_without_newer_fields_still_reads() -> None:
    when = "2026-05-04T16:20:01.123Z"
    started = {"t": when, "event": "sh-start", "cmd": "make"}
    assert job_event("build", started) == CommandStarted("build", "make", (), at=T(started))
    ended = {"t": when, "event": "sh-exit", "exit": 1, "duration_s": 0.5}
    assert job_event("build", ended) == CommandFinished("build", 1, 0.5, False, at=T(ended))
    assert job_event("build", {"t": when, "event": "something-new"}) is None


def T(line: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(line["t"].replace("Z", "+00:00"))


def test_each_jobs_output_bytes_are_kept_alone_beside_its_log(tmp_path: Path) -> None:
    write(
        tmp_path,
        JobStarted("build"),
        CommandStarted("build", ("make",), ()),
        Output("build", "stdout", b"one\n\x1b[32mgreen\x1b[0m\n"),
        Output("build", "stderr", b"\xff\xfe binary\n"),
        Message("build", "not output"),
        Output("build", "stdout", "caf\u00e9".encode()[:-1]),  # a character cut in two...
        Output("build", "stdout", "caf\u00e9".encode()[-1:] + b"\n"),  # ...and its end
        Output("build", "stdout", "\u00e9".encode()[:1]),  # held back, then flushed as is
        CommandFinished("build", 0, 0.1),
        JobFinished(JobState(job_id="build", status=JobStatus.success)),
    )
    plain = tmp_path / "jobs" / "build" / "output.txt"
    assert plain.read_bytes() == (b"one\n\x1b[32mgreen\x1b[0m\n\xff\xfe binary\ncaf\xc3\xa9\n\xc3")
    assert plain.stat().st_mode & 0o777 == 0o600


def test_a_plain_output_that_cannot_be_written_is_removed_and_the_log_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quire.ci.store import logs

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(logs.os, "write", full)
    write(
        tmp_path,
        JobStarted("build"),
        Output("build", "stdout", b"kept in the log\n"),
        Output("build", "stdout", b"and this\n"),
    )
    assert not (tmp_path / "jobs" / "build" / "output.txt").exists()
    lines = list(LogReader(tmp_path / "jobs" / "build" / "log.jsonl"))
    assert [line["data"] for line in lines] == ["kept in the log\n", "and this\n"]


def test_a_secret_is_masked_in_output_txt_as_in_the_log(tmp_path: Path) -> None:
    from quire.ci.run.outlet import RunOutlet
    from quire.ci.run.redact import MASK, Redactor

    logs = JsonLogs(lambda: tmp_path)
    redactor = Redactor()
    redactor.add("hunter2-secret")
    outlet = RunOutlet(redactor, [logs])
    outlet.emit(JobStarted("build"))
    outlet.output("build", "stdout", b"token: hunter2-")  # cut across two chunks
    outlet.output("build", "stdout", b"secret and more\n")
    outlet.close()  # closes the logs too
    plain = (tmp_path / "jobs" / "build" / "output.txt").read_bytes()
    assert plain == f"token: {MASK} and more\n".encode()
    assert b"hunter2" not in (tmp_path / "jobs" / "build" / "log.jsonl").read_bytes()
