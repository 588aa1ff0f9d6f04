"""One `quire ci run`: resolve, load, record, materialize, execute, tear down, finish.

The run's life on disk:

    pending/<id>   created with meta.yml and runner.yml
    active/<id>    from the moment this process starts working on it
    complete/<id>  every job succeeded or was skipped
    failed/<id>    a job failed, the environment failed, or we were interrupted

Everything the run does leaves through one outlet (`RunOutlet`): the JSON
Lines logs and the records are its first subscribers, the caller's
reporter the last. Whatever happens inside, the run leaves active/ with
times.yml and result.yml written, its workspace removed (unless kept), and
its container gone: the finishing steps run shielded from further signals.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from quire import interrupts
from quire.ci.events import JobFinished, Notice, RunEnding, RunFinished, RunStarted
from quire.ci.pipeline import PIPELINE_FILE, PUSH_SOURCE, SCHEDULE_SOURCE, Pipeline
from quire.ci.run import workspace as workspaces
from quire.ci.run.artifacts import ArtifactKeeper, Budget
from quire.ci.run.executors.base import Executor, ExecutorFactory, ExecutorSetup
from quire.ci.run.jobhost import JobHost
from quire.ci.run.jobs import JobRunner, JobsOutcome
from quire.ci.run.loading import LoadedPipeline, load, note_uncommitted_changes
from quire.ci.run.outlet import RunOutlet, Subscriber
from quire.ci.run.redact import Redactor
from quire.ci.store.eventlog import JsonLogs
from quire.ci.store.liveness import process_start_ticks
from quire.ci.store.reconcile import begin_listing, reconcile
from quire.ci.store.recorder import RunRecords
from quire.ci.store.records import (
    EndReason,
    ExecutorKind,
    JobState,
    JobStatus,
    PlannedJob,
    RunMeta,
    RunnerInfo,
    RunResult,
    Trigger,
    utcnow,
)
from quire.ci.store.runs import LatestLinkFailed, RunDir, RunState, RunStore, store_of
from quire.config import Config, load_config
from quire.errors import (
    ExitCode,
    FetchFailed,
    Interrupted,
    PipelineError,
    QuireError,
    UsageError,
)
from quire.tools import git

if TYPE_CHECKING:
    from quire.tools.docker import ContainerListing


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for."""

    repo_path: Path
    revision: str = "HEAD"
    executor: ExecutorKind = ExecutorKind.host
    keep_workspace: bool = False
    # A pushed revision (the worker): the ref and push time to record instead of
    # the ones resolving `revision` gives.
    ref: str | None = None
    pushed_at: datetime | None = None
    run_id: str | None = None  # assigned ahead (by a queue); by default a new one
    jobs: tuple[str, ...] = ()  # only these jobs and what they need (all when empty)
    dirty: bool = False  # the working tree as it is, not the commit
    concurrency: int = 1  # jobs that may run side by side (`--jobs`)
    # A queued push on a worker: `revision` (the pushed object) is fetched from this URL into
    # this machine's mirror and read there; `repo_path` is only the pushed repository's path
    # on the git server, which names the run store (it may not exist here).
    url: str | None = None
    trigger: Trigger | None = None  # how it was started (the worker); None: a push

    @property
    def source(self) -> str:
        """The source this run offers its pipeline: `quire/schedule` for a scheduled run,
        else `quire/push` (a re-run or a run by hand acts like a push of its ref)."""
        scheduled = self.trigger is not None and self.trigger.kind == "schedule"
        return SCHEDULE_SOURCE if scheduled else PUSH_SOURCE


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended, for the CLI (and `quire ci run --json`)."""

    exit_code: int
    run_id: str | None = None
    state: RunState | None = None
    location: Path | None = None
    error: str | None = None  # why the run ended early (not a job's own failure), masked
    jobs: tuple[JobState, ...] = ()
    workspace: Path | None = None  # kept with --keep-workspace
    duration_s: float | None = None
    # No job takes the run's source: said even under --quiet (the worker reads it).
    nothing_to_run: str | None = None

    def to_json(self) -> str:
        """One JSON object: run id, state, exit code, error, and each job's status and time."""
        import json

        return json.dumps(
            {
                "run_id": self.run_id,
                "state": None if self.state is None else self.state.value,
                "exit_code": self.exit_code,
                "error": self.error,
                "duration_s": self.duration_s,
                "location": None if self.location is None else str(self.location),
                "workspace": None if self.workspace is None else str(self.workspace),
                "jobs": [
                    {
                        "id": job.job_id,
                        "status": job.status.value,
                        "duration_s": job.duration_s,
                        "error": job.error or job.skip_reason,
                    }
                    for job in self.jobs
                ],
            },
            indent=2,
        )


