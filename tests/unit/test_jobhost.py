"""The job host for real: ci.py and every job's Python in a process of its own, over the real
protocol; what a job's Python does to its process costs at most its own job."""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quire.ci.run.jobhost import JobHost, JobHostFailed
from quire.ci.run.jobs import JobRunner, JobsOutcome
from quire.ci.run.outlet import RunOutlet
from quire.ci.run.redact import Redactor
from quire.config import Secrets
from quire.errors import PipelineError
from quire.jobhost.protocol import Channel, pack
from tests.helpers import Collected, alive
from tests.unit.test_jobs import PUSH, FakeExecutor

SECRET = "s3cret-value"


def run(
    source: str, *, executor: FakeExecutor | None = None, secrets: dict[str, str] | None = None
) -> tuple[JobsOutcome, Collected]:
    """Load `source` as ci.py in a real job host and run its jobs; what the outlet saw."""
    seen = Collected()
    outlet = RunOutlet(Redactor([SECRET]), [seen])
    host = JobHost.start()
    try:
        pipeline = host.load({".quire/ci.py": textwrap.dedent(source).lstrip("\n").encode()})
        outcome = JobRunner(
            pipeline=pipeline,
            executor=executor or FakeExecutor(),
            outlet=outlet,
            secrets=Secrets(values=dict(secrets or {})),
            capture_limit=1024 * 1024,
            push_outputs=PUSH,
            host=host,
            term_grace=0.5,  # the stubborn job's SIGKILL comes soon
        ).run_all()
    finally:
        host.close()
        outlet.close()
    return outcome, seen


def statuses(outcome: JobsOutcome) -> dict[str, str]:
    return {job_id: state.status.value for job_id, state in outcome.states.items()}


def error_of(outcome: JobsOutcome, job: str) -> str:
    return outcome.states[job].error or ""


def wait_gone(pid: int, within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.01)
    return False


# --- loading --------------------------------------------------------------------------------------


def test_loading_describes_the_jobs_and_caches_as_data() -> None:
    host = JobHost.start()
    try:
        pipeline = host.load(
            {
                ".quire/ci.py": b"from quire.ci import job, cache\n"
                b"from helpers import NAME\n"
                b'cache("pip", "/root/.cache/pip")\n'
                b'@job(inputs=["quire/push"], timeout=30)\n'
                b"def a(rt): pass\n"
                b"@job(NAME, inputs=['a'])\n"
                b"def b(rt): pass\n",
                ".quire/helpers.py": b"NAME = 'named-b'\n",
            }
        )
    finally:
        host.close()
    assert pipeline.order == ["a", "named-b"]
    assert pipeline.jobs["a"].timeout == 30 and pipeline.jobs["a"].line == 4
    assert pipeline.jobs["named-b"].inputs == ("a",)
    assert pipeline.jobs["a"].func is None  # the function stays in the job host
    assert pipeline.caches["pip"].path == "/root/.cache/pip"


def test_an_invalid_pipeline_is_every_problem_with_its_line() -> None:
    host = JobHost.start()
    try:
        with pytest.raises(PipelineError) as caught:
            source = b"from quire.ci import job\n@job(inputs=['nope'])\ndef a(rt): pass\n"
            host.load({".quire/ci.py": source})
    finally:
        host.close()
    assert ".quire/ci.py:2: job 'a' has unknown input 'nope'" in str(caught.value)


def test_ci_py_that_exits_at_load_is_a_pipeline_error_not_the_end_of_quire() -> None:
    host = JobHost.start()
    try:
        with pytest.raises((PipelineError, JobHostFailed)) as caught:
            host.load({".quire/ci.py": b"import os\nos._exit(0)\n"})
    finally:
        host.close()
    assert "job host ended" in str(caught.value) or "while loading" in str(caught.value)


# --- a job's own output ---------------------------------------------------------------------------


def test_print_stderr_bytes_and_logging_are_the_jobs_output_masked() -> None:
    outcome, seen = run(
        f"""
        import logging, sys
        from quire.ci import job
        logging.basicConfig(stream=sys.stderr, format="%(message)s")

        @job(inputs=["quire/push"])
        def build(rt):
            print("token:", rt.secret("token"))
            print("no newline", end="")
            sys.stdout.buffer.write(b"\\xff raw\\n")
            print("err words", file=sys.stderr)
            logging.warning("logged {SECRET}")
        """,
        secrets={"token": SECRET},
    )
    assert statuses(outcome) == {"build": "success"}
    assert seen.output("build") == b"token: ***\nno newline\xff raw\n"
    assert seen.output("build", "stderr") == b"err words\nlogged ***\n"


# --- what a job's Python does to its process ------------------------------------------------------


