"""Reconcile ends the host processes a dead runner recorded (processes.yml): a job's
command must not run on after its runner was killed (issue 19: a dropped call)."""

from __future__ import annotations

import signal
import subprocess

from quire.ci.store.liveness import process_start_ticks
from quire.ci.store.reconcile import Action, reconcile
from quire.ci.store.records import (
    ExecutorKind,
    HostProcesses,
    RecordedProcess,
    write_record,
)
from tests.unit.test_reconcile import make_run


def test_an_orphaned_runs_recorded_processes_are_killed() -> None:
    # A job's command: a session (and process group) of its own, as the host executor
    # starts them.
    command = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        runner = subprocess.Popen(["true"])
        runner.wait()  # the runner, killed: its pid is free
        run = make_run(pid=runner.pid, executor=ExecutorKind.host)
        start = process_start_ticks(command.pid)
        assert start is not None
        write_record(
            run.path / "processes.yml",
            HostProcesses(processes=[RecordedProcess(pid=command.pid, start=start)]),
        )
        actions = reconcile(containers=False)
        label = f"proj/{run.run_id}"
        assert Action("processes-killed", label, f"pids {command.pid}") in actions
        assert Action("orphaned", label, "its runner is gone") in actions
        assert command.wait(timeout=10) == -signal.SIGKILL
    finally:
        command.kill()
        command.wait()
