"""Whole runs through the orchestrator with a fake executor and an in-memory subscriber.

A real repository in tmp, the real run store, logs and records; only the
executor is fake (the orchestrator's `executors=` seam), so these pin what
the orchestrator itself owes a run: its records, its workspace, its exit
codes, its shields, and the order of what it tells its watchers.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import pytest
from pydantic import BaseModel

from quire.ci.events import (
    CommandStarted,
    ContainerRemoved,
    ContainerStarted,
    ContainerStopping,
    JobFinished,
    JobStarted,
    Level,
    Notice,
    Output,
    RunFinished,
)
from quire.ci.run.executors.base import Command, ExecResult, ExecutorSetup
from quire.ci.run.orchestrator import RunRequest, run
from quire.ci.store import recorder
from quire.ci.store.eventlog import JsonLogs
from quire.ci.store.records import (
    EndReason,
    JobState,
    JobStatus,
    RunMeta,
    RunResult,
    read_record,
)
from quire.ci.store.runs import RunState, RunStore, store_for
from quire.errors import DockerfileMissing, ExitCode, PipelineError, StoreWriteFailed
from quire.tools.process import OutputHandler
from tests.helpers import Collected, commit, make_repo

TWO_JOBS = """
from quire.ci import job

@job(inputs=["quire/push"])
def build(rt):
    rt.sh(["make"])

@job(inputs=["build"])
def test(rt):
    rt.sh(["make", "test"])
