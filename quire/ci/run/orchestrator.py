"""One `quire ci run`: resolve, load, record, materialize, execute, tear down, finish.

The run's life on disk:

    pending/<id>   created with meta.yml and runner.yml
    active/<id>    from the moment this process starts working on it
    complete/<id>  every job succeeded or was skipped
    failed/<id>    a job failed, the environment failed, or we were interrupted

Whatever happens inside, the run leaves active/ with times.yml and
result.yml written, its workspace removed (unless kept), and its container
gone: the finishing steps run shielded from further signals.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from quire import interrupts
from quire.ci.pipeline import PIPELINE_FILE, Pipeline, load_pipeline
from quire.ci.run import workspace as workspaces
from quire.ci.run.executors.base import Executor
from quire.ci.run.executors.host import HostExecutor
from quire.ci.run.jobs import JobRunner, JobsOutcome
from quire.ci.run.redact import Redactor
from quire.ci.run.report import Reporter
from quire.ci.store.liveness import process_start_ticks
from quire.ci.store.logs import LogWriter
from quire.ci.store.records import (
    EndReason,
    RunMeta,
    RunnerInfo,
    RunResult,
    RunTimes,
    utcnow,
)
from quire.ci.store.records import (
    Executor as ExecutorName,
)
from quire.ci.store.runs import RunDir, RunState, RunStore
from quire.config import Config, load_config
from quire.errors import Interrupted, QuireError
from quire.paths import repo_segment
from quire.tools import git


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for."""

    repo_path: Path
    revision: str = "HEAD"
    executor: ExecutorName = ExecutorName.host
    keep_workspace: bool = False
    # A pushed revision (the worker): the ref and push time to record instead of
    # the ones resolving `revision` gives.
    ref: str | None = None
    pushed_at: datetime | None = None
    run_id: str | None = None  # assigned ahead (by a queue); by default a new one


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int
    run_id: str | None = None
    state: RunState | None = None
    location: Path | None = None
    error: str | None = None  # why the run ended early (not a job's own failure)


@dataclass(frozen=True)
class LoadedPipeline:
    repo: git.Repository
    revision: git.Revision
    pipeline: Pipeline | None


def load(repo_path: Path, revision: str) -> LoadedPipeline:
    """Find the repository, resolve the revision, load its ci.py (None if it has none)."""
    repo = git.open_repository(repo_path)
    resolved = git.resolve(repo.git_dir, revision)
    source = git.read_file(repo.git_dir, resolved.sha, PIPELINE_FILE)
    pipeline = None if source is None else load_pipeline(source)
    return LoadedPipeline(repo, resolved, pipeline)


def run(request: RunRequest, reporter: Reporter) -> RunOutcome:
    """Run HEAD's (or the requested revision's) pipeline; returns the exit code to use.

    Raises `QuireError` for problems found before a run record exists (bad
    repository, revision, pipeline or config); everything after that ends
    up in the run's records and the returned exit code.
    """
    loaded = load(request.repo_path, request.revision)
    if loaded.pipeline is None:
        reporter.notice(
            f"no {PIPELINE_FILE} at {request.revision} ({loaded.revision.sha[:12]}): nothing to run"
        )
        return RunOutcome(exit_code=0)
    config = load_config()
    store = RunStore(repo_segment(loaded.repo.name_dir.name))
    # From here on a signal must unwind (not kill) us: a run may exist to record.
    with interrupts.raising():
        _reconcile_first(store, request, reporter)
        run_dir = _create_run(store, loaded, request)
        return _execute(run_dir, loaded, loaded.pipeline, request, config, reporter)


def _reconcile_first(store: RunStore, request: RunRequest, reporter: Reporter) -> None:
    """The cheap part of `quire ci reconcile`, before every run: this repository's
    orphaned runs, and (for docker runs) containers that no live run owns."""
    from quire.ci.store.reconcile import reconcile

    try:
        actions = reconcile(
            [store], containers=request.executor == ExecutorName.docker, in_flight_only=True
        )
    except QuireError:
        return  # docker trouble is reported, precisely, by the run itself
    for action in actions:
        reporter.notice(f"reconcile: {action}")


