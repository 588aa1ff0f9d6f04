"""The typed events of one run: the vocabulary between whoever acts and whoever watches.

The orchestrator, the job runner, the runtime and the executors emit these
into the run's outlet (`quire.ci.run.outlet`); the outlet masks secrets in
them once and hands them to its subscribers: the JSON Lines logs, the
records, the terminal. `quire ci logs` reads the logs back into the same
events (`quire.ci.store.eventlog`), so a replayed run renders like a live
one.

Every event knows which of its fields are text that could hold a secret
(`redacted`); output bytes are masked by the outlet as a stream, since a
secret can be split across two chunks.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Self

from quire.ci.vocabulary import ExecutorKind, JobState, RunResult, RunState, utcnow

if TYPE_CHECKING:
    from quire.ci.run.redact import Redactor

StreamName = Literal["stdout", "stderr"]


class Level(StrEnum):
    info = "info"
    warning = "warning"


class _NoText:
    """An event with no text a secret could hide in: masking leaves it as it is."""

    __slots__ = ()

    def redacted(self, redactor: Redactor) -> Self:
        return self


@dataclass(frozen=True, slots=True)
class RunStarted:
    run_id: str
    repo: str
    revision: str
    sha: str
    executor: ExecutorKind
    at: datetime = field(default_factory=utcnow)

    def redacted(self, redactor: Redactor) -> RunStarted:
        return replace(self, revision=redactor.redact(self.revision))


@dataclass(frozen=True, slots=True)
class RunEnding:
    """How the run ended, for the records (times.yml, result.yml), before it is moved
    to complete/ or failed/; `RunFinished` follows once it has been."""

    result: RunResult
    at: datetime = field(default_factory=utcnow)

    def redacted(self, redactor: Redactor) -> RunEnding:
        error = None if self.result.error is None else redactor.redact(self.result.error)
        return replace(self, result=self.result.model_copy(update={"error": error}))


@dataclass(frozen=True, slots=True)
class RunFinished:
    """The run's outcome, once recorded: `state` and `location` are where its records
    are, `jobs` every job of the pipeline (ones that never started as skipped)."""

    run_id: str
    state: RunState
    result: RunResult
    jobs: tuple[JobState, ...]
    duration_s: float
    location: Path
    at: datetime = field(default_factory=utcnow)

    def redacted(self, redactor: Redactor) -> RunFinished:
        error = None if self.result.error is None else redactor.redact(self.result.error)
        return replace(
            self,
            result=self.result.model_copy(update={"error": error}),
            jobs=tuple(redacted_state(state, redactor) for state in self.jobs),
        )


@dataclass(frozen=True, slots=True)
class JobStarted(_NoText):
    job: str
    at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class JobFinished:
    """A job's final state: success, failed (error) or skipped (skip_reason)."""

    state: JobState
    at: datetime = field(default_factory=utcnow)

    @property
    def job(self) -> str:
        return self.state.job_id

    def redacted(self, redactor: Redactor) -> JobFinished:
        return replace(self, state=redacted_state(self.state, redactor))


@dataclass(frozen=True, slots=True)
class CommandStarted:
    """`rt.sh` starting `cmd` (a string for `sh -c`, or argv); env is given by name only."""

    job: str
    cmd: str | tuple[str, ...]
    env_names: tuple[str, ...] = ()
    at: datetime = field(default_factory=utcnow)

    @property
    def display(self) -> str:
        """The command as shown and logged."""
        return self.cmd if isinstance(self.cmd, str) else shlex.join(self.cmd)

    def redacted(self, redactor: Redactor) -> CommandStarted:
        # Each argv part is masked BEFORE quoting: quoting could split a secret
        # holding a quote character.
        if isinstance(self.cmd, str):
            return replace(self, cmd=redactor.redact(self.cmd))
        return replace(self, cmd=tuple(redactor.redact(part) for part in self.cmd))


@dataclass(frozen=True, slots=True)
class CommandFinished(_NoText):
    job: str
    exit: int
    duration_s: float
    timed_out: bool = False
    at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class Output:
    """A chunk of output as it arrived: a job's (its commands, its own print()s), or the
    image build's when `job` is None."""

    job: str | None
    stream: StreamName
    data: bytes
    # When it was written: set on output read back from a log (`t`), None while live; not
    # part of what the output is (equality).
    at: datetime | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Message:
    """A pipeline's own message (`rt.log`), shown as a line of the job's output."""

    job: str
    text: str
    at: datetime = field(default_factory=utcnow)

    def redacted(self, redactor: Redactor) -> Message:
        return replace(self, text=redactor.redact(self.text))


@dataclass(frozen=True, slots=True)
class Notice:
    """quire's own word about the run (reconcile, teardown trouble, an unwritable record)."""

    text: str
    level: Level = Level.info
    at: datetime = field(default_factory=utcnow)

    def redacted(self, redactor: Redactor) -> Notice:
        return replace(self, text=redactor.redact(self.text))


@dataclass(frozen=True, slots=True)
class ImageBuildStarted(_NoText):
    image: str
    dockerfile: str
    at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class ImageBuildFinished:
    image: str
    ok: bool
    error: str | None = None
    at: datetime = field(default_factory=utcnow)

    def redacted(self, redactor: Redactor) -> ImageBuildFinished:
        return replace(self, error=None if self.error is None else redactor.redact(self.error))


@dataclass(frozen=True, slots=True)
class ContainerStarted(_NoText):
    container: str
    image: str
    at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class ContainerStopping(_NoText):
    """Teardown begins: the moment recorded as `container_stopped_at`."""

    container: str
    at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class ContainerDied(_NoText):
    """The container stopped while the run still needed it (exit/OOM when docker knows)."""

    container: str
    exit_code: int | None
    oom_killed: bool | None
    at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class ContainerRemoved(_NoText):
    container: str
    at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class ProcessesRunning(_NoText):
    """The host processes a job has running now (pid, start time), for the records."""

    processes: tuple[tuple[int, int], ...]


# Every event but Output: the ones the outlet masks field by field.
TextEvent = (
    RunStarted
    | RunEnding
    | RunFinished
    | JobStarted
    | JobFinished
    | CommandStarted
    | CommandFinished
    | Message
    | Notice
    | ImageBuildStarted
    | ImageBuildFinished
    | ContainerStarted
    | ContainerStopping
    | ContainerDied
    | ContainerRemoved
    | ProcessesRunning
)
Event = TextEvent | Output


def redacted_state(state: JobState, redactor: Redactor) -> JobState:
    """`state` with secrets masked in its error, skip reason and outputs."""
    return state.model_copy(
        update={
            "error": None if state.error is None else redactor.redact(state.error),
            "skip_reason": None
            if state.skip_reason is None
            else redactor.redact(state.skip_reason),
            "outputs": redactor.redact_data(state.outputs),
        }
    )
