"""Reading past and running runs back: summaries, details, and their logs.

The shapes here are what `quire ci runs/show --json` print; they are
pydantic models so the JSON schema is explicit and stable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from quire.ci.events import Event, JobStarted, RunFinished
from quire.ci.store.deliveries import NOTIFICATIONS_FILE, RunNotifications
from quire.ci.store.eventlog import job_event
from quire.ci.store.logs import LogReader
from quire.ci.store.records import (
    ContainerInfo,
    EndReason,
    JobState,
    JobStatus,
    PlannedJob,
    RecordUnreadable,
    RunMeta,
    RunResult,
    RunTimes,
    Trigger,
    WorkerInfo,
    read_record,
)
from quire.ci.store.runs import FINISHED, RunDir, RunState, RunStore
from quire.errors import EnvironmentProblem


class RunnerGone(EnvironmentProblem):
    """A followed run's runner died without finishing it (killed with -9, a crash)."""


LOCAL_RUNNER_GONE = (
    "its quire process is gone; `quire ci reconcile` records it as failed (orphaned)"
)


class RunSummary(BaseModel):
    """One line of `quire ci runs`."""

    id: str
    state: RunState
    reason: str | None = None
    revision: str | None = None
    sha: str | None = None
    ref: str | None = None
    executor: str | None = None
    dirty: bool = False  # --dirty: the working tree on top of `sha`
    subject: str | None = None  # the first line of the commit's message
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    problem: str | None = None  # why some of its records could not be read
    cancelled_by: str | None = None  # state `cancelled`: who asked, and when
    cancelled_at: datetime | None = None
    pushed_at: datetime | None = None  # when it was pushed or asked for (a re-run, by hand)
    worker: str | None = None  # the worker's --name, for a run mirrored from the run index
    trigger: Trigger | None = None  # how it was started (None: its meta.yml is unreadable)

    def state_text(self) -> str:
        """The state as people read it: `failed (jobs-failed)`, `cancelled by alice`."""
        if self.state == RunState.cancelled:
            return f"cancelled by {self.cancelled_by}" if self.cancelled_by else "cancelled"
        return f"{self.state.value} ({self.reason})" if self.reason else self.state.value


class RunDetails(RunSummary):
    """`quire ci show`: the summary plus jobs, error and container."""

    repo: str
    path: str
    error: str | None = None
    exit_code: int | None = None
    jobs: list[JobState]
    container: ContainerInfo | None = None
    plan: list[PlannedJob] = []  # the jobs it is to run, with their inputs
    notifications: RunNotifications | None = None  # what was sent about it, each attempt


def summarize(run: RunDir) -> RunSummary:
    """What the records of `run` say; unreadable records become `problem`, not errors."""
    summary = RunSummary(id=run.run_id, state=run.state)
    problems = []
    try:
        meta = read_record(run.path / "meta.yml", RunMeta)
        summary.revision, summary.sha, summary.ref = meta.revision, meta.sha, meta.ref
        summary.executor = meta.executor.value
        summary.dirty = meta.dirty
        summary.pushed_at = meta.pushed_at
        summary.subject = meta.subject
        summary.trigger = meta.trigger
    except RecordUnreadable as exc:
        problems.append(str(exc))
    times_path = run.path / "times.yml"
    if times_path.exists():
        try:
            times = read_record(times_path, RunTimes)
            summary.started_at, summary.finished_at = times.started_at, times.finished_at
            if times.finished_at:
                summary.duration_s = round(
                    (times.finished_at - times.started_at).total_seconds(), 3
                )
        except RecordUnreadable as exc:
            problems.append(str(exc))
    worker_path = run.path / "worker.yml"
    if worker_path.exists():
        try:
            summary.worker = read_record(worker_path, WorkerInfo).name or None
        except RecordUnreadable as exc:
            problems.append(str(exc))
    result = _result(run)
    if result is not None and result.reason is not None:
        summary.reason = result.reason.value
    if result is not None:
        summary.cancelled_by, summary.cancelled_at = result.cancelled_by, result.cancelled_at
    summary.problem = "; ".join(problems) or None
    return summary


def _result(run: RunDir) -> RunResult | None:
    try:
        return run.result()
    except RecordUnreadable:
        return None


def details(run: RunDir) -> RunDetails:
    """Everything `quire ci show` prints about `run`."""
    summary = summarize(run)
    result = _result(run)
    container = None
    container_path = run.path / "container.yml"
    if container_path.exists():
        try:
            container = read_record(container_path, ContainerInfo)
        except RecordUnreadable:
            container = None
    notifications = None
    notifications_path = run.path / NOTIFICATIONS_FILE
    if notifications_path.exists():
        try:
            notifications = read_record(notifications_path, RunNotifications)
        except RecordUnreadable:
            notifications = None
    jobs = run.job_states()
    try:
        plan = read_record(run.path / "meta.yml", RunMeta).plan
    except RecordUnreadable:
        plan = []  # summarize() has said why
    unreadable = [
        f"job {job.job_id}: {job.error}" for job in jobs if job.status == JobStatus.unreadable
    ]
    if unreadable:
        summary.problem = "; ".join(filter(None, [summary.problem, *unreadable]))
    return RunDetails(
        **summary.model_dump(),
        repo=run.store.repo,
        path=str(run.path),
        error=result.error if result else None,
        exit_code=result.exit_code if result else None,
        jobs=jobs,
        container=container,
        plan=plan,
        notifications=notifications,
    )