def make_executor(setup: ExecutorSetup) -> Executor:
    """The executor `setup.kind` names (docker's module is only imported for docker runs)."""
    if setup.kind == ExecutorKind.host:
        from quire.ci.run.executors.host import HostExecutor

        return HostExecutor(setup)
    from quire.ci.run.executors.docker import DockerExecutor

    return DockerExecutor(setup)


def run(
    request: RunRequest,
    reporter: Subscriber,
    *,
    executors: ExecutorFactory = make_executor,
    host: JobHost | None = None,
) -> RunOutcome:
    """Run HEAD's (or the requested revision's) pipeline; returns the exit code to use.

    `reporter` watches the run (it gets every event, masked). Raises
    `QuireError` for problems found before a run record exists (bad
    repository, revision, pipeline or config); everything after that ends
    up in the run's records and the returned exit code. A bug of quire's is
    re-raised once the run is recorded.
    """
    # A docker run's containers are listed (reconcile, below) while the pipeline loads.
    listing = begin_listing() if request.executor == ExecutorKind.docker else None
    try:
        return _run(request, reporter, executors, listing, host)
    finally:
        if listing is not None:
            listing.cancel()


def _run(
    request: RunRequest,
    reporter: Subscriber,
    executors: ExecutorFactory,
    listing: ContainerListing | None,
    started: JobHost | None,
) -> RunOutcome:
    # `started` by the caller earlier, else first: its interpreter starts while we read
    # the commit.
    host = started or JobHost.start(sandboxed=_sandboxed(request))
    try:
        source = _source(request)
        try:
            loaded = load(source, request.revision, dirty=request.dirty, host=host)
        except PipelineError as exc:
            if request.run_id is not None:  # a queued push: its run must be findable, failed
                repo = source if isinstance(source, git.Repository) else None
                _record_failed_start(request, exc, repo)
            raise
        return _run_loaded(request, reporter, executors, listing, loaded)
    finally:
        with interrupts.shielded():
            host.close()


def _sandboxed(request: RunRequest) -> bool:
    """A docker run's pipeline runs sandboxed unless the config says `[docker] sandbox =
    false`; a host run's commands run on the host by design (docs/security.md)."""
    return request.executor == ExecutorKind.docker and load_config().docker.sandbox


