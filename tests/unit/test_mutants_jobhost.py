"""The job host against single-point bugs the rest of the unit suite let through (issue
19): a job started without its socket, a job host that will not exit, and how the job
host ends a job's processes (SIGTERM first; daemons it adopted too)."""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path

import pytest

from quire.ci.run.jobhost import JobHost, JobHostFailed
from quire.jobhost.protocol import Channel
from quire.tools import process
from tests.unit.test_jobhost import alive, statuses
from tests.unit.test_jobhost import run as run_in_job_host


def test_a_job_started_without_its_socket_is_the_job_hosts_failure() -> None:
    ours, theirs = socket.socketpair()
    fake = Channel(theirs)
    fake.send({"t": "started", "job": "a", "pid": 1})  # no descriptor passed with it
    host = JobHost(None, Channel(ours), 0)
    try:
        with pytest.raises(JobHostFailed, match="did not start job 'a'"):
            host.start_job("a")
    finally:
        host.close()
        fake.close()


def test_a_job_host_that_does_not_exit_when_quire_closes_it_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quire.ci.run import jobhost

    monkeypatch.setattr(jobhost, "TERM_GRACE_S", 0.1)
    ours, theirs = socket.socketpair()
    child = process.start(["sleep", "300"], output=tmp_path / "out.log")  # deaf to EOF
    host = JobHost(child, Channel(ours), child.pid)
    closing = threading.Thread(target=host.close, daemon=True)
    try:
        closing.start()
        closing.join(timeout=30)
        assert not closing.is_alive(), "close() waits for a job host that never exits"
        assert child.poll() is not None
    finally:
        child.kill_group()
        child.wait()
        theirs.close()


def test_a_daemon_a_jobs_python_started_ends_with_the_job(tmp_path: Path) -> None:
    """A process in a session of its own is out of the job's process group; once the job
    process exits it is the job host's (its subreaper), which ends it with the job."""
    pid_file = tmp_path / "daemon.pid"
    outcome, _ = run_in_job_host(
        f"""
        import subprocess
        from quire.ci import job

        @job(inputs=["quire/push"])
        def daemon(rt):
            proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
            open({str(pid_file)!r}, "w").write(str(proc.pid))
        """
    )
    pid = int(pid_file.read_text())
    try:
        assert statuses(outcome) == {"daemon": "success"}
        assert not alive(pid)  # ended (and collected) before the job's end was answered
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_job_past_its_timeout_gets_sigterm_before_sigkill(tmp_path: Path) -> None:
    termed = tmp_path / "termed"
    outcome, _ = run_in_job_host(
        f"""
        import os, signal, time
        from quire.ci import job

        def on_term(signum, frame):
            open({str(termed)!r}, "w").write("cleaned up")
            os._exit(1)

        @job(inputs=["quire/push"], timeout=0.3)
        def slow(rt):
            signal.signal(signal.SIGTERM, on_term)
            while True:
                time.sleep(0.05)
        """
    )
    assert statuses(outcome) == {"slow": "failed"}
    assert termed.read_text() == "cleaned up"
