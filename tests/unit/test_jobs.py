"""JobRunner: how each job's end becomes its state, and how failures and skips spread."""

from __future__ import annotations

import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from quire.ci.events import JobFinished
from quire.ci.pipeline import Pipeline, load_pipeline
from quire.ci.run.executors.base import Command, ExecResult
from quire.ci.run.jobhost import JobHost
from quire.ci.run.jobs import JobRunner, JobsOutcome
from quire.ci.run.orchestrator import outlet_for
from quire.ci.run.outlet import RunOutlet
from quire.ci.run.redact import Redactor
from quire.ci.store.logs import LogReader
from quire.ci.store.records import ExecutorKind, JobState, JobStatus, RunMeta, read_record
from quire.ci.store.runs import RunDir, RunStore
from quire.config import Secrets
from quire.tools.process import OutputHandler
from tests.helpers import Collected, ThreadJobHost, host_executor

PUSH = {"sha": "a" * 40, "ref": "refs/heads/main", "branch": "main", "tag": None}


@dataclass
class FakeExecutor:
    """Answers every command with a fixed exit and output; records what it was asked."""

    exit: int = 0
    stdout: bytes = b""
    commands: list[Command] = field(default_factory=list)
    name: str = "fake"
    jobs_ended: int = 0

    def __enter__(self) -> FakeExecutor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def end_job(self) -> None:
        self.jobs_ended += 1

    def abort(self) -> None:
        pass

    def execute(self, command: Command, on_output: OutputHandler) -> ExecResult:
        self.commands.append(command)
        if self.stdout:
            on_output("stdout", self.stdout)
        return ExecResult(self.exit, datetime.now(UTC), 0.0)


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
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

    return store.create(meta)


@dataclass
class Runner:
    run: RunDir
    executor: FakeExecutor | Callable[[RunOutlet], Any]
    secrets: Secrets = field(default_factory=Secrets)
    seen: Collected = field(default_factory=Collected)
    jobs: int = 1
    real_host: bool = False  # the job host process, not a thread of this one

    def __call__(self, source: str) -> JobsOutcome:
        text = textwrap.dedent(source).lstrip("\n")
        if self.real_host:
            host = JobHost.start()
            try:
                return self._run(host.load({".quire/ci.py": text.encode()}), host)
            finally:
                host.close()
        pipeline = load_pipeline(text)
        return self._run(pipeline, ThreadJobHost(pipeline))

    def _run(self, pipeline: Pipeline, host: object) -> JobsOutcome:
        outlet = outlet_for(self.run, Redactor(self.secrets.values.values()), [self.seen])
        executor = (
            self.executor if isinstance(self.executor, FakeExecutor) else self.executor(outlet)
        )
        try:
            return JobRunner(
                pipeline=pipeline,
                executor=executor,
                outlet=outlet,
                secrets=self.secrets,
                capture_limit=1024 * 1024,
                push_outputs=PUSH,
                jobs=self.jobs,
                host=host,  # type: ignore[arg-type]
            ).run_all()
        finally:
            outlet.close()

    def state_on_disk(self, job_id: str) -> JobState:
        return read_record(self.run.path / "jobs" / job_id / "state.yml", JobState)


@pytest.fixture
def runner(run: RunDir) -> Iterator[Runner]:
    yield Runner(run, FakeExecutor())


def statuses(outcome: JobsOutcome) -> dict[str, str]:
    return {job_id: state.status.value for job_id, state in outcome.states.items()}


def test_all_jobs_succeed_in_order_and_the_run_does_not_fail(runner: Runner) -> None:
    outcome = runner(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def a(rt):
            rt.sh(["echo", "a"])

        @job(inputs=["a"])
        def b(rt):
            rt.sh("echo b")
        """
    )
    assert statuses(outcome) == {"a": "success", "b": "success"}
    assert not outcome.failed
    assert isinstance(runner.executor, FakeExecutor)
    assert [c.argv for c in runner.executor.commands] == [("echo", "a"), ("sh", "-c", "echo b")]
    state = runner.state_on_disk("b")
    assert state.status == JobStatus.success
    assert state.started_at is not None and state.finished_at is not None
    assert state.duration_s is not None and state.duration_s >= 0


def test_failure_skips_dependents_only_and_unrelated_jobs_run(runner: Runner) -> None:
    outcome = runner(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def build(rt):
            raise RuntimeError("compiler exploded")

        @job(inputs=["build"])
        def test(rt):
            pass

        @job(inputs=["test"])
        def deploy(rt):
            pass

        @job(inputs=["quire/push"])
        def lint(rt):
            pass

        @job(inputs=["lint"])
        def docs(rt):
            pass
        """
    )
    assert statuses(outcome) == {
        "build": "failed",
        "test": "skipped",
        "deploy": "skipped",
        "lint": "success",
        "docs": "success",
    }
    assert outcome.failed
    assert outcome.states["test"].skip_reason == "input 'build' failed"
    assert outcome.states["deploy"].skip_reason == "input 'test' skipped"
    assert runner.state_on_disk("deploy").status == JobStatus.skipped