def _run_loaded(
    request: RunRequest,
    reporter: Subscriber,
    executors: ExecutorFactory,
    listing: ContainerListing | None,
    loaded: LoadedPipeline,
) -> RunOutcome:
    if not request.dirty:
        note_uncommitted_changes(loaded, request.revision, reporter)
    if loaded.pipeline is None:
        if request.jobs:  # jobs were asked for by name, and nothing can hold them
            raise UsageError(
                f"no job {request.jobs[0]!r}: there is no {PIPELINE_FILE} at "
                f"{request.revision} ({loaded.revision.sha[:12]})"
            )
        reporter.handle(
            Notice(
                f"no {PIPELINE_FILE} at {request.revision} ({loaded.revision.sha[:12]}): "
                "nothing to run"
            )
        )
        return RunOutcome(exit_code=ExitCode.ok)
    pipeline = loaded.pipeline.subset(request.jobs) if request.jobs else loaded.pipeline
    # Only the jobs the run's source reaches: a push never runs the nightly jobs. Jobs named
    # by hand (`quire ci run nightly`) run whatever their source.
    if not request.jobs:
        pipeline = pipeline.for_source(request.source)
    if not pipeline.jobs:
        said = (
            f"nothing to run for the source {request.source}: no job of {PIPELINE_FILE} "
            f"at {request.revision} ({loaded.revision.sha[:12]}) takes it"
        )
        reporter.handle(Notice(said))
        return RunOutcome(exit_code=ExitCode.ok, nothing_to_run=said)
    config = load_config()
    store = store_of(loaded.repo)
    # From here on a signal must unwind (not kill) us: a run may exist to record.
    interrupts.clear()
    with interrupts.raising():
        _reconcile_first(store, listing, reporter)
        run_dir, meta = _create_run(store, loaded, pipeline, request)
        return _Run(run_dir, meta, loaded, pipeline, request, config, executors).execute(reporter)


def _source(request: RunRequest) -> Path | git.Repository:
    """Where the run reads its commit: the repository at `repo_path`, or for a queued push
    with a URL this machine's mirror, the pushed object fetched into it first. A fetch
    that fails is recorded as the run's failure and raised (`FetchFailed`)."""
    if request.url is None:
        return request.repo_path
    from quire.ci.run import mirror
    from quire.paths import repo_id

    named = git.mirrored(Path(), str(request.repo_path))
    try:
        path = mirror.fetch(
            repo_id(named.name_dir.name, named.home), request.url, request.revision, request.ref
        )
    except FetchFailed as exc:
        if request.run_id is not None:
            revision = git.Revision(sha=request.revision, ref=request.ref)
            _record_failed_start(request, exc, named, revision)
        raise
    return git.mirrored(path, str(request.repo_path))


def _record_failed_start(
    request: RunRequest,
    problem: QuireError,
    repo: git.Repository | None = None,
    revision: git.Revision | None = None,
) -> None:
    """A queued run that failed before it could start (its ci.py is invalid, its commit
    cannot be fetched), recorded like any other: failed, with the message and exit code."""
    repo = repo or git.open_repository(request.repo_path)
    revision = revision or git.resolve(repo.git_dir, request.revision)
    loaded = LoadedPipeline(repo, revision, None)
    run_dir, meta = _create_run(store_of(repo), loaded, None, request)
    run_dir.transition(RunState.active)
    try:
        redactor = Redactor(load_config().secrets_for(run_dir.store.repo).values.values())
    except QuireError:
        redactor = Redactor()
    outlet = outlet_for(run_dir, redactor, [])
    try:
        outlet.emit(
            RunStarted(
                run_dir.run_id, run_dir.store.repo, request.revision, meta.sha, request.executor
            )
        )
        result = _ended(EndReason.error, str(problem), problem.exit_code)
        outlet.emit(RunEnding(result))
        run_dir.transition(RunState.failed)
        outlet.emit(RunFinished(run_dir.run_id, run_dir.state, result, (), 0.0, run_dir.path))
    finally:
        outlet.close()


def _reconcile_first(
    store: RunStore, listing: ContainerListing | None, reporter: Subscriber
) -> None:
    """The cheap part of `quire ci reconcile`, before every run: this repository's
    orphaned runs, and (for docker runs, `listing`) containers that no live run owns."""
    try:
        actions = reconcile(
            [store], containers=listing is not None, in_flight_only=True, listing=listing
        )
    except QuireError:
        return  # docker trouble is reported, precisely, by the run itself
    for action in actions:
        reporter.handle(Notice(f"reconcile: {action}"))


