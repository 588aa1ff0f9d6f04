"""The host executor's promises about the processes a job leaves, on real processes:
what a job started ends with the job (`--jobs 1`) or with the run (jobs side by side),
and zombies are collected, not reported as ended.

Written against single-point bugs the rest of the unit suite let through (issue 19).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from quire.ci.events import Notice
from quire.ci.run.executors.base import Command
from quire.ci.run.executors.host import HostExecutor
from quire.tools import proctree
from tests.helpers import host_executor

# A daemon in a session of its own (setsid): it leaves the command's process group, and
# once `sh` exits it is nobody's descendant but quire's (the subreaper). It prints its pid.
DAEMON = "setsid sleep 300 >/dev/null 2>&1 </dev/null & echo $!"


class Outlet:
    """The executor's outlet: keeps every event."""

    def __init__(self) -> None:
        self.events: list[object] = []

    def emit(self, event: object) -> object:
        self.events.append(event)
        return event


def executor(workspace: Path, outlet: Outlet, *, jobs: int = 1) -> HostExecutor:
    made = host_executor(workspace, outlet, jobs=jobs)
    assert isinstance(made, HostExecutor)
    return made


def wait_for(predicate: Callable[[], object], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def alive(proc: proctree.Proc) -> bool:
    return proctree.start_ticks(proc.pid) == proc.start and proctree.state(proc.pid) != "Z"


@contextmanager
def cleaned_up(procs: list[proctree.Proc]) -> Iterator[list[proctree.Proc]]:
    """Whatever a failing test leaves is killed (only if it is still the same process)."""
    try:
        yield procs
    finally:
        proctree.kill_recorded(procs)


def in_a_session_of_its_own(pid: int) -> bool:
    """Whether `pid` runs `sleep` and leads a session (setsid has done its work)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    name = stat[stat.index(b"(") + 1 : stat.rfind(b")")]
    session = int(stat[stat.rfind(b")") + 2 :].split()[3])
    return name == b"sleep" and session == pid


def start_daemon(host: HostExecutor, workspace: Path) -> proctree.Proc:
    out: list[bytes] = []
    result = host.execute(
        Command.from_user(["sh", "-c", DAEMON], {"PATH": os.environ["PATH"]}, None),
        lambda stream, data: out.append(data) if stream == "stdout" else None,
    )
    assert result.exit == 0
    pid = int(b"".join(out))
    wait_for(lambda: in_a_session_of_its_own(pid))  # `echo $!` may come before setsid runs
    (proc,) = proctree.described([pid])
    assert alive(proc)
    return proc


def test_a_daemon_a_job_left_is_ended_with_the_job(tmp_path: Path) -> None:
    outlet = Outlet()
    with cleaned_up([]) as left, executor(tmp_path, outlet) as host:
        daemon = start_daemon(host, tmp_path)
        left.append(daemon)
        host.end_job()
        # Ended before the next job could start, not only when the run ends.
        assert not alive(daemon)
        notices = [e.text for e in outlet.events if isinstance(e, Notice)]
        assert any(str(daemon.pid) in text for text in notices), notices


def test_with_jobs_side_by_side_a_daemon_a_job_left_ends_with_the_run(tmp_path: Path) -> None:
    outlet = Outlet()
    with cleaned_up([]) as left:
        with executor(tmp_path, outlet, jobs=2) as host:
            daemon = start_daemon(host, tmp_path)
            left.append(daemon)
            host.end_job()  # this job's own: its command's group and descendants
        assert not alive(daemon)


def test_terminate_collects_an_ended_child_without_reporting_it_as_ended() -> None:
    proc = subprocess.Popen(["true"])
    try:
        wait_for(lambda: proctree.state(proc.pid) == "Z")  # ended, not collected yet
        given = proctree.described([proc.pid])
        assert given  # a zombie still has its start time
        assert proctree.terminate(given, grace_s=0.2) == []  # nothing was signalled
        assert proctree.state(proc.pid) is None  # and it was collected
    finally:
        proc.wait()