def test_job_with_one_failed_input_among_several_is_skipped(runner: Runner) -> None:
    outcome = runner(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def good(rt):
            pass

        @job(inputs=["quire/push"])
        def bad(rt):
            raise ValueError("nope")

        @job(inputs=["good", "bad"])
        def both(rt):
            pass
        """
    )
    assert statuses(outcome) == {"good": "success", "bad": "failed", "both": "skipped"}


def test_skip_marks_the_job_skipped_with_its_reason_and_skips_dependents(runner: Runner) -> None:
    outcome = runner(
        """
        from quire.ci import job, Skip

        @job(inputs=["quire/push"])
        def release(rt):
            raise Skip("not a tag")

        @job(inputs=["release"])
        def publish(rt):
            raise AssertionError("must not run")

        @job(inputs=["quire/push"])
        def lint(rt):
            pass
        """
    )
    assert statuses(outcome) == {"release": "skipped", "publish": "skipped", "lint": "success"}
    assert outcome.states["release"].skip_reason == "not a tag"
    assert outcome.states["release"].error is None
    assert outcome.states["publish"].skip_reason == "input 'release' skipped"
    assert not outcome.failed


def test_outputs_flow_to_direct_and_transitive_dependents(runner: Runner) -> None:
    outcome = runner(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def version(rt):
            return {"version": "1.2.3", "parts": [1, 2, 3]}

        @job(inputs=["version"])
        def build(rt):
            v = rt.jobs("version")["version"]
            return {"artifact": f"pkg-{v}.tar.gz"}

        @job(inputs=["build"])
        def upload(rt):
            return {
                "uploaded": rt.jobs("build")["artifact"],
                "parts": rt.jobs("version")["parts"],
                "sha": rt.jobs("quire/push")["sha"],
            }
        """
    )
    assert statuses(outcome) == {"version": "success", "build": "success", "upload": "success"}
    assert outcome.states["upload"].outputs == {
        "uploaded": "pkg-1.2.3.tar.gz",
        "parts": [1, 2, 3],
        "sha": "a" * 40,
    }
    assert runner.state_on_disk("version").outputs == {"version": "1.2.3", "parts": [1, 2, 3]}


def test_non_json_outputs_fail_the_job_and_skip_dependents(runner: Runner) -> None:
    outcome = runner(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def make(rt):
            return {"when": object()}

        @job(inputs=["make"])
        def use(rt):
            pass
        """
    )
    assert statuses(outcome) == {"make": "failed", "use": "skipped"}
    error = outcome.states["make"].error or ""
    assert "job 'make' returned outputs that are not JSON" in error
    assert outcome.states["make"].outputs == {}


def test_returning_something_other_than_a_mapping_fails_the_job(runner: Runner) -> None:
    outcome = runner(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def listy(rt):
            return ["not", "a", "dict"]
        """
    )
    assert statuses(outcome) == {"listy": "failed"}
    assert "job 'listy' returned list; return None or a dict" in (
        outcome.states["listy"].error or ""
    )


def test_failed_job_message_carries_its_ci_line(runner: Runner) -> None:
    outcome = runner(
        """
        from quire.ci import job

        def check(value):
            if value != 2:
                raise RuntimeError(f"expected 2, got {value}")

        @job(inputs=["quire/push"])
        def unit(rt):
            check(3)
        """
    )
    expected = "RuntimeError: expected 2, got 3 (.quire/ci.py:5)"
    assert outcome.states["unit"].error == expected
    assert runner.state_on_disk("unit").error == expected
    assert runner.state_on_disk("unit").status == JobStatus.failed


def test_quire_errors_are_recorded_as_their_message(runner: Runner) -> None:
    runner.executor = FakeExecutor(exit=4)
    outcome = runner(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def strict(rt):
            rt.sh("make test", check=True)
        """
    )
    assert outcome.states["strict"].error == "command `make test` exited 4"


def test_run_fails_if_any_job_failed(runner: Runner) -> None:
    outcome = runner(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def ok(rt):
            pass

        @job(inputs=["quire/push"])
        def bad(rt):
            raise KeyError("missing")
        """
    )
    assert statuses(outcome) == {"ok": "success", "bad": "failed"}
    assert outcome.failed
    assert outcome.fatal is None