def _create_run(
    store: RunStore, loaded: LoadedPipeline, pipeline: Pipeline | None, request: RunRequest
) -> tuple[RunDir, RunMeta]:
    made: list[RunMeta] = []
    subject = git.subject(loaded.repo.git_dir, loaded.revision.sha)
    plan = []
    if pipeline is not None:
        plan = [
            PlannedJob(job_id=job_id, inputs=list(pipeline.jobs[job_id].inputs))
            for job_id in pipeline.order
        ]

    def meta(run_id: str) -> RunMeta:
        made.append(
            RunMeta(
                run_id=run_id,
                repo=store.repo,
                git_dir=str(loaded.repo.home),
                revision=request.revision,
                sha=loaded.revision.sha,
                ref=request.ref or loaded.revision.ref,
                pushed_at=request.pushed_at or utcnow(),
                executor=request.executor,
                dirty=request.dirty,
                subject=subject,
                plan=plan,
                trigger=request.trigger or Trigger(),
            )
        )
        return made[-1]

    runner = RunnerInfo(
        pid=os.getpid(), host=socket.gethostname(), pid_start=process_start_ticks(os.getpid())
    )
    run_dir = store.create(meta, runner, run_id=request.run_id)
    return run_dir, made[-1]


def source_outputs(meta: RunMeta) -> dict[str, str | None]:
    """What `rt.jobs(source)` gives for the run's source: `push_outputs`, and for a
    scheduled run the cron line and the time it was due as well."""
    given = push_outputs(meta)
    trigger = meta.trigger
    if trigger.kind == "schedule":
        due = trigger.due_at
        given["cron"] = trigger.schedule
        given["due_at"] = None if due is None else due.isoformat().replace("+00:00", "Z")
    return given


def push_outputs(meta: RunMeta) -> dict[str, str | None]:
    """What `rt.jobs("quire/push")` gives."""
    ref = meta.ref
    return {
        "sha": meta.sha,
        "ref": ref,
        "branch": ref.removeprefix("refs/heads/")
        if ref and ref.startswith("refs/heads/")
        else None,
        "tag": ref.removeprefix("refs/tags/") if ref and ref.startswith("refs/tags/") else None,
        "pushed_at": meta.pushed_at.isoformat().replace("+00:00", "Z"),
        "git_dir": meta.git_dir,
    }


def outlet_for(run_dir: RunDir, redactor: Redactor, watchers: Sequence[Subscriber]) -> RunOutlet:
    """The outlet of `run_dir`: its logs and records first, then `watchers` (the reporter)."""

    def path() -> Path:  # the run's directory moves between state directories
        return run_dir.path

    def warn(text: str) -> None:  # a record that could not be written, told to all
        outlet.warning(text)

    # Durable subscribers first: a record is on disk before the screen says so.
    outlet = RunOutlet(redactor, [JsonLogs(path), RunRecords(path, warn), *watchers])
    return outlet


