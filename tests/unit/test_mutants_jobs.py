"""JobRunner ends what each job started before the next job runs, whether the job
passed, failed or was skipped by its own Python (issue 19: a dropped `end_job()`)."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from quire.ci.pipeline import load_pipeline
from quire.ci.run.executors.base import Command, ExecResult
from quire.ci.run.jobs import JobRunner
from quire.ci.run.orchestrator import outlet_for
from quire.ci.run.redact import Redactor
from quire.ci.store.records import ExecutorKind, RunMeta
from quire.ci.store.runs import RunStore
from quire.config import Secrets
from quire.tools.process import OutputHandler
from tests.helpers import ThreadJobHost

PUSH = {"sha": "a" * 40, "ref": "refs/heads/main", "branch": "main", "tag": None}


class Recorder:
    """An executor that records its commands and every end of a job, in order."""

    name = "fake"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def end_job(self) -> None:
        self.calls.append("end")

    def abort(self) -> None:
        self.calls.append("abort")

    def execute(self, command: Command, on_output: OutputHandler) -> ExecResult:
        self.calls.append(" ".join(command.argv))
        return ExecResult(0, datetime.now(UTC), 0.0)


def run_pipeline(tmp_path: Path, source: str, executor: Recorder) -> dict[str, str]:
    store = RunStore("example", root=tmp_path / "state", cache=tmp_path / "cache")

    def meta(run_id: str) -> RunMeta:
        return RunMeta(
            run_id=run_id,
            repo="example",
            git_dir=str(tmp_path / "repo.git"),
            revision="HEAD",
            sha="a" * 40,
            pushed_at=datetime.now(UTC),
            executor=ExecutorKind.host,
        )

    run = store.create(meta)
    pipeline = load_pipeline(textwrap.dedent(source).lstrip("\n"))
    outlet = outlet_for(run, Redactor(), [])
    try:
        outcome = JobRunner(
            pipeline=pipeline,
            executor=executor,  # type: ignore[arg-type]
            outlet=outlet,
            secrets=Secrets(),
            capture_limit=1024 * 1024,
            push_outputs=PUSH,
            host=ThreadJobHost(pipeline),
        ).run_all()
    finally:
        outlet.close()
    return {job_id: state.status.value for job_id, state in outcome.states.items()}


def test_every_job_that_ran_is_ended_before_the_next_one_starts(tmp_path: Path) -> None:
    executor = Recorder()
    states = run_pipeline(
        tmp_path,
        """
        from quire.ci import Skip, job

        @job(inputs=["quire/push"])
        def a(rt):
            rt.sh(["echo", "a"])

        @job(inputs=["quire/push"])
        def b(rt):
            rt.sh(["echo", "b"])
            raise RuntimeError("b fails")

        @job(inputs=["quire/push"])
        def c(rt):
            rt.sh(["echo", "c"])
            raise Skip("not today")

        @job(inputs=["b"])
        def d(rt):
            rt.sh(["echo", "d"])
        """,
        executor,
    )
    assert states == {"a": "success", "b": "failed", "c": "skipped", "d": "skipped"}
    # d never ran (its input failed): nothing of its to end.
    assert executor.calls == ["echo a", "end", "echo b", "end", "echo c", "end"]