def test_secret_in_an_error_message_is_masked_wherever_it_is_shown_or_stored(run: RunDir) -> None:
    runner = Runner(run, FakeExecutor(), Secrets(values={"token": "s3cr3t-value"}))
    runner(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def leak(rt):
            raise RuntimeError("token was " + rt.secret("token"))
        """
    )
    shown = [event.state.error or "" for event in runner.seen.of(JobFinished)]
    assert shown and "token was ***" in shown[0]
    assert "s3cr3t-value" not in shown[0]
    assert "token was ***" in (runner.state_on_disk("leak").error or "")
    assert "s3cr3t-value" not in (run.path / "jobs" / "leak" / "state.yml").read_text()


def test_run_log_records_job_start_and_end(runner: Runner) -> None:
    runner(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def a(rt):
            raise RuntimeError("x")

        @job(inputs=["a"])
        def b(rt):
            pass
        """
    )
    events = [
        (e["event"], e.get("job"), e.get("status"))
        for e in LogReader(runner.run.path / "log.jsonl")
    ]
    assert events == [
        ("job-start", "a", None),
        ("job-end", "a", "failed"),
        ("job-end", "b", "skipped"),
    ]


def test_job_commands_go_to_the_jobs_own_log(run: RunDir, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    runner = Runner(run, lambda outlet: host_executor(workspace, outlet))
    outcome = runner(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def hello(rt):
            out = rt.sh(["echo", "hello from the job"])
            return {"said": out.stdout.strip()}
        """
    )
    assert outcome.states["hello"].outputs == {"said": "hello from the job"}
    events = list(LogReader(run.path / "jobs" / "hello" / "log.jsonl"))
    assert [e["event"] for e in events] == ["sh-start", "stdout", "sh-exit"]
    assert events[1]["data"] == "hello from the job\n"


def test_a_keyboard_interrupt_raised_by_a_jobs_python_fails_that_job_only(
    runner: Runner,
) -> None:
    """Only a signal quire receives interrupts the run; a job's own exceptions are its own."""
    outcome = runner(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def long(rt):
            raise KeyboardInterrupt("from the job")

        @job(inputs=["quire/push"])
        def other(rt):
            pass
        """
    )
    assert statuses(outcome) == {"long": "failed", "other": "success"}
    state = runner.state_on_disk("long")
    assert state.error is not None and state.error.startswith("KeyboardInterrupt: from the job")


def test_sys_exit_in_a_job_fails_only_that_job(runner: Runner) -> None:
    try:
        outcome = runner(
            """
            from quire.ci import job
            import sys

            @job(inputs=["quire/push"])
            def quits(rt):
                sys.exit(3)

            @job(inputs=["quire/push"])
            def other(rt):
                pass
            """
        )
    except SystemExit:
        pytest.fail("SystemExit from a job escaped the job runner")
    assert statuses(outcome) == {"quits": "failed", "other": "success"}
    assert "SystemExit" in (outcome.states["quits"].error or "")


def test_a_jobs_print_and_rt_log_land_in_its_log_in_order_with_its_commands(
    run: RunDir,
) -> None:
    runner = Runner(run, FakeExecutor(stdout=b"from the command\n"), real_host=True)
    runner(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def talk(rt):
            print("before", end="")
            print(" the command")
            rt.sh(["true"])
            rt.log("a message")
            print("after")
        """
    )
    lines = list(LogReader(run.path / "jobs" / "talk" / "log.jsonl"))
    shown = [
        (line["event"], line.get("data") or line.get("text") or line.get("cmd")) for line in lines
    ]
    assert shown == [
        ("stdout", "before"),
        ("stdout", " the command"),
        ("stdout", "\n"),
        ("sh-start", "true"),
        ("stdout", "from the command\n"),
        ("sh-exit", None),
        ("message", "a message"),
        ("stdout", "after"),
        ("stdout", "\n"),
    ]


def test_outputs_past_the_limit_fail_the_job_with_a_clear_message(run: RunDir) -> None:
    runner = Runner(run, FakeExecutor())
    outcome = runner(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def big(rt):
            return {"blob": "x" * (2 * 1024 * 1024)}

        @job(inputs=["big"])
        def reader(rt):
            pass
        """
    )
    assert statuses(outcome) == {"big": "failed", "reader": "skipped"}
    state = runner.state_on_disk("big")
    assert "2,097,164 bytes of outputs, more than the 1,048,576 allowed" in (state.error or "")
    assert "outputs_limit" in (state.error or "")
    assert state.outputs == {}
    assert (run.path / "jobs" / "big" / "state.yml").stat().st_size < 4096


# --- side by side: slots and inputs -----------------------------------------------------------


class Stage:
    """What the jobs of a side-by-side test do, seen from the test: who runs, in what order.

    Jobs reach it as `tests.unit.test_jobs.STAGE`; each wait is for a condition, and the
    short windows only give a wrong scheduler its chance to show itself."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.running: set[str] = set()
        self.most = 0
        self.events: list[str] = []

    def enter(self, job: str) -> None:
        with self.cond:
            self.running.add(job)
            self.most = max(self.most, len(self.running))
            self.events.append(f"start {job}")
            self.cond.notify_all()

    def leave(self, job: str) -> None:
        with self.cond:
            self.running.discard(job)
            self.events.append(f"end {job}")
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], within: float) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, within)