@dataclass
class _Run:
    """One run being executed: start, run the jobs, finish."""

    run_dir: RunDir
    meta: RunMeta
    loaded: LoadedPipeline
    pipeline: Pipeline
    request: RunRequest
    config: Config
    executors: ExecutorFactory

    def execute(self, reporter: Subscriber) -> RunOutcome:
        self.run_dir.transition(RunState.active)
        t0 = time.monotonic()
        outlet = self._outlet(reporter)
        try:
            outlet.emit(
                RunStarted(
                    self.run_dir.run_id,
                    self.run_dir.store.repo,
                    self.request.revision,
                    self.meta.sha,
                    self.request.executor,
                )
            )
            outcome = JobsOutcome()
            result, internal = self._run_jobs(outlet, outcome)
            finished = self._finish(outlet, outcome, result, time.monotonic() - t0)
        finally:
            with interrupts.shielded():
                outlet.close()
        if internal is not None:
            raise internal
        ended = finished.result
        error = ended.error if ended.reason != EndReason.jobs_failed else None
        run_dir = self.run_dir
        kept = run_dir.workspace if self.request.keep_workspace else None
        return RunOutcome(
            ended.exit_code,
            run_dir.run_id,
            run_dir.state,
            run_dir.path,
            error,
            jobs=finished.jobs,
            workspace=kept if kept is not None and kept.exists() else None,
            duration_s=round(finished.duration_s, 3),
        )

    def _outlet(self, reporter: Subscriber) -> RunOutlet:
        redactor = Redactor(self.config.secrets_for(self.run_dir.store.repo).values.values())
        return outlet_for(self.run_dir, redactor, [reporter])

    def _run_jobs(
        self, outlet: RunOutlet, outcome: JobsOutcome
    ) -> tuple[RunResult, Exception | None]:
        """Materialize, set the executor up, run the jobs, tear down; how it ended."""
        try:
            with interrupts.raising():
                if self.request.dirty:
                    workspaces.materialize_worktree(self.loaded.repo.name_dir, self.workspace)
                else:
                    workspaces.materialize(self.loaded.repo.git_dir, self.meta.sha, self.workspace)
                with _ShieldedExit(self.executors(self._setup(outlet))) as executor:
                    JobRunner(
                        pipeline=self.pipeline,
                        executor=executor,
                        outlet=outlet,
                        secrets=self.config.secrets_for(self.run_dir.store.repo),
                        capture_limit=self.config.output.capture_limit,
                        push_outputs=source_outputs(self.meta),
                        source=self.request.source,
                        outputs_limit=self.config.output.outputs_limit,
                        run_env=self._run_env(),
                        jobs=self.request.concurrency,
                        outcome=outcome,
                        host=self.loaded.host,
                        term_grace=self.config.jobs.term_grace,
                        keeper=ArtifactKeeper(
                            lambda: self.run_dir.path, Budget(self.config.artifacts.max_size)
                        ),
                    ).run_all()
            return _result_of(outcome, outlet), None
        except (Interrupted, KeyboardInterrupt) as exc:
            message = str(exc) if isinstance(exc, Interrupted) else "interrupted by SIGINT"
            return _ended(EndReason.interrupted, message, ExitCode.interrupted), None
        except QuireError as exc:
            return _ended(EndReason.error, str(exc), exc.exit_code), None
        except Exception as exc:  # a bug of ours: still record the run, then let the CLI show it
            message = f"internal error: {type(exc).__name__}: {exc}"
            return _ended(EndReason.error, message, ExitCode.internal), exc
        finally:
            with interrupts.shielded():
                if not self.request.keep_workspace:
                    workspaces.remove(self.workspace)

    def _run_env(self) -> dict[str, str]:
        """What every command of the run sees, whichever executor runs it."""
        push = push_outputs(self.meta)
        docker = self.request.executor == ExecutorKind.docker
        env = {
            "CI": "true",
            "QUIRE": "true",
            "QUIRE_RUN_ID": self.run_dir.run_id,
            "QUIRE_SHA": self.meta.sha,
            "QUIRE_REF": push["ref"] or "",
            "QUIRE_WORKSPACE": "/work" if docker else str(self.workspace),
        }
        if push["branch"]:
            env["QUIRE_BRANCH"] = push["branch"]
        return env

    @property
    def workspace(self) -> Path:
        return self.run_dir.workspace

    def _setup(self, outlet: RunOutlet) -> ExecutorSetup:
        return ExecutorSetup(
            kind=self.request.executor,
            workspace=self.workspace,
            run_id=self.run_dir.run_id,
            repo=self.run_dir.store.repo,
            store_label=self.run_dir.store.label,
            docker=self.config.docker,
            outlet=outlet,
            keep_workspace=self.request.keep_workspace,
            host=socket.gethostname(),
            caches=tuple(self.pipeline.caches.values()),
            jobs=self.request.concurrency,
            spared=frozenset() if self.loaded.host is None else frozenset({self.loaded.host.pid}),
        )

    def _finish(
        self, outlet: RunOutlet, outcome: JobsOutcome, result: RunResult, duration_s: float
    ) -> RunFinished:
        """Jobs that never started become skipped; times, result and the final move.

        A run whose end cannot be written (a full disk) is still marked failed where it
        lies, by the rename that needs no space, and the terminal says so: `quire ci
        reconcile` writes its result once there is space again.
        """
        with interrupts.shielded():
            for job_id in self.pipeline.order:
                if job_id not in outcome.states:
                    reason = f"not run: {result.reason.value if result.reason else 'run ended'}"
                    state = JobState(job_id=job_id, status=JobStatus.skipped, skip_reason=reason)
                    outcome.states[job_id] = state
                    outlet.emit(JobFinished(state))
            if outlet.failure is not None and result.exit_code in _NOT_ENVIRONMENT:
                result = _ended(EndReason.error, str(outlet.failure), outlet.failure.exit_code)
            result = self._cancelled(result)
            target = RunState.complete if result.exit_code == ExitCode.ok else RunState.failed
            if result.reason == EndReason.cancelled:
                target = RunState.cancelled
            failed_before = len(outlet.failures)
            outlet.emit(RunEnding(result))
            if len(outlet.failures) > failed_before:  # the end could not be written
                failure = outlet.failures[failed_before]
                result = _ended(EndReason.error, self._mark_failed(failure), failure.exit_code)
            else:
                self.run_dir.transition(target)
            self.run_dir.store.forget_cancel(self.run_dir.run_id)
            finished = outlet.emit(
                RunFinished(
                    run_id=self.run_dir.run_id,
                    state=self.run_dir.state,
                    result=result,
                    jobs=tuple(outcome.states[job_id] for job_id in self.pipeline.order),
                    duration_s=duration_s,
                    location=self.run_dir.path,
                )
            )
        return finished

    def _cancelled(self, result: RunResult) -> RunResult:
        """An interrupted run that someone cancelled (`quire ci cancel`) ended as they
        asked: recorded as cancelled, by whom and when, not as a failure."""
        if result.reason != EndReason.interrupted:
            return result
        request = self.run_dir.store.cancel_request(self.run_dir.run_id)
        if request is None:
            return result
        return RunResult(
            reason=EndReason.cancelled,
            error=f"cancelled by {request.by}",
            exit_code=ExitCode.interrupted,
            cancelled_by=request.by,
            cancelled_at=request.at,
        )

    def _mark_failed(self, failure: QuireError) -> str:
        """Move a run whose end could not be written to failed/ (a rename needs no space);
        what to tell the person, either way."""
        try:
            self.run_dir.transition(RunState.failed)
        except LatestLinkFailed:
            pass  # moved all the same; `latest` falls back to the newest run
        except OSError:
            return (
                f"{failure}; the run stays in {self.run_dir.path} until `quire ci reconcile` "
                "marks it failed"
            )
        return (
            f"{failure}; the run is in {self.run_dir.path} without its result until `quire ci "
            "reconcile` can write it"
        )


class _ShieldedExit:
    """Enters an executor as it is; leaves it (its teardown) shielded from signals, so a
    second Ctrl-C cannot leave a container behind."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor

    def __enter__(self) -> Executor:
        return self._executor.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with interrupts.shielded():
            self._executor.__exit__(exc_type, exc, tb)


# Exit codes a failed write of the run's records overrides: the run did not
# end the way they say.
_NOT_ENVIRONMENT = (ExitCode.ok, ExitCode.jobs_failed)


def _ended(reason: EndReason, error: str, code: int) -> RunResult:
    return RunResult(reason=reason, error=error, exit_code=code)


def _result_of(outcome: JobsOutcome, outlet: RunOutlet) -> RunResult:
    fatal = outcome.fatal or outlet.failure  # a record that failed during setup or teardown
    if fatal is not None:
        return _ended(EndReason.error, str(fatal), fatal.exit_code)
    if outcome.failed:
        failed = [s.job_id for s in outcome.states.values() if s.status == JobStatus.failed]
        return _ended(EndReason.jobs_failed, f"failed: {', '.join(failed)}", ExitCode.jobs_failed)
    return RunResult(exit_code=ExitCode.ok)
