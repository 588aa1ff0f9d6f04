"""What the host executor writes down for reconcile (processes.yml): long commands and
what commands leave running; never a write for a command shorter than a collector tick."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from quire.ci.events import ProcessesRunning
from quire.ci.run.executors import host
from quire.ci.run.executors.base import Command
from quire.ci.run.outlet import RunOutlet
from quire.ci.run.redact import Redactor
from tests.helpers import Collected, host_executor


def recorded(seen: Collected) -> list[set[int]]:
    return [{pid for pid, _ in event.processes} for event in seen.of(ProcessesRunning)]


def wait_for(predicate: object, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_fast_commands_are_never_recorded_by_their_own_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The collector's tick is pushed out of reach: what is left to write is what a command's
    # own end writes, and a command that ended leaves nothing running. (With the real tick a
    # loaded machine may catch a `true` in flight, which is right: that is the tick's job.)
    monkeypatch.setattr(host, "RECORD_AFTER_S", 3600.0)
    seen = Collected()
    outlet = RunOutlet(Redactor(), [seen])
    executor = host_executor(tmp_path, outlet)
    with executor:  # type: ignore[attr-defined]
        for _ in range(50):
            result = executor.execute(Command.from_user(["true"], {}, None), lambda s, d: None)  # type: ignore[attr-defined]
            assert result.exit == 0
        assert recorded(seen) == []  # fifty fast commands: not one write
    outlet.close()


def test_a_long_command_is_recorded_while_it_runs(tmp_path: Path) -> None:
    seen = Collected()
    outlet = RunOutlet(Redactor(), [seen])
    executor = host_executor(tmp_path, outlet)
    with executor:  # type: ignore[attr-defined]
        pid_file = tmp_path / "pid"
        long = Command.from_user(f"echo $$ > {pid_file}; exec sleep 300", {}, None)
        runner = threading.Thread(
            target=lambda: executor.execute(long, lambda s, d: None),  # type: ignore[attr-defined]
            daemon=True,
        )
        runner.start()
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
        pid = int(pid_file.read_text())
        wait_for(lambda: any(pid in pids for pids in recorded(seen)))
        os.kill(pid, signal.SIGKILL)
        runner.join(30)
        assert not runner.is_alive()
    outlet.close()


def test_what_a_command_leaves_running_is_recorded_when_it_ends(tmp_path: Path) -> None:
    seen = Collected()
    outlet = RunOutlet(Redactor(), [seen])
    executor = host_executor(tmp_path, outlet)
    pid_file = tmp_path / "bg"
    with executor:  # type: ignore[attr-defined]
        leave = Command.from_user(f"sleep 300 & echo $! > {pid_file}", {}, None)
        executor.execute(leave, lambda s, d: None)  # type: ignore[attr-defined]
        left = int(pid_file.read_text())
        assert any(left in pids for pids in recorded(seen))
        executor.end_job()  # type: ignore[attr-defined]
        assert recorded(seen)[-1] == set()  # ended with the job, and written down so
    outlet.close()