STAGE = Stage()


@pytest.fixture
def stage() -> Iterator[Stage]:
    global STAGE
    STAGE = Stage()
    yield STAGE


SLOTS = """
import tests.unit.test_jobs as t
from quire.ci import job

def busy(name):
    t.STAGE.enter(name)
    t.STAGE.wait_for(lambda: len(t.STAGE.running) >= 2, 30)  # two slots fill at once
    t.STAGE.wait_for(lambda: len(t.STAGE.running) >= 3, 0.3)  # a third must never come
    t.STAGE.leave(name)

@job(inputs=["quire/push"])
def a(rt): busy("a")

@job(inputs=["quire/push"])
def b(rt): busy("b")

@job(inputs=["quire/push"])
def c(rt): busy("c")

@job(inputs=["quire/push"])
def d(rt): busy("d")
"""


def test_no_more_jobs_run_at_once_than_there_are_slots(runner: Runner, stage: Stage) -> None:
    runner.jobs = 2
    outcome = runner(SLOTS)
    assert statuses(outcome) == dict.fromkeys("abcd", "success")
    assert stage.most == 2


READY_ORDER = """
import tests.unit.test_jobs as t
from quire.ci import job

@job(inputs=["quire/push"])
def a(rt):
    t.STAGE.enter("a")
    t.STAGE.leave("a")

@job(inputs=["quire/push"])
def b(rt):
    t.STAGE.enter("b")
    t.STAGE.wait_for(lambda: "start c" in t.STAGE.events, 10)  # c takes a's slot
    t.STAGE.leave("b")

@job(inputs=["a"])
def c(rt):
    t.STAGE.enter("c")
    t.STAGE.leave("c")

@job(inputs=["quire/push"])
def d(rt):
    t.STAGE.enter("d")
    t.STAGE.leave("d")
"""


def test_a_freed_slot_goes_to_the_first_job_ready_in_declaration_order(
    runner: Runner, stage: Stage
) -> None:
    """Nothing is handed to the pool before a slot is free: `d` was ready first, but once
    `a` ends, `c` (declared before it) is ready too and takes the slot."""
    runner.jobs = 2
    outcome = runner(READY_ORDER)
    assert statuses(outcome) == dict.fromkeys("abcd", "success")
    starts = [event for event in stage.events if event.startswith("start")]
    assert starts.index("start c") < starts.index("start d")


ALL_INPUTS = """
import tests.unit.test_jobs as t
from quire.ci import job

@job(inputs=["quire/push"])
def fast(rt):
    t.STAGE.enter("fast")
    t.STAGE.leave("fast")

@job(inputs=["quire/push"])
def slow(rt):
    t.STAGE.enter("slow")
    t.STAGE.wait_for(lambda: "end fast" in t.STAGE.events, 30)
    t.STAGE.wait_for(lambda: "start both" in t.STAGE.events, 0.3)  # too early if it comes
    t.STAGE.leave("slow")

@job(inputs=["fast", "slow"])
def both(rt):
    t.STAGE.enter("both")
    t.STAGE.leave("both")
"""


def test_a_job_starts_only_when_all_of_its_inputs_are_done(runner: Runner, stage: Stage) -> None:
    runner.jobs = 3
    outcome = runner(ALL_INPUTS)
    assert statuses(outcome) == {"fast": "success", "slow": "success", "both": "success"}
    assert stage.events.index("end slow") < stage.events.index("start both")


@dataclass
class DyingExecutor(FakeExecutor):
    """The run's container dies at the first command."""

    def execute(self, command: Command, on_output: OutputHandler) -> ExecResult:
        from quire.errors import ContainerDied

        raise ContainerDied("the run's container abc123 died: it no longer exists")


def test_a_dead_container_fails_the_job_and_no_later_job_runs_whatever_the_job_does(
    run: RunDir,
) -> None:
    runner = Runner(run, DyingExecutor())
    outcome = runner(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def first(rt):
            try:
                rt.sh(["true"])
            except Exception:
                pass  # the job's Python cannot make the run go on

        @job(inputs=["quire/push"])
        def second(rt):
            rt.sh(["true"])
        """
    )
    assert statuses(outcome) == {"first": "failed", "second": "skipped"}
    assert "container abc123 died" in (outcome.states["first"].error or "")
    assert outcome.fatal is not None
    assert (outcome.states["second"].skip_reason or "").startswith("not run: the run's container")