"""


@dataclass
class FakeExecutor:
    """Answers commands with exit 0 and a line of output; says when it is set up and torn
    down, as the docker executor does. Hooks let a test misbehave at each step."""

    setup: ExecutorSetup
    on_enter: Callable[[FakeExecutor], None] | None = None
    on_execute: Callable[[FakeExecutor, Command], None] | None = None
    on_exit: Callable[[FakeExecutor], None] | None = None
    on_abort: Callable[[FakeExecutor], None] | None = None
    torn_down: bool = False
    workspace_seen: bool = False
    commands: list[Command] = field(default_factory=list)
    jobs_ended: int = 0

    def __enter__(self) -> FakeExecutor:
        self.workspace_seen = (self.setup.workspace / ".quire" / "ci.py").is_file()
        if self.on_enter:
            self.on_enter(self)
        self.setup.outlet.emit(ContainerStarted("c0ffee" * 10, "quire-ci/proj:run"))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.setup.outlet.emit(ContainerStopping("c0ffee" * 10))
        if self.on_exit:
            self.on_exit(self)
        self.torn_down = True
        self.setup.outlet.emit(ContainerRemoved("c0ffee" * 10))

    def end_job(self) -> None:
        self.jobs_ended += 1

    def abort(self) -> None:
        if self.on_abort:
            self.on_abort(self)

    def execute(self, command: Command, on_output: OutputHandler) -> ExecResult:
        self.commands.append(command)
        if self.on_execute:
            self.on_execute(self, command)
        on_output("stdout", f"ran {' '.join(command.argv)}\n".encode())
        return ExecResult(0, datetime.now(UTC), 0.01)


@dataclass
class Harness:
    repo: Path
    made: list[FakeExecutor] = field(default_factory=list)
    seen: Collected = field(default_factory=Collected)
    hooks: dict[str, Callable[..., None]] = field(default_factory=dict)

    def factory(self, setup: ExecutorSetup) -> FakeExecutor:
        executor = FakeExecutor(
            setup,
            on_enter=self.hooks.get("enter"),
            on_execute=self.hooks.get("execute"),
            on_exit=self.hooks.get("exit"),
            on_abort=self.hooks.get("abort"),
        )
        self.made.append(executor)
        return executor

    def run_unbroken(self, **request: object) -> int:
        """`run`, failing the test (not stopping pytest) if a signal escapes the run."""
        try:
            return self.run(**request)
        except KeyboardInterrupt as exc:  # Interrupted is one
            pytest.fail(f"a signal escaped the run: {exc!r}")

    def run(self, **request: object) -> int:
        request_ = RunRequest(self.repo, **request)  # type: ignore[arg-type]
        return run(request_, self.seen, executors=self.factory).exit_code

    @property
    def store(self) -> RunStore:
        return store_for(self.repo)

    def only_run(self) -> tuple[RunState, Path]:
        (found,) = list(self.store.runs())
        return found.state, found.path

    def result(self) -> RunResult:
        _, path = self.only_run()
        return read_record(path / "result.yml", RunResult)

    def job(self, job_id: str) -> JobState:
        _, path = self.only_run()
        return read_record(path / "jobs" / job_id / "state.yml", JobState)


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    repo = tmp_path / "proj"
    make_repo(repo, {".quire/ci.py": TWO_JOBS})
    return Harness(repo)


def kill_self(sig: signal.Signals = signal.SIGTERM) -> None:
    os.kill(os.getpid(), sig)


def test_a_clean_run_tells_its_watchers_everything_in_order(harness: Harness) -> None:
    assert harness.run() == ExitCode.ok
    kinds = [type(event).__name__ for event in harness.seen.events]
    assert kinds == [
        "RunStarted",
        "ContainerStarted",
        "JobStarted",
        "CommandStarted",
        "Output",
        "CommandFinished",
        "JobFinished",
        "JobStarted",
        "CommandStarted",
        "Output",
        "CommandFinished",
        "JobFinished",
        "ContainerStopping",
        "ContainerRemoved",
        "RunEnding",
        "RunFinished",
    ]
    jobs = [e.job for e in harness.seen.events if isinstance(e, JobStarted | JobFinished)]
    assert jobs == ["build", "build", "test", "test"]
    assert harness.seen.output("test") == b"ran make test\n"
    assert harness.only_run()[0] == RunState.complete


def test_a_run_records_its_commits_subject_and_its_plan_of_jobs_with_their_inputs(
    harness: Harness,
) -> None:
    commit(harness.repo, {"notes.txt": "x"}, message="Fix the <parser>\n\nbody text")
    assert harness.run() == ExitCode.ok
    _, path = harness.only_run()
    meta = read_record(path / "meta.yml", RunMeta)
    assert meta.subject == "Fix the <parser>"
    assert [(p.job_id, p.inputs) for p in meta.plan] == [
        ("build", ["quire/push"]),
        ("test", ["build"]),
    ]


def test_a_run_of_named_jobs_plans_only_those(harness: Harness) -> None:
    assert harness.run(jobs=("build",)) == ExitCode.ok
    _, path = harness.only_run()
    assert [p.job_id for p in read_record(path / "meta.yml", RunMeta).plan] == ["build"]


def test_records_are_on_disk_before_the_reporter_hears_the_run_ended(harness: Harness) -> None:
    found: dict[str, bool] = {}

    class Watcher(Collected):
        def handle(self, event: object) -> None:
            if isinstance(event, RunFinished):
                found["result"] = (event.location / "result.yml").exists()
            super().handle(event)

    harness.seen = Watcher()
    harness.run()
    assert found == {"result": True}


def test_the_workspace_holds_the_commit_during_the_run_and_is_removed_after(
    harness: Harness,
) -> None:
    harness.run()
    (executor,) = harness.made
    assert executor.workspace_seen
    assert not executor.setup.workspace.exists()


def test_keep_workspace_leaves_the_tree_in_place(harness: Harness) -> None:
    harness.run(keep_workspace=True)
    (executor,) = harness.made
    assert (executor.setup.workspace / ".quire" / "ci.py").is_file()


def test_the_executor_gets_the_runs_identity_and_the_stores_label(harness: Harness) -> None:
    harness.run()
    (executor,) = harness.made
    _, path = harness.only_run()
    assert executor.setup.run_id == path.name
    assert executor.setup.repo == harness.store.repo
    assert executor.setup.repo.startswith("proj-")
    assert executor.setup.store_label == str(harness.store.root.parent.parent)


def test_an_internal_error_is_raised_after_the_run_is_recorded_failed(harness: Harness) -> None:
    def bug(executor: FakeExecutor) -> None:
        raise ValueError("a bug of quire's")

    harness.hooks["enter"] = bug
    with pytest.raises(ValueError, match="a bug of quire's"):
        harness.run()
    state, _ = harness.only_run()
    assert state == RunState.failed
    result = harness.result()
    assert result.reason == EndReason.error
    assert result.exit_code == ExitCode.internal
    assert result.error == "internal error: ValueError: a bug of quire's"
    (finished,) = harness.seen.of(RunFinished)
    assert finished.result.exit_code == ExitCode.internal


def test_an_environment_error_ends_the_run_with_its_code_and_every_job_skipped(
    harness: Harness,
) -> None:
    def missing(executor: FakeExecutor) -> None:
        raise DockerfileMissing("no .quire/Dockerfile")

    harness.hooks["enter"] = missing
    assert harness.run() == ExitCode.environment
    assert harness.result().error == "no .quire/Dockerfile"
    for job_id in ("build", "test"):
        state = harness.job(job_id)
        assert state.status == JobStatus.skipped
        assert state.skip_reason == "not run: error"
    (finished,) = harness.seen.of(RunFinished)
    assert [job.job_id for job in finished.jobs] == ["build", "test"]


def test_an_interrupt_is_recorded_as_interrupted_with_130_and_unstarted_jobs_skipped(
    harness: Harness,
) -> None:
    harness.hooks["execute"] = lambda executor, command: kill_self(signal.SIGTERM)
    assert harness.run() == ExitCode.interrupted
    state, _ = harness.only_run()
    assert state == RunState.failed
    result = harness.result()
    assert result.reason == EndReason.interrupted
    assert result.exit_code == 130
    assert result.error == "interrupted by SIGTERM"
    assert harness.job("build").status == JobStatus.failed
    assert harness.job("test").status == JobStatus.skipped
    assert harness.job("test").skip_reason == "not run: interrupted"
    (executor,) = harness.made
    assert executor.torn_down
    assert not executor.setup.workspace.exists()


def test_a_cancelled_run_is_recorded_as_cancelled_by_whom_and_when_not_as_failed(
    harness: Harness,
) -> None:
    asked: list[datetime] = []

    def cancel(executor: FakeExecutor, command: Command) -> None:
        run_id = executor.setup.workspace.parent.name
        asked.append(harness.store.request_cancel(run_id, "alice").at)
        kill_self(signal.SIGTERM)  # as `quire ci cancel` does after asking

    harness.hooks["execute"] = cancel
    assert harness.run() == ExitCode.interrupted
    state, path = harness.only_run()
    assert state == RunState.cancelled
    result = harness.result()
    assert result.reason == EndReason.cancelled
    assert (result.cancelled_by, result.cancelled_at) == ("alice", asked[0])
    assert result.exit_code == 130
    assert harness.job("test").skip_reason == "not run: interrupted"
    (finished,) = harness.seen.of(RunFinished)
    assert finished.state == RunState.cancelled
    assert harness.store.cancel_request(path.name) is None  # it is in the result now


def test_an_interrupt_nobody_asked_for_as_a_cancel_stays_interrupted(harness: Harness) -> None:
    harness.store.request_cancel("20000101-000000-000000-abcdef", "bob")  # another run's
    harness.hooks["execute"] = lambda executor, command: kill_self(signal.SIGTERM)
    assert harness.run() == ExitCode.interrupted
    assert harness.only_run()[0] == RunState.failed
    assert harness.result().reason == EndReason.interrupted


def test_teardown_is_shielded_from_a_second_signal(harness: Harness) -> None:
    harness.hooks["execute"] = lambda executor, command: kill_self(signal.SIGINT)
    harness.hooks["exit"] = lambda executor: kill_self(signal.SIGTERM)
    assert harness.run_unbroken() == ExitCode.interrupted
    (executor,) = harness.made
    assert executor.torn_down  # the second signal did not cut the teardown short
    assert harness.seen.of(ContainerRemoved)
    assert harness.result().reason == EndReason.interrupted


def test_the_final_records_are_shielded_from_a_signal(harness: Harness) -> None:
    class SignalsOnTheEnd(Collected):
        def handle(self, event: object) -> None:
            super().handle(event)
            if isinstance(event, RunFinished):
                kill_self(signal.SIGTERM)  # while the run is being finished

    harness.seen = SignalsOnTheEnd()
    assert harness.run_unbroken() == ExitCode.ok
    state, _ = harness.only_run()
    assert state == RunState.complete
    assert harness.result().exit_code == 0
    assert harness.seen.of(RunFinished)


def test_signal_handlers_are_back_as_they_were_after_a_run(harness: Harness) -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    harness.run()
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_secret_in_a_commands_argv_is_masked_in_what_watchers_see(
    harness: Harness, isolated_dirs: Path
) -> None:
    isolated_dirs.mkdir(parents=True, exist_ok=True)
    (isolated_dirs / "config.toml").write_text('[secrets]\ntoken = "hunter22"\n')
    commit(
        harness.repo,
        {
            ".quire/ci.py": """
            from quire.ci import job

            @job(inputs=["quire/push"])
            def leak(rt):
                print("printed", rt.secret("token"))
                rt.sh(["curl", "-H", "auth: hunter22"])
            """
        },
    )
    harness.run()
    (started,) = harness.seen.of(CommandStarted)
    assert started.display == "curl -H 'auth: ***'"
    assert harness.seen.output("leak") == b"printed ***\nran curl -H auth: ***\n"
    assert b"hunter22" not in b"".join(e.data for e in harness.seen.of(Output))


def test_a_secret_scoped_to_other_repositories_does_not_exist_for_this_one(
    harness: Harness, isolated_dirs: Path
) -> None:
    isolated_dirs.mkdir(parents=True, exist_ok=True)
    (isolated_dirs / "config.toml").write_text(
        "[secrets]\n"
        'theirs = { value = "their-deploy-key", repos = ["infra-*"] }\n'
        'ours = { value = "our-token", repos = ["proj"] }\n'
    )
    commit(
        harness.repo,
        {
            ".quire/ci.py": """
            from quire.ci import job

            @job(inputs=["quire/push"])
            def steal(rt):
                rt.secret("theirs")

            @job(inputs=["quire/push"])
            def own(rt):
                print("mine:", rt.secret("ours"))
            """
        },
    )
    assert harness.run() == ExitCode.jobs_failed
    steal, own = harness.job("steal"), harness.job("own")
    assert steal.status == JobStatus.failed and own.status == JobStatus.success
    assert steal.error is not None and "unknown secret 'theirs'" in steal.error
    assert "theirs" not in steal.error.split("may read:")[-1].split(";")[0]
    assert harness.seen.output("own") == b"mine: ***\n"
    _, path = harness.only_run()
    for record in path.rglob("*"):
        if record.is_file():
            assert b"their-deploy-key" not in record.read_bytes(), record


SWALLOWS = """
from quire.ci import job

