"""Running a pipeline's jobs in order and turning each one's end into a JobState.

This is the one place where a job's exception becomes its status: `Skip`
-> skipped, any other exception -> failed with its message, a
failed or skipped job skips its transitive dependents. A dead container or
a lost docker daemon fails the job at hand and skips everything after it.
Secrets in errors and outputs are masked by the outlet, not here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from quire import interrupts
from quire.ci.events import JobFinished, JobStarted
from quire.ci.pipeline import (
    PIPELINE_FILE,
    PUSH_SOURCE,
    SOURCES,
    JobDef,
    Pipeline,
    Skip,
    pipeline_line,
)
from quire.ci.run.artifacts import ArtifactKeeper
from quire.ci.run.executors.base import Executor
from quire.ci.run.jobhost import (
    TERM_GRACE_S,
    ArtifactRequest,
    BadMessage,
    JobEnd,
    JobHostFailed,
    JobHostLike,
    JobProcess,
    LogLine,
    Named,
    Out,
    ShRequest,
)
from quire.ci.run.outlet import RunOutlet
from quire.ci.run.runtime import JobContext, JobServer
from quire.ci.vocabulary import ArtifactFile, JobState, JobStatus, utcnow
from quire.config import Secrets
from quire.errors import (
    ContainerDied,
    DockerUnavailable,
    Interrupted,
    JobError,
    QuireError,
    StoreWriteFailed,
)

# How long an interrupted run waits for the jobs running beside it to notice.
ABORT_WAIT_S = 10.0


@dataclass
class JobsOutcome:
    """What running the jobs gave: every state, and an error that stopped them early.

    Filled in as the jobs end, so whoever handed it in still has the states
    of the jobs that ended when an interrupt unwinds the run.
    """

    states: dict[str, JobState] = field(default_factory=dict)
    fatal: QuireError | None = None

    @property
    def failed(self) -> bool:
        return self.fatal is not None or any(
            s.status == JobStatus.failed for s in self.states.values()
        )


@dataclass
class JobRunner:
    """Runs one pipeline's jobs, one at a time, with one executor."""

    pipeline: Pipeline
    executor: Executor
    outlet: RunOutlet
    secrets: Secrets
    capture_limit: int
    push_outputs: Mapping[str, Any]  # what `rt.jobs(source)` gives
    outputs_limit: int = 1024 * 1024
    run_env: Mapping[str, str] = field(default_factory=dict)
    jobs: int = 1  # how many jobs may run at the same time
    outcome: JobsOutcome = field(default_factory=JobsOutcome)
    host: JobHostLike | None = None  # where the jobs' Python runs (docs/architecture.md)
    term_grace: float = TERM_GRACE_S  # between SIGTERM and SIGKILL for a job's processes
    keeper: ArtifactKeeper | None = None  # where `rt.artifact` copies to (the run's directory)
    source: str = PUSH_SOURCE  # the source the run offers: quire/push, or quire/schedule
    _live: set[JobProcess] = field(default_factory=set)

    def run_all(self) -> JobsOutcome:
        """Run every job in `pipeline.order`, up to `jobs` at a time; interrupts propagate
        after the jobs running are recorded."""
        if self.jobs > 1:
            return self._run_side_by_side()
        outcome = self.outcome
        outputs: dict[str, Mapping[str, Any]] = {self.source: self.push_outputs}
        for job_id in self.pipeline.order:
            interrupts.check()  # no job starts after a signal, caught or not
            defined = self.pipeline.jobs[job_id]
            reason = self._skip_reason(defined, outcome)
            if reason is not None:
                state = JobState(job_id=job_id, status=JobStatus.skipped, skip_reason=reason)
                self._finish(state)
            else:
                state = self._run_one(defined, outputs, outcome)
                if state.status == JobStatus.success:
                    outputs[job_id] = state.outputs
        return outcome

    def _run_side_by_side(self) -> JobsOutcome:
        """Start each job as soon as its inputs succeeded (declaration order breaks ties),
        up to `jobs` at once on threads; the main thread only schedules and waits, so a
        signal reaches it at once. On an interrupt every running command is killed."""
        outcome = self.outcome
        outputs: dict[str, Mapping[str, Any]] = {self.source: self.push_outputs}
        pending = list(self.pipeline.order)
        running: dict[Future[JobState], str] = {}
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="quire-job")
        try:
            while pending or running:
                interrupts.check()
                self._start_ready(pool, pending, running, outputs)
                done, _ = wait(running, timeout=0.1, return_when=FIRST_COMPLETED)
                for future in done:
                    job_id = running.pop(future)
                    state = future.result()  # a job's Interrupted goes on from here
                    if state.status == JobStatus.success:
                        outputs[job_id] = state.outputs
        except BaseException:
            self.executor.abort()  # the running jobs' commands end now, and so do the jobs
            for job in list(self._live):  # ... and their Python, whatever it is doing
                with interrupts.shielded():
                    job.end(self.term_grace)
            wait(running, timeout=ABORT_WAIT_S)
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return outcome

    def _start_ready(
        self,
        pool: ThreadPoolExecutor,
        pending: list[str],
        running: dict[Future[JobState], str],
        outputs: dict[str, Mapping[str, Any]],
    ) -> None:
        for job_id in list(pending):
            if len(running) >= self.jobs:
                return
            defined = self.pipeline.jobs[job_id]
            reason = self._skip_reason(defined, self.outcome)
            if reason is not None:
                pending.remove(job_id)
                self._finish(JobState(job_id=job_id, status=JobStatus.skipped, skip_reason=reason))
            elif all(name in outputs or name in SOURCES for name in defined.inputs):
                pending.remove(job_id)
                future = pool.submit(self._run_one, defined, dict(outputs), self.outcome)
                running[future] = job_id

    def _skip_reason(self, defined: JobDef, outcome: JobsOutcome) -> str | None:
        if outcome.fatal is not None:
            return f"not run: {outcome.fatal}"
        for name in defined.inputs:
            upstream = outcome.states.get(name)
            if upstream is not None and upstream.status != JobStatus.success:
                return f"input {name!r} {upstream.status.value}"
        return None

    def _run_one(
        self, defined: JobDef, outputs: dict[str, Mapping[str, Any]], outcome: JobsOutcome
    ) -> JobState:
        started = self.outlet.emit(JobStarted(defined.id))
        t0 = time.monotonic()
        state = JobState(job_id=defined.id, status=JobStatus.running, started_at=started.at)
        kept: list[ArtifactFile] = []  # what rt.artifact kept: recorded however the job ends

        def finish(status: JobStatus, error: str | None) -> None:
            state.status = status
            state.artifacts = list(kept)
            state.duration_s = round(time.monotonic() - t0, 3)
            if status == JobStatus.skipped:
                state.skip_reason = error
            else:
                state.error = error
            self._finish(state)

        ctx = JobContext(
            job=defined,
            pipeline=self.pipeline,
            executor=self.executor,
            outputs=outputs,
            secrets=self.secrets,
            outlet=self.outlet,
            capture_limit=self.capture_limit,
            deadline=None if defined.timeout is None else t0 + defined.timeout,
            run_env=self.run_env,
            keeper=self.keeper,
            kept=kept,
        )
        try:
            try:
                end = self._converse(defined, JobServer(ctx), ctx.deadline)
            finally:
                self.executor.end_job()  # what the job started ends with it
            interrupts.check()  # the job caught the signal's exception: still interrupted
            self.outlet.check()  # ... or the error of a write that failed
            state.outputs = self._outcome_of(defined, end)
        except Skip as exc:
            _unless_interrupted(finish, exc)
            finish(JobStatus.skipped, str(exc) or "skipped")
        except Interrupted as exc:  # SIGINT/SIGTERM/SIGHUP: record, then unwind the run
            finish(JobStatus.failed, str(exc))
            raise
        except (ContainerDied, DockerUnavailable, StoreWriteFailed, JobHostFailed) as exc:
            outcome.fatal = exc
            finish(JobStatus.failed, str(exc))
        except Exception as exc:
            _unless_interrupted(finish, exc)
            if self.outlet.failure is not None:  # whatever the job made of it
                outcome.fatal = self.outlet.failure
            finish(JobStatus.failed, describe_failure(exc))
        except BaseException:  # KeyboardInterrupt outside `interrupts.raising()`
            finish(JobStatus.failed, "interrupted")
            raise
        else:
            finish(JobStatus.success, None)
        return state

    def _converse(self, defined: JobDef, server: JobServer, deadline: float | None) -> JobEnd:
        """Start the job in the job host and answer what it asks until it ends; its process
        tree is gone when this returns (or raises: an interrupt)."""
        if self.host is None:
            raise JobError(f"job {defined.id!r}: no job host to run it in")  # a bug of ours
        job = self.host.start_job(defined.id)
        self._live.add(job)
        try:
            for message in job.messages(deadline):
                if isinstance(message, ShRequest | Named | ArtifactRequest):
                    job.answer(server.handle(message))
                elif isinstance(message, Out):
                    server.output(message.stream, message.data)
                elif isinstance(message, LogLine):
                    server.log(message.message)
                elif message.kind == "timeout":
                    raise server.job_timed_out("in its own Python")
                else:
                    return message
            raise JobError(f"job {defined.id!r}: its process ended without a word")  # unreachable
        except BadMessage as exc:
            raise JobError(
                f"job {defined.id!r}: its Python sent quire a message it cannot use: {exc}"
            ) from exc
        finally:
            with interrupts.shielded():
                job.end(self.term_grace)
            self._live.discard(job)

    def _outcome_of(self, defined: JobDef, end: JobEnd) -> dict[str, Any]:
        """The job's outputs, or the exception its end means."""
        if end.kind == "skip":
            raise Skip(end.text or "skipped")
        if end.kind == "failed":
            raise JobError(end.text or f"job {defined.id!r} failed")
        if end.kind == "died":
            raise JobError(f"job {defined.id!r}: {describe_death(end.status)}")
        return self._checked_outputs(defined, end.outputs)

    def _checked_outputs(self, defined: JobDef, result: object) -> dict[str, Any]:
        if result is None:
            return {}
        if not isinstance(result, Mapping):
            raise JobError(
                f"job {defined.id!r} returned {type(result).__name__}; return None or a dict"
            )
        try:
            # Round trip: outputs are stored and handed on as plain JSON data.
            text = json.dumps(dict(result))
        except (TypeError, ValueError) as exc:
            raise JobError(f"job {defined.id!r} returned outputs that are not JSON: {exc}") from exc
        if len(text) > self.outputs_limit:
            raise JobError(
                f"job {defined.id!r} returned {len(text):,} bytes of outputs, more than the "
                f"{self.outputs_limit:,} allowed ([output] outputs_limit in the config file); "
                "keep outputs small and write large data to a file in the workspace"
            )
        data: dict[str, Any] = json.loads(text)
        return data

    def _finish(self, state: JobState) -> None:
        # Dependents get the raw outputs in memory; the outlet masks what it shows and stores.
        if state.status != JobStatus.skipped or state.started_at is not None:
            state.finished_at = utcnow()
        self.outcome.states[state.job_id] = state
        self.outlet.emit(JobFinished(state.model_copy()))


def _unless_interrupted(
    finish: Callable[[JobStatus, str | None], None], exc: BaseException
) -> None:
    """A signal arrived and the job turned it into something else: record the job as
    interrupted and go on unwinding the run."""
    received = interrupts.received()
    if received is not None:
        finish(JobStatus.failed, str(received))
        raise received from exc


def describe_death(status: int | None) -> str:
    """What happened to a job's Python that ended without saying how the job went."""
    if status is None:
        return "its Python process ended before the job did"
    if status < 0:
        import signal

        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"its Python process was killed by {name} before the job ended"
    return (
        f"its Python process exited with status {status} before the job ended "
        "(os._exit() or sys.exit() outside the job function?)"
    )


def describe_failure(exc: BaseException) -> str:
    """A job's exception as one line: quire's own errors as they are, others with ci.py's line."""
    if isinstance(exc, QuireError):
        return str(exc)
    line = pipeline_line(exc)
    where = f" ({PIPELINE_FILE}:{line})" if line else ""
    return f"{type(exc).__name__}: {exc}{where}"
