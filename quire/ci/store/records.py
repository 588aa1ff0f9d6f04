"""The records a run leaves on disk, and the one way they are written.

Every record is a pydantic model stored as YAML through `write_record`:
temp file in the same directory, flush + fsync, `os.replace`. A reader
therefore sees the old record or the new one, never half of either.
processes.yml alone skips the fsync: it is rewritten around every host
command, and a machine that went down took its processes with it.

    meta.yml       RunMeta        immutable, written at creation (with its Trigger)
    runner.yml     RunnerInfo     who runs it (pid, host), for reconcile
    times.yml      RunTimes       started_at, then finished_at
    result.yml     RunResult      why it ended (written when it ends)
    container.yml  ContainerInfo  docker runs, grown phase by phase
    processes.yml  HostProcesses  host runs: the processes a job has running
    jobs/<id>/state.yml  JobState
    worker.yml     WorkerInfo     mirrored runs only: the worker that ran it, and where
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError

from quire import pydantic_plugins
from quire.ci.vocabulary import (
    CancelRequest,
    EndReason,
    ExecutorKind,
    JobState,
    JobStatus,
    Record,
    RunResult,
    utcnow,
)

pydantic_plugins.disable()

__all__ = [
    "CancelRequest",
    "EndReason",
    "ExecutorKind",
    "JobState",
    "JobStatus",
    "Record",
    "RunResult",
    "utcnow",
]

try:  # libyaml when present: several times faster
    from yaml import CSafeDumper as _Dumper
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeDumper as _Dumper  # type: ignore[assignment]
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]


class Trigger(Record):
    """How a run was started: shown by runs/show and the web page."""

    kind: Literal["push", "schedule", "rerun", "manual"] = "push"
    by: str | None = None  # the user who asked (rerun, manual)
    rerun_of: str | None = None  # the original run's id (rerun)
    schedule: str | None = None  # the cron line (schedule)
    due_at: datetime | None = None  # the scheduled time it ran for (schedule)


class PlannedJob(Record):
    """One job a run is to run, and the jobs whose outputs it waits for."""

    job_id: str
    inputs: list[str] = Field(default_factory=list)


class RunMeta(Record):
    """What was run: fixed when the run is created."""

    run_id: str
    repo: str
    git_dir: str
    revision: str
    sha: str
    ref: str | None = None
    pushed_at: datetime
    executor: ExecutorKind
    # --dirty: the working tree as it was, on top of `sha` (its HEAD then).
    dirty: bool = False
    subject: str | None = None  # the first line of the commit's message
    # The jobs it is to run, in order, so a job not started yet can be shown waiting.
    plan: list[PlannedJob] = Field(default_factory=list)
    trigger: Trigger = Trigger()  # old records without it read as a push


class RunnerInfo(Record):
    """The process that owns an active run; reconcile checks it is still alive."""

    pid: int
    host: str
    # /proc start time of `pid` (clock ticks since boot): a reused pid differs.
    pid_start: int | None = None


class WorkerInfo(Record):
    """worker.yml, in a run mirrored from the run index on PostgreSQL (never in a run
    directory a run writes itself): which worker ran it, and its state directory there."""

    name: str  # empty: no worker ran it (cancelled before it started)
    state_dir: str


class RunTimes(Record):
    started_at: datetime
    finished_at: datetime | None = None


class ContainerInfo(Record):
    """container.yml: filled in as the container's life goes on."""

    image_tag: str
    container_id: str | None = None
    build_started_at: datetime | None = None
    build_finished_at: datetime | None = None
    container_started_at: datetime | None = None
    container_stopped_at: datetime | None = None


class RecordedProcess(Record):
    """A host process of a run: pid, and its /proc start time (a reused pid differs)."""

    pid: int
    start: int


class HostProcesses(Record):
    """processes.yml: the host processes a run's job has running, for reconcile to end
    should the runner die (host runs only)."""

    processes: list[RecordedProcess] = Field(default_factory=list)


class RecordUnreadable(Exception):
    """A record file is missing, torn or does not match its model."""


M = TypeVar("M", bound=BaseModel)


def dump_yaml(data: Any) -> str:
    """YAML text for plain data (keys in insertion order)."""
    text: str = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    return text


def write_record(path: Path, record: BaseModel, *, durable: bool = True) -> None:
    """Write `record` to `path` atomically: temp + flush + fsync + os.replace.

    `durable=False` skips the fsync, for a record that means nothing once the
    machine has gone down (which processes are running): still atomic.
    """
    write_text_atomically(path, dump_yaml(record.model_dump(mode="json")), durable=durable)


def write_text_atomically(path: Path, text: str, *, durable: bool = True) -> None:
    """Replace `path` with `text` so that readers see the old or new file whole
    (`durable`: on disk, not only in the page cache, before it replaces the old one)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: Path, model: type[M]) -> M:
    """Read a record; raises `RecordUnreadable` naming the file and the problem."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
        return model.model_validate(data)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValidationError) as exc:
        raise RecordUnreadable(f"{path}: {exc}") from exc