@job(inputs=["quire/push"])
def greedy(rt):
    try:
        rt.sh(["sleep", "30"])
    except {caught}:
        pass
    {after}

@job(inputs=["quire/push"])
def later(rt):
    rt.sh(["echo", "never"])
"""


@pytest.mark.parametrize("caught", ["BaseException", "KeyboardInterrupt", ""])
@pytest.mark.parametrize("after", ["rt.sh(['echo', 'after'])", "return None"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_job_that_swallows_the_interrupt_cannot_keep_the_run_going(
    harness: Harness, caught: str, after: str, sig: signal.Signals
) -> None:
    source = SWALLOWS.format(caught=caught, after=after).replace("except :", "except:")
    commit(harness.repo, {".quire/ci.py": source})
    harness.hooks["execute"] = lambda executor, command: kill_self(sig)
    assert harness.run_unbroken() == ExitCode.interrupted
    (executor,) = harness.made
    assert [c.argv for c in executor.commands] == [("sleep", "30")]  # nothing after the signal
    result = harness.result()
    assert (result.reason, result.exit_code) == (EndReason.interrupted, 130)
    assert result.error == f"interrupted by {sig.name}"
    assert harness.job("greedy").status == JobStatus.failed
    assert harness.job("later").skip_reason == "not run: interrupted"


def test_the_state_dir_is_the_users_alone_logs_included(harness: Harness) -> None:
    harness.run()
    _, path = harness.only_run()
    state = path.parents[3]
    assert state.stat().st_mode & 0o777 == 0o700
    for entry in [path, *path.rglob("*")]:
        mode = entry.stat().st_mode & 0o777
        expected = 0o700 if entry.is_dir() else 0o600
        assert mode == expected, (entry, oct(mode))


# --- a state dir that cannot be written -----------------------------------------------------------


def no_space(path: object) -> StoreWriteFailed:
    return StoreWriteFailed.of(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))


def test_a_log_that_cannot_be_written_stops_the_run_with_exit_3_and_records_it(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = JsonLogs.handle

    def full(self: JsonLogs, event: object) -> None:
        if isinstance(event, Output):
            raise no_space("/state/x/log.jsonl")
        real(self, event)  # type: ignore[arg-type]

    monkeypatch.setattr(JsonLogs, "handle", full)
    assert harness.run_unbroken() == ExitCode.environment
    (executor,) = harness.made
    assert len(executor.commands) == 1  # the next job never ran
    state, _ = harness.only_run()
    assert state == RunState.failed
    result = harness.result()
    assert result.exit_code == 3
    assert (
        result.error and "cannot write /state/x/log.jsonl: No space left on device" in result.error
    )
    assert "the disk is full" in result.error
    assert harness.job("build").status == JobStatus.failed
    assert harness.job("test").status == JobStatus.skipped
    warnings = [n.text for n in harness.seen.of(Notice) if n.level == Level.warning]
    assert warnings == [f"{no_space('/state/x/log.jsonl')}; the run stops"]
    assert harness.seen.output("build") == b"ran make\n"  # the terminal still showed it


def test_a_run_whose_end_cannot_be_written_is_marked_failed_where_it_lies(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = recorder.write_record

    def full(path: Path, record: BaseModel, *, durable: bool = True) -> None:
        if path.name == "result.yml":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, record, durable=durable)

    monkeypatch.setattr(recorder, "write_record", full)
    assert harness.run_unbroken() == ExitCode.environment
    state, path = harness.only_run()
    assert state == RunState.failed  # never left looking like a running run
    assert not (path / "result.yml").exists()
    (finished,) = harness.seen.of(RunFinished)  # the terminal is told where it is
    assert finished.state == RunState.failed and finished.location == path
    assert "result.yml: No space left on device" in str(finished.result.error)
    assert f"the run is in {path} without its result" in str(finished.result.error)
    monkeypatch.setattr(recorder, "write_record", real)  # space again, and its runner gone:
    from quire.ci.store.reconcile import reconcile_store  # ... reconcile writes the result
    from quire.ci.store.records import RunnerInfo, write_record

    runner = read_record(path / "runner.yml", RunnerInfo)
    assert reconcile_store(harness.store) == []  # not while its runner lives
    write_record(path / "runner.yml", runner.model_copy(update={"pid_start": 1}))
    (action,) = reconcile_store(harness.store)
    assert action.kind == "completed"
    result = read_record(path / "result.yml", RunResult)
    assert result.exit_code == ExitCode.environment
    assert result.error is not None and "could not be written" in result.error


def test_every_command_sees_ci_and_the_runs_identity_by_name(harness: Harness) -> None:
    assert harness.run() == ExitCode.ok
    (executor,) = harness.made
    first, second = executor.commands
    _, path = harness.only_run()
    meta = store_for(harness.repo).find("latest").meta()
    assert {k: v for k, v in first.env.items()} == {
        "CI": "true",
        "QUIRE": "true",
        "QUIRE_RUN_ID": path.name,
        "QUIRE_JOB": "build",
        "QUIRE_SHA": meta.sha,
        "QUIRE_REF": "refs/heads/main",
        "QUIRE_BRANCH": "main",
        "QUIRE_WORKSPACE": str(executor.setup.workspace),
    }
    assert second.env["QUIRE_JOB"] == "test"


# --- jobs side by side (--jobs N) --------------------------------------------------------------

SIDE_BY_SIDE = """
from quire.ci import job