def list_runs(store: RunStore, limit: int | None) -> list[RunSummary]:
    """The newest `limit` runs (all when None), newest first."""
    return [summarize(run) for run in list(store.runs())[:limit]]


# --- logs ---------------------------------------------------------------------------------------

EventSink = Callable[[Event], None]


def job_order(run: RunDir) -> list[str]:
    """The jobs of a run in the order they started, from its run log (then any others)."""
    order: list[str] = []
    log = run.path / "log.jsonl"
    if log.exists():
        for event in LogReader(log):
            job = event.get("job")
            if isinstance(job, str) and job not in order and event.get("event") == "job-start":
                order.append(job)
    jobs_dir = run.path / "jobs"
    if jobs_dir.is_dir():
        order += sorted(p.name for p in jobs_dir.iterdir() if p.name not in order)
    return order


class _Headed:
    """Passes a job's events on, each job's first one after a JobStarted header."""

    def __init__(self, sink: EventSink) -> None:
        self._sink = sink
        self._shown: str | None = None

    def __call__(self, job: str, line: dict[str, Any]) -> None:
        event = job_event(job, line)
        if event is None:
            return
        if job != self._shown:
            self._sink(JobStarted(job))
            self._shown = job
        self._sink(event)


def replay(run: RunDir, job: str | None, sink: EventSink) -> list[str]:
    """Hand every job event of `run` (or of one job) to `sink`; returns torn-log notes."""
    notes = []
    headed = _Headed(sink)
    for job_id in [job] if job else job_order(run):
        path = run.path / "jobs" / job_id / "log.jsonl"
        if not path.exists():
            continue
        reader = LogReader(path)
        for line in reader:
            headed(job_id, line)
        if reader.torn:
            notes.append(_torn_note(path))
    return notes


def _torn_note(path: Path) -> str:
    return f"{path}: the last line is incomplete (the run was cut off mid-write)"


def finished(run: RunDir) -> RunFinished:
    """A finished run's outcome, from its records, as the live run reported it."""
    result = _result(run) or RunResult(
        reason=EndReason.unreadable, error="result.yml is missing or unreadable", exit_code=1
    )
    summary = summarize(run)
    return RunFinished(
        run_id=run.run_id,
        state=run.state,
        result=result,
        jobs=tuple(run.job_states()),
        duration_s=summary.duration_s or 0.0,
        location=run.path,
    )


def follow(
    store: RunStore,
    run_id: str,
    job: str | None,
    sink: EventSink,
    *,
    poll_s: float = 0.1,
    liveness_s: float = 1.0,
    alive: Callable[[RunDir], bool] | None = None,
    gone: str = LOCAL_RUNNER_GONE,
) -> tuple[RunFinished, list[str]]:
    """Stream the job events of a run as they are written, until the run leaves active/;
    returns its outcome, and torn-log notes for logs whose last line was still
    incomplete at the end. Raises `RunnerGone` if the run's runner dies first.

    `alive(run)`: whether the run's runner still lives; by default its pid on this
    host (`owner_alive`). A run mirrored from another machine is judged by its lease.
    `gone`: what the `RunnerGone` message says happened, and what to do.
    """
    # Keyed by job id, not path: the run directory moves when the run ends.
    offsets: dict[str, int] = {}
    torn: dict[str, Path] = {}
    headed = _Headed(sink)

    def drain(run: RunDir) -> None:
        jobs_dir = run.path / "jobs"
        names = job_order(run) if jobs_dir.is_dir() else []
        for job_id in names:
            if job is not None and job_id != job:
                continue
            path = jobs_dir / job_id / "log.jsonl"
            if not path.exists():
                continue
            reader = LogReader(path)
            with open(path, "rb") as handle:
                handle.seek(offsets.get(job_id, 0))
                for line in reader.read_from(handle):
                    headed(job_id, line)
                offsets[job_id] = handle.tell()
            if reader.torn:
                torn[job_id] = path
            else:
                torn.pop(job_id, None)

    if alive is None:
        from quire.ci.store.reconcile import owner_alive

        alive = owner_alive
    next_check = time.monotonic() + liveness_s
    while True:
        run = store.find(run_id)
        done = run.state in FINISHED
        try:
            drain(run)
        except FileNotFoundError:
            # It moved (it ended, or a mirror placed it) between a look and a read: the
            # next look finds it where it went, the offsets kept. A run deleted meanwhile
            # is not found then (RunNotFound).
            time.sleep(poll_s)
            continue
        if done:
            return finished(run), [_torn_note(path) for path in torn.values()]
        if time.monotonic() >= next_check:
            # A runner killed with -9 never moves its run: stop waiting for it.
            if not alive(run) and store.find(run_id).state == run.state:
                drain(run)
                raise RunnerGone(f"run {run_id} has no runner any more ({gone})")
            next_check = time.monotonic() + liveness_s
        time.sleep(poll_s)