def test_os_exit_in_a_job_fails_that_job_and_the_others_run() -> None:
    outcome, _ = run(
        """
        import os
        from quire.ci import job

        @job(inputs=["quire/push"])
        def quits(rt):
            os._exit(0)

        @job(inputs=["quits"])
        def after(rt):
            pass

        @job(inputs=["quire/push"])
        def other(rt):
            pass
        """
    )
    assert statuses(outcome) == {"quits": "failed", "after": "skipped", "other": "success"}
    assert "exited with status 0 before the job ended" in error_of(outcome, "quits")


def test_a_crash_of_the_interpreter_fails_that_job_naming_the_signal() -> None:
    outcome, _ = run(
        """
        import ctypes
        from quire.ci import job

        @job(inputs=["quire/push"])
        def crash(rt):
            ctypes.string_at(0)
        """
    )
    assert statuses(outcome) == {"crash": "failed"}
    assert "killed by SIGSEGV" in error_of(outcome, "crash")


def test_a_fork_in_a_job_cannot_speak_for_it_and_ends_with_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "forked.pid"
    outcome, seen = run(
        f"""
        import os, time
        from quire.ci import job

        @job(inputs=["quire/push"])
        def forks(rt):
            if os.fork() == 0:
                open({str(pid_file)!r}, "w").write(str(os.getpid()))
                print("from the fork")
                time.sleep(300)
            while not os.path.exists({str(pid_file)!r}):
                time.sleep(0.01)
            rt.sh(["parent-only"])
            return {{"who": "parent"}}
        """
    )
    assert statuses(outcome) == {"forks": "success"}
    assert outcome.states["forks"].outputs == {"who": "parent"}
    assert b"from the fork" not in seen.output("forks")
    assert wait_gone(int(pid_file.read_text()))


def test_a_non_daemon_thread_and_what_it_started_end_with_the_job(tmp_path: Path) -> None:
    pid_file = tmp_path / "thread.pid"
    outcome, _ = run(
        f"""
        import subprocess, threading, time
        from quire.ci import job

        def linger():
            proc = subprocess.Popen(["sleep", "300"])
            open({str(pid_file)!r}, "w").write(str(proc.pid))
            time.sleep(300)

        @job(inputs=["quire/push"])
        def threads(rt):
            threading.Thread(target=linger).start()
            while not __import__("os").path.exists({str(pid_file)!r}):
                time.sleep(0.01)
        """
    )
    assert statuses(outcome) == {"threads": "success"}
    assert wait_gone(int(pid_file.read_text()))


def test_a_job_that_ignores_signals_is_killed_when_its_timeout_passes() -> None:
    outcome, _ = run(
        """
        import signal, time
        from quire.ci import job

        @job(inputs=["quire/push"], timeout=0.5)
        def stubborn(rt):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            while True:
                time.sleep(1)
        """
    )
    assert statuses(outcome) == {"stubborn": "failed"}
    assert "ran past its timeout of 0.5s" in error_of(outcome, "stubborn")


# --- the protocol ---------------------------------------------------------------------------------