@job(inputs=["quire/push"])
def a(rt):
    print("a printed")
    rt.sh(["work", "a"])

@job(inputs=["quire/push"])
def b(rt):
    print("b printed")
    rt.sh(["work", "b"])

@job(inputs=["quire/push"])
def c(rt):
    rt.sh(["fail", "c"])

@job(inputs=["a", "b"])
def after(rt):
    rt.sh(["work", "after"])

@job(inputs=["c"])
def needs_c(rt):
    rt.sh(["work", "needs_c"])
"""


def spans(harness: Harness) -> dict[str, tuple[float, float]]:
    return harness.hooks["spans"]  # type: ignore[return-value]


def slow_commands(harness: Harness, seconds: float = 0.3) -> None:
    """Each command takes `seconds`; `fail` commands raise in the job; spans are kept."""
    import threading

    lock = threading.Lock()
    seen: dict[str, tuple[float, float]] = {}

    def work(executor: FakeExecutor, command: Command) -> None:
        t0 = time.monotonic()
        time.sleep(seconds)
        with lock:
            seen[command.argv[1]] = (t0, time.monotonic())
        if command.argv[0] == "fail":
            raise RuntimeError("failed on purpose")

    harness.hooks["execute"] = work
    harness.hooks["spans"] = seen  # type: ignore[assignment]


def test_independent_jobs_run_side_by_side_and_dependents_wait_for_their_inputs(
    harness: Harness,
) -> None:
    commit(harness.repo, {".quire/ci.py": SIDE_BY_SIDE})
    slow_commands(harness)
    assert harness.run(concurrency=3) == ExitCode.jobs_failed
    seen = spans(harness)
    # a, b and c overlapped: each started before any of them ended.
    assert max(seen[j][0] for j in "abc") < min(seen[j][1] for j in "abc")
    assert seen["after"][0] >= max(seen["a"][1], seen["b"][1])  # after its inputs only
    states = {job: harness.job(job) for job in ("a", "b", "c", "after", "needs_c")}
    assert states["c"].status == JobStatus.failed
    assert states["after"].status == JobStatus.success  # a failure skips its dependents only
    assert states["needs_c"].skip_reason == "input 'c' failed"
    assert harness.seen.output("a") == b"a printed\nran work a\n"  # print() kept to its job
    assert harness.seen.output("b") == b"b printed\nran work b\n"


def test_one_at_a_time_is_still_the_default(harness: Harness) -> None:
    commit(harness.repo, {".quire/ci.py": SIDE_BY_SIDE})
    slow_commands(harness, 0.05)
    harness.run()
    seen = spans(harness)
    assert seen["a"][1] <= seen["b"][0] <= seen["b"][1] <= seen["c"][0]


def test_an_interrupt_stops_every_running_job_and_tears_down_once(harness: Harness) -> None:
    commit(harness.repo, {".quire/ci.py": SIDE_BY_SIDE})
    aborted: list[bool] = []

    def work(executor: FakeExecutor, command: Command) -> None:
        if command.argv[1] == "a":
            kill_self(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not aborted and time.monotonic() < deadline:  # killed by abort()
            time.sleep(0.01)

    harness.hooks["execute"] = work
    harness.hooks["abort"] = lambda executor: aborted.append(True)
    assert harness.run_unbroken(concurrency=3) == ExitCode.interrupted
    assert aborted
    (executor,) = harness.made
    assert executor.torn_down
    for job in ("a", "b", "c"):
        assert harness.job(job).status == JobStatus.failed, job
    assert harness.job("after").skip_reason == "not run: interrupted"


INVALID = "from quire.ci import job\n\n@job(inputs=[])\ndef x(rt): pass\n"


def test_a_queued_run_whose_pipeline_is_invalid_is_recorded_failed_with_the_message(
    harness: Harness,
) -> None:
    commit(
        harness.repo,
        {".quire/ci.py": "from quire.ci import job\n\n@job(inputs=[])\ndef x(rt): pass\n"},
    )
    with pytest.raises(PipelineError):
        harness.run(run_id="20261125-000000-000000-abcdef")
    state, path = harness.only_run()
    assert (state, path.name) == (RunState.failed, "20261125-000000-000000-abcdef")
    result = harness.result()
    assert (result.reason, result.exit_code) == (EndReason.error, 2)
    assert "invalid pipeline" in str(result.error) and "has no inputs" in str(result.error)
    assert harness.made == []  # nothing ran


def test_a_run_typed_at_the_terminal_with_an_invalid_pipeline_records_nothing(
    harness: Harness,
) -> None:
    commit(
        harness.repo,
        {".quire/ci.py": "from quire.ci import job\n\n@job(inputs=[])\ndef x(rt): pass\n"},
    )
    with pytest.raises(PipelineError):
        harness.run()
    assert list(harness.store.runs()) == []
