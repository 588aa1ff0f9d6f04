"""Helpers shared by the unit and integration suites: throwaway git repos and PATH shims."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

GIT_ENV = {
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_CONFIG_SYSTEM": "/dev/null",
    "GIT_AUTHOR_NAME": "quire tests",
    "GIT_AUTHOR_EMAIL": "tests@quire.invalid",
    "GIT_COMMITTER_NAME": "quire tests",
    "GIT_COMMITTER_EMAIL": "tests@quire.invalid",
}


# Three jobs, `tests` needing `lint`, `docs` on its own: for choosing jobs to run.
LINT_TESTS_DOCS = """from quire.ci import job

@job(inputs=["quire/push"])
def lint(rt):
    rt.sh("echo lint ran")

@job(inputs=["lint"])
def tests(rt):
    rt.sh("echo tests ran")

@job(inputs=["quire/push"])
def docs(rt):
    rt.sh("echo docs ran")
"""


def git(repo: Path, *args: str) -> str:
    """Run real git in `repo`; returns stdout."""
    env = {**os.environ, **GIT_ENV}
    done = subprocess.run(
        ["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def make_repo(path: Path, files: dict[str, str | bytes], *, bare_clone: bool = False) -> str:
    """A repository at `path` with `files` committed on main; returns the commit sha.

    With `bare_clone`, also clones it bare to `<path>.git`.
    """
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    commit(path, files, "initial")
    if bare_clone:
        git(path.parent, "clone", "-q", "--bare", str(path), str(path) + ".git")
    return git(path, "rev-parse", "HEAD")


def commit(repo: Path, files: dict[str, str | bytes], message: str = "change") -> str:
    """Write `files` (text is dedented) and commit them; returns the new sha."""
    for name, content in files.items():
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(textwrap.dedent(content))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def write_shim(bin_dir: Path, name: str, body: str) -> Path:
    """An executable `name` in `bin_dir` running the sh `body` (it may use $@)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / name
    shim.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    shim.chmod(0o755)
    return shim


class Collected:
    """A subscriber of a run's outlet that keeps every event it gets, in order."""

    def __init__(self) -> None:
        from quire.ci.events import Event

        self.events: list[Event] = []
        self.closed = False

    def handle(self, event: object) -> None:
        self.events.append(event)  # type: ignore[arg-type]

    def close(self) -> None:
        self.closed = True

    def of(self, kind: type[T]) -> list[T]:
        """The events of one type."""
        return [event for event in self.events if isinstance(event, kind)]

    def output(self, job: str | None = None, stream: str = "stdout") -> bytes:
        """The output bytes of `job` on `stream`, joined."""
        from quire.ci.events import Output

        return b"".join(e.data for e in self.of(Output) if e.job == job and e.stream == stream)


def host_executor(workspace: Path, outlet: object, *, jobs: int = 1) -> object:
    """A HostExecutor for `workspace` whose events go to `outlet` (a RunOutlet), with
    `jobs` side by side."""
    from quire.ci.run.executors.base import ExecutorSetup
    from quire.ci.run.executors.host import HostExecutor
    from quire.ci.store.records import ExecutorKind
    from quire.config import DockerSettings

    setup = ExecutorSetup(
        kind=ExecutorKind.host,
        workspace=workspace,
        run_id="test-run",
        repo="test",
        store_label="/nonexistent",
        docker=DockerSettings(),
        outlet=outlet,  # type: ignore[arg-type]
        jobs=jobs,
    )
    return HostExecutor(setup)


def terminate(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Stop a long-running quire (worker, warm server) as a supervisor does: SIGTERM, then
    SIGKILL if it has not exited within `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


ROOT = Path(__file__).resolve().parents[1]


def fresh_python(program: str, tmp_path: Path, **popen: object) -> subprocess.CompletedProcess[str]:
    """`program` in a python process of its own that imports this checkout's quire: for
    what is per process (pydantic's caches, how a process ends). Its stdout is buffered,
    as a pipe's is by default (PYTHONUNBUFFERED removed)."""
    script = tmp_path / "program.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n{textwrap.dedent(program)}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    options: dict[str, object] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    options.update({"timeout": 60, "env": env, "text": True, **popen})
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, **options)  # type: ignore[call-overload, no-any-return]


class ThreadJobHost:
    """A fake job host over the real protocol: each job's function runs on a thread of the
    test's own process, talking to quire through a socketpair exactly as a job process
    does, so a test's jobs can meet the test's own objects. No output capture: a test that
    needs `print()` in a job uses the real job host."""

    def __init__(self, pipeline: object) -> None:
        import threading

        self.pipeline = pipeline
        self.threads: dict[str, threading.Thread] = {}

    def start_job(self, job_id: str) -> object:
        import socket
        import threading

        from quire.ci.run.jobhost import JobProcess
        from quire.jobhost.main import run_job
        from quire.jobhost.protocol import Channel, ProtocolError

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

        def job() -> None:
            channel = Channel(theirs)
            try:
                run_job(self.pipeline, job_id, channel, capture_output=False)  # type: ignore[arg-type]
            except ProtocolError:
                pass  # quire ended the job first
            finally:
                channel.close()

        thread = threading.Thread(target=job, name=f"job-{job_id}", daemon=True)
        self.threads[job_id] = thread
        thread.start()
        return JobProcess(self, job_id, Channel(ours))  # type: ignore[arg-type]

    def end_job(self, job_id: str, grace: float = 5.0) -> int | None:
        thread = self.threads.pop(job_id, None)
        if thread is not None:
            thread.join(grace)
        return 0


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"
