"""The run's vocabulary: where a run runs, the states it and its jobs go through, how it
ended. The events carry these; the store writes them to disk; executors and the runtime
use them without importing the store.

`Record` is the base of every model quire keeps on disk (quire/ci/store/records.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from quire import pydantic_plugins

pydantic_plugins.disable()


def utcnow() -> datetime:
    """Now, in UTC (records never hold local times)."""
    return datetime.now(UTC)


class Record(BaseModel):
    # Schemas are built on first use: a run only pays for the records it writes.
    model_config = ConfigDict(extra="ignore", defer_build=True)


class ExecutorKind(StrEnum):
    """Where a run's commands run (the executor classes are in quire.ci.run.executors)."""

    host = "host"
    docker = "docker"


class RunState(StrEnum):
    pending = "pending"
    active = "active"
    complete = "complete"
    failed = "failed"
    cancelled = "cancelled"  # someone asked it to stop (`quire ci cancel`): not a failure


# The states a run ends in: it has a result, and nobody writes to it any more.
FINISHED = frozenset({RunState.complete, RunState.failed, RunState.cancelled})


class JobStatus(StrEnum):
    pending = "pending"
    running = "running"
    success = "success"
    failed = "failed"
    skipped = "skipped"
    unreadable = "unreadable"  # only ever read back: its state.yml is torn or corrupt


# Where a run keeps what its jobs keep with `rt.artifact`, inside the run's directory.
ARTIFACTS_DIR = "artifacts"


def format_size(size: int) -> str:
    """`1.5 MiB`-style sizes for messages and listings (powers of 1024)."""
    if size < 1024:
        return f"{size} B"
    value = size / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


class ArtifactFile(Record):
    """One file a job kept with `rt.artifact`: `artifacts/<job>/<name>/<path>` in the run's
    directory (`path` is "" when the artifact is a single file: `artifacts/<job>/<name>`)."""

    name: str
    path: str = ""
    size: int
    sha256: str

    @property
    def relative(self) -> str:
        """Where it lies under `artifacts/<job>/`."""
        return f"{self.name}/{self.path}" if self.path else self.name


class JobState(Record):
    job_id: str
    status: JobStatus
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    error: str | None = None
    skip_reason: str | None = None
    outputs: dict[str, Any] = Field(default_factory=dict)
    artifacts: list[ArtifactFile] = Field(default_factory=list)


class EndReason(StrEnum):
    jobs_failed = "jobs-failed"
    error = "error"
    interrupted = "interrupted"
    cancelled = "cancelled"
    orphaned = "orphaned"
    unreadable = "unreadable"


class RunResult(Record):
    """How a run ended; only finished runs (complete/, failed/, cancelled/) have one."""

    reason: EndReason | None = None
    error: str | None = None
    exit_code: int
    cancelled_by: str | None = None  # who asked (reason `cancelled`)
    cancelled_at: datetime | None = None


class CancelRequest(Record):
    """Someone asked for a run to stop: who, and when (the store keeps it by run id, so
    it can be asked before the run's record exists)."""

    by: str
    at: datetime
