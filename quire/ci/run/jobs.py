"""Running a pipeline's jobs in order and turning each one's end into a JobState.

This is the one place where a job's exception becomes its status: `Skip`
-> skipped, any other exception -> failed with its message (redacted), a
failed or skipped job skips its transitive dependents. A dead container or
a lost docker daemon fails the job at hand and skips everything after it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from quire.ci.pipeline import PIPELINE_FILE, JobDef, Pipeline, Skip, pipeline_line
from quire.ci.run.executors.base import Executor
from quire.ci.run.redact import Redactor
from quire.ci.run.report import Reporter
from quire.ci.run.runtime import JobContext, Runtime
from quire.ci.store.logs import LogWriter
from quire.ci.store.records import JobState, JobStatus, utcnow, write_record
from quire.ci.store.runs import RunDir
from quire.config import Secrets
from quire.errors import ContainerDied, DockerUnavailable, Interrupted, JobError, QuireError


@dataclass
class JobsOutcome:
    """What running the jobs gave: every state, and an error that stopped them early."""

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
    run: RunDir
    run_log: LogWriter
    reporter: Reporter
    secrets: Secrets
    redactor: Redactor
    capture_limit: int
    push_outputs: Mapping[str, Any]

    def run_all(self) -> JobsOutcome:
        """Run every job in `pipeline.order`; interrupts propagate after the job is recorded."""
        outcome = JobsOutcome()
        outputs: dict[str, Mapping[str, Any]] = {"quire/push": self.push_outputs}
        for job_id in self.pipeline.order:
            defined = self.pipeline.jobs[job_id]
            reason = self._skip_reason(defined, outcome)
            if reason is not None:
                state = JobState(job_id=job_id, status=JobStatus.skipped, skip_reason=reason)
                self._record(state)
            else:
                state = self._run_one(defined, outputs, outcome)
                if state.status == JobStatus.success:
                    outputs[job_id] = state.outputs
            outcome.states[job_id] = state
        return outcome

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
        started = utcnow()
        t0 = time.monotonic()
        state = JobState(job_id=defined.id, status=JobStatus.running, started_at=started)
        self.run_log.event("job-start", job=defined.id)
        self.reporter.job_started(defined.id)
        write_record(self.run.job_dir(defined.id) / "state.yml", state)

        def finish(status: JobStatus, error: str | None) -> None:
            state.status = status
            state.finished_at = utcnow()
            state.duration_s = round(time.monotonic() - t0, 3)
            if status == JobStatus.skipped:
                state.skip_reason = error
            else:
                state.error = error
            self._record(state)

        with LogWriter(self.run.job_dir(defined.id) / "log.jsonl") as log:
            ctx = JobContext(
                job=defined,
                pipeline=self.pipeline,
                executor=self.executor,
                outputs=outputs,
                secrets=self.secrets,
                redactor=self.redactor,
                log=log,
                reporter=self.reporter,
                capture_limit=self.capture_limit,
                deadline=None if defined.timeout is None else t0 + defined.timeout,
            )
            try:
                result = defined.func(Runtime(ctx))
                state.outputs = self._checked_outputs(defined, result)
            except Skip as exc:
                finish(JobStatus.skipped, self.redactor.redact(str(exc)) or "skipped")
            except Interrupted as exc:  # SIGINT/SIGTERM/SIGHUP: record, then unwind the run
                finish(JobStatus.failed, str(exc))
                raise
            except (ContainerDied, DockerUnavailable) as exc:
                outcome.fatal = exc
                finish(JobStatus.failed, self.redactor.redact(str(exc)))
            except (Exception, SystemExit) as exc:  # sys.exit() in a job fails that job
                finish(JobStatus.failed, self.redactor.redact(describe_failure(exc)))
            except BaseException:  # KeyboardInterrupt outside `interrupts.raising()`
                finish(JobStatus.failed, "interrupted")
                raise
            else:
                finish(JobStatus.success, None)
        return state

    def _checked_outputs(self, defined: JobDef, result: object) -> dict[str, Any]:
        if result is None:
            return {}
        if not isinstance(result, Mapping):
            raise JobError(
                f"job {defined.id!r} returned {type(result).__name__}; return None or a dict"
            )
        try:
            # Round trip: outputs are stored and handed on as plain JSON data.
            data: dict[str, Any] = json.loads(json.dumps(dict(result)))
        except (TypeError, ValueError) as exc:
            raise JobError(f"job {defined.id!r} returned outputs that are not JSON: {exc}") from exc
        return data

    def _record(self, state: JobState) -> None:
        # Dependents get the raw outputs in memory; the record gets them masked.
        stored = state.model_copy(update={"outputs": self.redactor.redact_data(state.outputs)})
        write_record(self.run.job_dir(state.job_id) / "state.yml", stored)
        self.run_log.event("job-end", job=state.job_id, status=state.status.value)
        self.reporter.job_finished(state)


def describe_failure(exc: BaseException) -> str:
    """A job's exception as one line: quire's own errors as they are, others with ci.py's line."""
    if isinstance(exc, QuireError):
        return str(exc)
    line = pipeline_line(exc)
    where = f" ({PIPELINE_FILE}:{line})" if line else ""
    return f"{type(exc).__name__}: {exc}{where}"
