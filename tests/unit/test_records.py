"""Records: every model survives a write/read round trip; writes are atomic; bad files are named."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import BaseModel

from quire.ci.events import ProcessesRunning, RunStarted
from quire.ci.store.recorder import RunRecords
from quire.ci.store.records import (
    ContainerInfo,
    EndReason,
    ExecutorKind,
    HostProcesses,
    JobState,
    JobStatus,
    RecordedProcess,
    RecordUnreadable,
    RunMeta,
    RunnerInfo,
    RunResult,
    RunTimes,
    read_record,
    write_record,
    write_text_atomically,
)


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    """An empty directory of its own (tmp_path also holds the docker guard)."""
    path = tmp_path / "records"
    path.mkdir()
    return path


T0 = datetime(2026, 5, 4, 16, 20, 1, 123456, tzinfo=UTC)

EXAMPLES: list[BaseModel] = [
    RunMeta(
        run_id="20260504-162001-123456-abcdef",
        repo="example",
        git_dir="/srv/git/example.git",
        revision="HEAD",
        sha="0123456789abcdef0123456789abcdef01234567",
        ref="refs/heads/main",
        pushed_at=T0,
        executor=ExecutorKind.docker,
    ),
    RunMeta(
        run_id="r",
        repo="example",
        git_dir="/srv/git/example.git",
        revision="v1",
        sha="0" * 40,
        ref=None,
        pushed_at=T0,
        executor=ExecutorKind.host,
    ),
    RunnerInfo(pid=4242, host="builder-1", pid_start=123456789),
    RunnerInfo(pid=1, host="h"),
    RunTimes(started_at=T0),
    RunTimes(started_at=T0, finished_at=T0 + timedelta(seconds=65, microseconds=1)),
    RunResult(exit_code=0),
    RunResult(reason=EndReason.jobs_failed, error="failed: lint, unit", exit_code=1),
    RunResult(reason=EndReason.interrupted, error="interrupted by SIGTERM", exit_code=130),
    ContainerInfo(image_tag="quire-ci/example:0193"),
    ContainerInfo(
        image_tag="quire-ci/example:0193",
        container_id="9f3b8a72c1d4",
        build_started_at=T0,
        build_finished_at=T0 + timedelta(seconds=13),
        container_started_at=T0 + timedelta(seconds=13),
        container_stopped_at=T0 + timedelta(seconds=68),
    ),
    JobState(job_id="lint", status=JobStatus.pending),
    JobState(
        job_id="unit-tests",
        status=JobStatus.failed,
        started_at=T0,
        finished_at=T0 + timedelta(seconds=2),
        duration_s=2.001,
        error="RuntimeError: tests failed (.quire/ci.py:12)\nsecond line: 'quoted'",
    ),
    JobState(job_id="deploy", status=JobStatus.skipped, skip_reason="input 'unit-tests' failed"),
    JobState(
        job_id="build",
        status=JobStatus.success,
        outputs={
            "summary": "3 passed",
            "count": 3,
            "ratio": 0.5,
            "flags": [True, False, None],
            "nested": {"yes": "no", "on": "off", "date": "2026-05-04", "num": "0123"},
            "unicode": "héllo ✓",
        },
    ),
]


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_record_round_trips_through_write_and_read(tmp_path: Path, record: BaseModel) -> None:
    path = tmp_path / "record.yml"
    write_record(path, record)
    assert read_record(path, type(record)) == record


def test_round_trip_keeps_datetimes_timezone_aware_utc(tmp_path: Path) -> None:
    path = tmp_path / "times.yml"
    write_record(path, RunTimes(started_at=T0))
    loaded = read_record(path, RunTimes)
    assert loaded.started_at == T0
    assert loaded.started_at.utcoffset() == timedelta(0)


def test_write_record_replaces_an_existing_record(directory: Path) -> None:
    path = directory / "state.yml"
    write_record(path, JobState(job_id="a", status=JobStatus.running))
    write_record(path, JobState(job_id="a", status=JobStatus.success))
    assert read_record(path, JobState).status == JobStatus.success
    assert [p.name for p in directory.iterdir()] == ["state.yml"]


def test_crash_before_replace_leaves_old_record_intact_and_no_temp_file(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = directory / "state.yml"
    old = JobState(job_id="a", status=JobStatus.running)
    write_record(path, old)
    before = path.read_bytes()

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash between write and replace")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        write_record(path, JobState(job_id="a", status=JobStatus.success))
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert read_record(path, JobState) == old
    assert [p.name for p in directory.iterdir()] == ["state.yml"]


def test_records_are_fsynced_before_they_replace_the_old_one_unless_not_durable(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    write_record(directory / "times.yml", RunTimes(started_at=T0))
    assert len(synced) == 1
    write_record(directory / "processes.yml", RunTimes(started_at=T0), durable=False)
    assert len(synced) == 1
    assert read_record(directory / "processes.yml", RunTimes).started_at == T0


def test_interrupt_during_write_leaves_no_temp_file(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = directory / "times.yml"

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_record(path, RunTimes(started_at=T0))
    monkeypatch.undo()
    assert list(directory.iterdir()) == []


def test_temp_file_is_written_in_the_same_directory(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        seen.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    path = directory / "meta.yml"
    write_text_atomically(path, "a: 1\n")
    assert len(seen) == 1
    assert Path(seen[0][0]).parent == directory
    assert Path(seen[0][0]).name != "meta.yml"
    assert seen[0][1] == str(path)


@pytest.mark.parametrize(
    "content",
    [
        "job_id: lint\nstatus: [runn",  # torn mid-write
        "job_id: lint\n",  # missing field
        "job_id: lint\nstatus: exploded\n",  # not a status
        "",  # empty file
        "just a string\n",  # not a mapping
    ],
    ids=["torn", "missing-field", "bad-enum", "empty", "scalar"],
)
def test_read_record_of_an_invalid_file_raises_record_unreadable_naming_it(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "state.yml"
    path.write_text(content)
    with pytest.raises(RecordUnreadable) as caught:
        read_record(path, JobState)
    assert str(path) in str(caught.value)


def test_read_record_of_invalid_utf8_raises_record_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "state.yml"
    path.write_bytes(b"job_id: \xff\xfe\nstatus: running\n")
    with pytest.raises(RecordUnreadable):
        read_record(path, JobState)


def test_read_record_of_a_missing_file_raises_record_unreadable(tmp_path: Path) -> None:
    with pytest.raises(RecordUnreadable) as caught:
        read_record(tmp_path / "absent.yml", RunTimes)
    assert "absent.yml" in str(caught.value)


def test_read_record_ignores_unknown_fields(tmp_path: Path) -> None:
    path = tmp_path / "runner.yml"
    path.write_text("pid: 7\nhost: h\nadded_later: true\n")
    assert read_record(path, RunnerInfo) == RunnerInfo(pid=7, host="h")


def test_the_processes_record_is_rewritten_without_an_fsync(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rewritten around every host command; gone with the machine anyway.
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    records = RunRecords(lambda: directory, warn=pytest.fail)
    records.handle(ProcessesRunning(processes=((4242, 123456),)))
    assert read_record(directory / "processes.yml", HostProcesses) == HostProcesses(
        processes=[RecordedProcess(pid=4242, start=123456)]
    )
    assert synced == []
    records.handle(RunStarted("r1", "repo", "HEAD", "0" * 40, ExecutorKind.host, at=T0))
    assert len(synced) == 1  # times.yml is durable
