"""What a queued run came to, read back from the run store (or, without a record,
from its child's exit status and last words).

`quire ci run` leaves no record when the pushed commit has no `.quire/ci.py`
(exit 0, "nothing to run") or when it fails before the run exists (invalid
pipeline, unknown revision, bad config: exit 2). A push is expected to run
CI, so the worker counts both as failed: reason `no-pipeline` or `error`,
with the child's message, in the queue row and the commit's note.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from quire.ci.store.records import (
    CancelRequest,
    EndReason,
    ExecutorKind,
    JobStatus,
    RecordUnreadable,
    RunMeta,
    RunResult,
    RunTimes,
    Trigger,
)
from quire.ci.store.runs import RunDir, RunState, RunStore
from quire.errors import ExitCode, QuireError, RunNotFound
from quire.service.queue import Entry
from quire.tools import git

COMPLETE, FAILED, CANCELLED = "complete", "failed", "cancelled"
# What `quire ci run` says when no job of the pipeline takes the run's source
# (quire.ci.run.orchestrator): the worker records that run as complete, reason no-jobs.
NO_JOBS_FOR_SOURCE = "nothing to run for the source"
MESSAGE_LIMIT = 2000


@dataclass(frozen=True)
class Outcome:
    """How a run ended, for the queue row and the note."""

    outcome: str  # complete | failed | cancelled
    reason: str | None = None
    message: str | None = None
    commit: str | None = None  # the commit the run was for (the note goes there)
    duration_s: float | None = None
    failed_jobs: list[str] = field(default_factory=list)
    recorded: bool = False  # a run record exists in the store
    cancelled_by: str | None = None  # who asked, when `outcome` is cancelled

    def describe(self) -> str:
        """One line for the worker's log."""
        text = self.outcome + (f" ({self.reason})" if self.reason else "")
        if self.failed_jobs:
            text += f": {', '.join(self.failed_jobs)}"
        elif self.message and self.outcome != COMPLETE:
            text += f": {self.message.splitlines()[0]}"
        if self.duration_s is not None:
            text += f" in {self.duration_s:.1f}s"
        return text


def store_of(entry: Entry) -> RunStore:
    """The run store the child `quire ci run` of `entry` writes to."""
    return RunStore(entry.repo)


def find_record(entry: Entry) -> RunDir | None:
    """The run record of `entry`'s run id, or None if it was never made."""
    try:
        return store_of(entry).find(entry.run_id)
    except (RunNotFound, OSError):
        return None


def from_record(run: RunDir, *, cancelled: bool) -> Outcome:
    """The outcome a finished (complete/ or failed/) run record tells."""
    try:
        meta = run.meta()
        result = run.result()
        times = run.times()
    except RecordUnreadable as exc:
        return Outcome(FAILED, "unreadable", str(exc), recorded=True)
    duration = (times.finished_at - times.started_at).total_seconds() if times.finished_at else None
    failed = [s.job_id for s in run.job_states() if s.status == JobStatus.failed]
    reason = result.reason.value if result and result.reason else None
    if run.state == RunState.complete:
        state = COMPLETE
    elif run.state == RunState.cancelled or (cancelled and reason == "interrupted"):
        state, reason = CANCELLED, "cancelled"
    else:
        state = FAILED
    message = result.error if result else None
    by = result.cancelled_by if result and state == CANCELLED else None
    return Outcome(
        state, reason, message, meta.sha, duration, failed, recorded=True, cancelled_by=by
    )


def record_cancelled(entry: Entry, request: CancelRequest) -> RunDir | None:
    """The run record of a push cancelled before its run existed (still queued, or
    stopped while its `quire ci run` was starting): in cancelled/, like any cancelled run,
    so `runs`, `show` and the web page show it. None if it cannot be written."""
    store = store_of(entry)
    commit = commit_of(entry) or entry.sha

    def meta(run_id: str) -> RunMeta:
        return RunMeta(
            run_id=run_id,
            repo=store.repo,
            git_dir=entry.git_dir,
            revision=entry.sha,
            sha=commit,
            ref=entry.ref,
            pushed_at=datetime.fromisoformat(entry.pushed_at.replace("Z", "+00:00")),
            executor=ExecutorKind(entry.executor or ExecutorKind.host.value),
            trigger=trigger_of(entry),
        )

    try:
        if store.find(entry.run_id).run_id == entry.run_id:
            return None  # its run exists: it records its own end
    except RunNotFound:
        pass
    try:
        run = store.create(meta, run_id=entry.run_id)
        run.write_times(RunTimes(started_at=request.at, finished_at=request.at))
        run.write_result(
            RunResult(
                reason=EndReason.cancelled,
                error=f"cancelled by {request.by} before it started",
                exit_code=ExitCode.interrupted,
                cancelled_by=request.by,
                cancelled_at=request.at,
            )
        )
        run.transition(RunState.cancelled)
    except (OSError, QuireError):
        return None
    store.forget_cancel(entry.run_id)
    return run


def without_record(
    entry: Entry, exit_code: int, output: str, *, cancelled: bool, duration_s: float | None
) -> Outcome:
    """The outcome of a child that ended before making a run record."""
    commit = commit_of(entry)
    message = last_words(output)
    if cancelled:
        return Outcome(CANCELLED, "cancelled", message, commit, duration_s)
    if exit_code == 0 and message and NO_JOBS_FOR_SOURCE in message:
        # A pipeline whose jobs all wait for the other source (nightly jobs only, and this
        # is a push): nothing was wrong, nothing ran.
        return Outcome(COMPLETE, "no-jobs", message, commit, duration_s)
    if exit_code == 0:
        return Outcome(FAILED, "no-pipeline", message, commit, duration_s)
    if exit_code < 0 or exit_code == 130:
        reason = "interrupted" if exit_code == 130 else f"killed by signal {-exit_code}"
        return Outcome(FAILED, reason, message, commit, duration_s)
    return Outcome(
        FAILED, "error", message or f"quire ci run exited {exit_code}", commit, duration_s
    )


def last_words(output: str) -> str | None:
    """The child's error message (from its first `error: ` line on), else its last lines."""
    start = output.find("error: ")
    text = output[start + len("error: ") :] if start >= 0 else "\n".join(output.splitlines()[-5:])
    text = text.strip()
    return text[:MESSAGE_LIMIT] or None


def read_output(path: Path) -> str:
    """The tail of a child's captured output (empty if it cannot be read)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 16 * 1024))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def trigger_of(entry: Entry) -> Trigger:
    """How the queued run `entry` was started (a push when its row says nothing)."""
    if not entry.trigger_json:
        return Trigger()
    try:
        return Trigger.model_validate_json(entry.trigger_json)
    except ValueError:
        return Trigger()


def commit_of(entry: Entry) -> str | None:
    try:
        return git.commit_of(Path(entry.git_dir), entry.sha)
    except QuireError:
        return None