def _create_run(store: RunStore, loaded: LoadedPipeline, request: RunRequest) -> RunDir:
    def meta(run_id: str) -> RunMeta:
        return RunMeta(
            run_id=run_id,
            repo=store.repo,
            git_dir=str(loaded.repo.git_dir),
            revision=request.revision,
            sha=loaded.revision.sha,
            ref=request.ref or loaded.revision.ref,
            pushed_at=request.pushed_at or utcnow(),
            executor=request.executor,
        )

    runner = RunnerInfo(
        pid=os.getpid(), host=socket.gethostname(), pid_start=process_start_ticks(os.getpid())
    )
    return store.create(meta, runner, run_id=request.run_id)


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


def _make_executor(
    request: RunRequest, run_dir: RunDir, config: Config, run_log: LogWriter, reporter: Reporter
) -> Executor:
    if request.executor == ExecutorName.host:
        return HostExecutor(run_dir.workspace)
    from quire.ci.run.executors.docker import DockerExecutor  # only docker runs pay for it

    return DockerExecutor(
        workspace=run_dir.workspace,
        run_dir=run_dir,
        settings=config.docker,
        run_log=run_log,
        reporter=reporter,
    )


def _execute(
    run_dir: RunDir,
    loaded: LoadedPipeline,
    pipeline: Pipeline,
    request: RunRequest,
    config: Config,
    reporter: Reporter,
) -> RunOutcome:
    meta = run_dir.meta()
    redactor = Redactor(config.secrets.values.values())
    run_dir.transition(RunState.active)
    times = RunTimes(started_at=utcnow())
    run_dir.write_times(times)
    reporter.run_started(
        f"run {run_dir.run_id}  {run_dir.store.repo} at {request.revision} "
        f"({meta.sha[:12]})  executor {request.executor.value}"
    )
    outcome: JobsOutcome | None = None
    internal: Exception | None = None
    result: RunResult
    with LogWriter(run_dir.path / "log.jsonl") as run_log:
        run_log.event(
            "run-start", run_id=run_dir.run_id, sha=meta.sha, executor=request.executor.value
        )
        try:
            with interrupts.raising():
                workspaces.materialize(loaded.repo.git_dir, meta.sha, run_dir.workspace)
                with _make_executor(request, run_dir, config, run_log, reporter) as executor:
                    outcome = JobRunner(
                        pipeline=pipeline,
                        executor=executor,
                        run=run_dir,
                        run_log=run_log,
                        reporter=reporter,
                        secrets=config.secrets,
                        redactor=redactor,
                        capture_limit=config.output.capture_limit,
                        push_outputs=push_outputs(meta),
                    ).run_all()
            result = _result_of(outcome)
        except (Interrupted, KeyboardInterrupt) as exc:
            message = str(exc) if isinstance(exc, Interrupted) else "interrupted by SIGINT"
            result = RunResult(reason=EndReason.interrupted, error=message, exit_code=130)
        except QuireError as exc:
            result = RunResult(
                reason=EndReason.error, error=redactor.redact(str(exc)), exit_code=exc.exit_code
            )
        except Exception as exc:  # a bug of ours: still record the run, then let the CLI show it
            internal = exc
            result = RunResult(
                reason=EndReason.error,
                error=redactor.redact(f"internal error: {type(exc).__name__}: {exc}"),
                exit_code=1,
            )
        finally:
            with interrupts.shielded():
                if not request.keep_workspace:
                    workspaces.remove(run_dir.workspace)
        with interrupts.shielded():
            run_log.event("run-end", exit_code=result.exit_code, reason=result.reason)
            times.finished_at = utcnow()
            run_dir.write_times(times)
            run_dir.write_result(result)
            run_dir.transition(RunState.complete if result.exit_code == 0 else RunState.failed)
    if internal is not None:
        raise internal
    states = list(outcome.states.values()) if outcome else run_dir.job_states()
    status = run_dir.state.value + (f" ({result.reason.value})" if result.reason else "")
    reporter.run_finished(states, status, str(run_dir.path))
    error = result.error if result.reason != EndReason.jobs_failed else None
    return RunOutcome(result.exit_code, run_dir.run_id, run_dir.state, run_dir.path, error)


def _result_of(outcome: JobsOutcome) -> RunResult:
    if outcome.fatal is not None:
        return RunResult(
            reason=EndReason.error, error=str(outcome.fatal), exit_code=outcome.fatal.exit_code
        )
    if outcome.failed:
        failed = [s.job_id for s in outcome.states.values() if s.status.value == "failed"]
        return RunResult(
            reason=EndReason.jobs_failed, error=f"failed: {', '.join(failed)}", exit_code=1
        )
    return RunResult(exit_code=0)
