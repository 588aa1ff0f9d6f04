"""HostExecutor: each command is a local process with the workspace as its cwd.

Nothing a job starts outlives it. quire is the child subreaper of every
process a job starts (`quire.tools.proctree`), so background processes,
daemons and `setsid` children stay its descendants:

- a command ends when its own process exits; background children it left
  may go on serving the job's later commands (a test server started with
  `&`), and what they print is still the job's output (`quire.tools.drain`);
- when the job ends (or the run is interrupted, or fails) every process it
  started gets SIGTERM, then SIGKILL after a short grace;
- a command's timeout kills its process group and all its descendants;
- the processes running are recorded (processes.yml, with start times), so
  `quire ci reconcile` can end them when the runner itself was killed: a
  command once it has run for `RECORD_AFTER_S` (the collector's tick), and
  whatever a command left running when it ends. A command shorter than
  that is never written down: it costs no write, and a runner killed in
  that instant leaves a command that is about to end anyway.
"""

from __future__ import annotations

import os
import threading
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from quire.ci.events import Notice, ProcessesRunning
from quire.ci.run import artifacts
from quire.ci.run.artifacts import WorkspaceTree
from quire.ci.run.executors.base import Command, ExecResult, ExecutorSetup
from quire.errors import ProgramNotFound
from quire.tools import process, proctree
from quire.tools.drain import Drainer
from quire.tools.process import OutputHandler

# How long a job's processes get between SIGTERM and SIGKILL when it ends.
TERM_GRACE_S = 0.5
# How often orphans are collected, and how long a command runs before it is recorded.
RECORD_AFTER_S = 0.2


class HostExecutor:
    """Runs commands directly on this machine, in the workspace."""

    name = "host"

    def __init__(self, setup: ExecutorSetup) -> None:
        self.workspace: Path = setup.workspace
        self.outlet = setup.outlet
        self._spared = setup.spared
        self._drainer = Drainer()
        self._recorded: tuple[tuple[int, int], ...] = ()
        self._record_lock = threading.Lock()  # the collector records too
        self._in_flight = 0  # commands running now (jobs side by side: several)
        self._side_by_side = setup.jobs > 1
        self._mine = threading.local()  # the command pids of the job on this thread
        self._collecting = threading.Event()  # set: stop collecting orphans
        self._reaper: AbstractContextManager[bool] = nullcontext(False)

    def __enter__(self) -> HostExecutor:
        self._reaper = proctree.subreaper()
        self._reaper.__enter__()
        self._collecting.clear()
        threading.Thread(target=self._collect, name="quire-reaper", daemon=True).start()
        return self

    def _collect(self) -> None:
        """Orphans adopted as the subreaper are collected as they end, not left as zombies
        until the job does (a test suite leaves hundreds)."""
        while not self._collecting.wait(RECORD_AFTER_S):
            process.reap_orphans()
            if self._in_flight:  # a command has run a tick: reconcile must know of it
                self._record(self._running(), grow_only=True)

    def workspace_tree(self) -> AbstractContextManager[WorkspaceTree]:
        """The workspace itself: absolute links are read as this machine's paths."""
        return artifacts.host_tree(self.workspace)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._side_by_side = False  # the run is over: everything left goes
        try:
            self.end_job()
        finally:
            self._collecting.set()
            self._reaper.__exit__(None, None, None)

    def resolve(self, command: Command) -> str:
        """argv[0] as a shell in the workspace would find it; raises `ProgramNotFound`."""
        program = command.argv[0]
        if "/" in program:
            # Relative paths are against the workspace, never quire's own cwd.
            path = self.workspace / program
            if not os.access(path, os.X_OK) or path.is_dir():
                reason = "not executable" if path.exists() else "no such file"
                raise ProgramNotFound(f"{program}: {reason}")
            return str(path)
        return process.find_program(program, search_path=command.env.get("PATH"))

    def execute(self, command: Command, on_output: OutputHandler) -> ExecResult:
        """Run `command` in the workspace; a program that cannot start gives exit 127."""
        with self._record_lock:
            self._in_flight += 1
        try:
            program = self.resolve(command)
            result = process.stream(
                [program, *command.argv[1:]],
                on_output,
                cwd=self.workspace,
                env=command.env,
                timeout=command.timeout,
                leftovers=self._drainer,
                on_start=self._started,
            )
        except ProgramNotFound as exc:
            on_output("stderr", f"quire: {exc}\n".encode())
            return ExecResult(127, datetime.now(UTC), 0.0)
        finally:
            with self._record_lock:
                self._in_flight -= 1
            self._record(self._running(), grow_only=True)
        return ExecResult(result.exit, result.started_at, result.duration_s, result.timed_out)

    def _started(self, pid: int) -> None:
        if not hasattr(self._mine, "pids"):
            self._mine.pids = []
        self._mine.pids.append(pid)

    def end_job(self) -> None:
        """End every process the job started (TERM, then KILL) and read their last output.

        With jobs side by side only this job's own: its commands' process groups and
        descendants; processes that left both (setsid, double fork) end with the run.
        """
        pids: list[int] = getattr(self._mine, "pids", [])
        self._mine.pids = []
        if self._side_by_side:
            self._end_own(pids)
            return
        left = proctree.described(self._running())
        if left:
            ended = proctree.terminate(left, grace_s=TERM_GRACE_S)
            if ended:
                self.outlet.emit(
                    Notice(f"ended {len(ended)} process(es) the job left running: {_pids(ended)}")
                )
        self._drainer.close()
        self._record([])

    def _end_own(self, pids: list[int]) -> None:
        for pid in pids:
            proctree.kill_group_and_tree(pid)

    def abort(self) -> None:
        """Kill every process of the run at once (an interrupt with jobs side by side)."""
        for proc in proctree.described(self._running()):
            proctree.kill_group_and_tree(proc.pid)

    def _running(self) -> list[int]:
        """Every process of the run's jobs: quire's descendants but the spared ones' trees."""
        return proctree.descendants(os.getpid(), skip=self._spared)

    def _record(self, pids: list[int], *, grow_only: bool = False) -> None:
        """Record the processes running (processes.yml, for reconcile). `grow_only`: only
        when new ones appeared; a record that still lists ended ones is harmless (reconcile
        checks pid and start time) and saves a write per command."""
        running = tuple((p.pid, p.start) for p in proctree.described(pids) if p.start is not None)
        with self._record_lock:
            self._write(running, grow_only=grow_only)

    def _write(self, running: tuple[tuple[int, int], ...], *, grow_only: bool) -> None:
        if grow_only and set(running) <= set(self._recorded):
            return
        if running != self._recorded:
            self._recorded = running
            self.outlet.emit(ProcessesRunning(running))


def _pids(procs: list[proctree.Proc]) -> str:
    shown = ", ".join(str(proc.pid) for proc in procs[:8])
    return shown + (", ..." if len(procs) > 8 else "")