class _Scripted:
    """A job host stand-in that sends what a test scripts on the job's socket."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        self.ended: list[str] = []

    def start_job(self, job_id: str) -> object:
        import socket

        from quire.ci.run.jobhost import JobProcess

        ours, theirs = socket.socketpair()
        for line in self.lines:
            theirs.sendall(line)
        theirs.close()
        return JobProcess(self, job_id, Channel(ours))  # type: ignore[arg-type]

    def end_job(self, job_id: str, grace: float = 5.0) -> int | None:
        self.ended.append(job_id)
        return 0


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([b"not json\n"], "not a JSON line"),
        ([b'{"t": "sh", "cmd": 7}\n'], "field 'cmd'"),
        ([b'{"t": "teleport"}\n'], "unknown message type 'teleport'"),
        ([b'{"t": "out", "stream": "stdin", "data": ""}\n'], "no stream 'stdin'"),
        ([b'{"t": "done", "outputs": {}'], "in the middle of a message"),
        ([], "before the job ended"),
    ],
)
def test_a_malformed_message_or_a_silent_end_fails_the_job_never_quire(
    lines: list[bytes], expected: str
) -> None:
    from quire.ci.pipeline import load_pipeline

    pipeline = load_pipeline(
        "from quire.ci import job\n@job(inputs=['quire/push'])\ndef a(rt): pass\n"
    )
    seen = Collected()
    outlet = RunOutlet(Redactor(), [seen])
    host = _Scripted(lines)
    outcome = JobRunner(
        pipeline=pipeline,
        executor=FakeExecutor(),
        outlet=outlet,
        secrets=Secrets(),
        capture_limit=1024,
        push_outputs=PUSH,
        host=host,  # type: ignore[arg-type]
    ).run_all()
    outlet.close()
    assert statuses(outcome) == {"a": "failed"}
    assert expected in error_of(outcome, "a")
    assert host.ended == ["a"]


def test_requests_are_answered_in_order_and_output_keeps_its_place() -> None:
    executor = FakeExecutor(stdout=b"from the command\n")
    outcome, seen = run(
        """
        from quire.ci import job

        @job(inputs=["quire/push"])
        def talk(rt):
            print("before")
            out = rt.sh(["anything"])
            print("after", out.exit, out.stdout.strip())
            return {"n": 1}

        @job(inputs=["talk"])
        def reads(rt):
            return {"got": rt.jobs("talk")["n"], "push": rt.jobs("quire/push")["branch"]}
        """,
        executor=executor,
    )
    assert seen.output("talk") == b"before\nfrom the command\nafter 0 from the command\n"
    assert outcome.states["reads"].outputs == {"got": 1, "push": "main"}
    assert [c.argv for c in executor.commands] == [("anything",)]


def test_the_job_host_is_gone_after_close() -> None:
    host = JobHost.start()
    pid = host.pid
    host.close()
    assert wait_gone(pid)


def test_pack_round_trips_every_byte() -> None:
    from quire.jobhost.protocol import unpack

    data = bytes(range(256))
    assert unpack(pack(data)) == data


@pytest.fixture(autouse=True)
def _no_leftover_children() -> Iterator[None]:
    yield
    # Every job host this test started has been closed and reaped.
    for pid in _children():
        os.kill(pid, 0)  # raises if a reaped pid were listed (it is not)
    assert not [p for p in _children() if _cmdline(p).endswith("quire.jobhost")]


def _children() -> list[int]:
    me = os.getpid()
    found: list[int] = []
    for tid in os.listdir(f"/proc/{me}/task"):
        with open(f"/proc/{me}/task/{tid}/children") as handle:
            found.extend(int(p) for p in handle.read().split())
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def test_what_programs_started_by_a_jobs_python_write_is_the_jobs_output_masked() -> None:
    outcome, seen = run(
        f"""
        import os, subprocess
        from quire.ci import job

        @job(inputs=["quire/push"])
        def direct(rt):
            subprocess.run(["echo", "from a child {SECRET}"], check=True)
            os.write(2, b"raw on fd 2\\n")
        """,
        secrets={"token": SECRET},
    )
    assert statuses(outcome) == {"direct": "success"}
    assert seen.output("direct") == b"from a child ***\n"
    assert seen.output("direct", "stderr") == b"raw on fd 2\n"


def test_a_job_dies_with_its_job_host(tmp_path: Path) -> None:
    """quire killed with -9 takes the job host with it (its death signal), and the job
    host takes its jobs: nothing runs on unsupervised."""
    import signal

    pid_file = tmp_path / "job.pid"
    host = JobHost.start()
    try:
        host.load(
            {
                ".quire/ci.py": textwrap.dedent(
                    f"""
                    import os, signal, time
                    from quire.ci import job

                    @job(inputs=["quire/push"])
                    def stubborn(rt):
                        signal.signal(signal.SIGTERM, signal.SIG_IGN)
                        open({str(pid_file)!r}, "w").write(str(os.getpid()))
                        time.sleep(300)
                    """
                ).encode()
            }
        )
        job = host.start_job("stubborn")
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(host.pid, signal.SIGKILL)
        assert wait_gone(int(pid_file.read_text()))
        job.channel.close()
    finally:
        host.close()


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        ('message["jobs"][0]["id"] = "../../escape"', "is not a valid name"),
        ('message["jobs"][0]["inputs"] = ["a"]', "no valid pipeline"),
        ('message["caches"] = [{"name": "c", "path": "relative", "line": 1}]', "cache 'c'"),
    ],
)
def test_a_pipeline_description_rewritten_by_ci_py_is_refused(tamper: str, expected: str) -> None:
    """ci.py runs in the job host and can rewrite what it says; quire checks it again (job
    ids become directory names in the store)."""
    source = f"""
import json
from quire.ci import job
from quire.jobhost import protocol

real = json.dumps

def dumps(message, **kwargs):
    if isinstance(message, dict) and message.get("t") == "pipeline":
        {tamper}
    return real(message, **kwargs)

protocol.json.dumps = dumps

@job(inputs=["quire/push"])
def a(rt):
    pass
"""
    host = JobHost.start()
    try:
        with pytest.raises(JobHostFailed) as caught:
            host.load({".quire/ci.py": source.encode()})
    finally:
        host.close()
    assert expected in str(caught.value)


def test_a_job_that_kills_its_job_host_ends_the_run_with_the_reason() -> None:
    outcome, _ = run(
        """
        import os, signal
        from quire.ci import job

        @job(inputs=["quire/push"])
        def assassin(rt):
            os.kill(os.getppid(), signal.SIGKILL)

        @job(inputs=["quire/push"])
        def later(rt):
            pass
        """
    )
    # The assassin itself may have said `done` before its own death signal came.
    assert statuses(outcome)["later"] == "failed"
    assert outcome.fatal is not None and "job host" in str(outcome.fatal)
    assert "job host" in error_of(outcome, "later")
