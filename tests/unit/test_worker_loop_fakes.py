"""Fakes for the worker's loop tests (test_worker_loop*.py); no tests here.

An in-memory queue with `Queue`'s rules, a clock the test moves, children whose exits and
signals the test controls, and a run store that fails when told (a full disk). `rig()` wires
a `Worker` to them.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quire.ci.store.runs import RunState
from quire.service.errors import QueueEntryNotFound
from quire.service.outcome import Outcome
from quire.service.queue import Entry, Owner
from quire.service.recovery import Records
from quire.service.worker import Worker, WorkerSettings

HOST = "here"
ME = Owner(pid=os.getpid(), start=None, host=HOST)
FAKE_PIDS = itertools.count(5_000_000)  # above Linux's pid_max: never a real process


class FakeClock:
    """Monotonic time that moves only when the test (or a fake wait) moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeChild:
    """A started `quire ci run`: it ends when the test says, or on SIGTERM if it obeys."""

    def __init__(self, clock: FakeClock, argv: list[str], output: Path) -> None:
        self.pid = next(FAKE_PIDS)
        self.clock = clock
        self.argv = argv
        self.output = output
        self.code: int | None = None
        self.signals: list[int] = []
        self.obeys_sigterm = True
        self.killed_at: float | None = None

    @property
    def run_id(self) -> str:
        return self.argv[self.argv.index("--run-id") + 1]

    def exit(self, code: int) -> None:
        self.code = code

    def poll(self) -> int | None:
        return self.code

    def signal(self, signum: int) -> None:
        self.signals.append(signum)
        if signum == signal.SIGTERM and self.obeys_sigterm and self.code is None:
            self.code = 130  # `quire ci run` records `interrupted` and exits 130

    def kill_group(self) -> None:
        self.killed_at = self.clock()
        if self.code is None:
            self.code = -signal.SIGKILL

    def wait(self, timeout: float | None = None) -> int | None:
        if self.code is None:
            assert timeout is not None, "waiting without a timeout for a child that never ends"
            self.clock.advance(timeout)  # it did not end in that time
        return self.code


class FakeStarter:
    """Starts fake children; raises the queued failures first."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.children: list[FakeChild] = []
        self.failures: list[Exception] = []

    def __call__(self, argv: list[str], output: Path) -> FakeChild:
        if self.failures:
            raise self.failures.pop(0)
        child = FakeChild(self.clock, argv, output)
        self.children.append(child)
        return child

    def of(self, run_id: str) -> FakeChild:
        (child,) = [c for c in self.children if c.run_id == run_id]
        return child


class FakeQueue:
    """The queue in memory, with `Queue`'s rules (oldest first, one running per ref, finish
    only from running); `failures[method]` are raised by the next calls of that method."""

    path = "/fake/state/queue.sqlite3"

    def __init__(self) -> None:
        self.rows: dict[str, Entry] = {}  # in arrival order
        self.failures: dict[str, list[Exception]] = {}
        self.calls: list[str] = []
        self.seq = itertools.count(1)

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.failures.get(name):
            raise self.failures[name].pop(0)

    def _set(self, run_id: str, **changes: Any) -> Entry:
        self.rows[run_id] = self.rows[run_id].replaced(**changes)
        return self.rows[run_id]

    def push(self, ref: str = "refs/heads/main", **fields: Any) -> Entry:
        seq = next(self.seq)
        row = entry(seq=seq, run_id=f"20261124-100000-{seq:06d}-abcdef", ref=ref, **fields)
        self.rows[row.run_id] = row
        return row

    def cancel(self, run_id: str, by: str | None = None) -> None:
        # A running row is flagged; `quire ci cancel` signals.
        self._set(run_id, cancel=True, cancel_by=by)

    def verify(self) -> None:
        self._call("verify")

    def claim(self, owner: Owner) -> Entry | None:
        self._call("claim")
        busy = {(r.git_dir, r.ref) for r in self.rows.values() if r.state == "running"}
        for row in self.rows.values():
            if row.state == "queued" and (row.git_dir, row.ref) not in busy:
                return self._set(
                    row.run_id,
                    state="running",
                    worker_pid=owner.pid,
                    worker_start=owner.start,
                    worker_host=owner.host,
                )
        return None

    def started(self, run_id: str, executor: str, pid: int, start: int | None) -> bool:
        self._call("started")
        return self._set(run_id, executor=executor, child_pid=pid, child_start=start).cancel

    def release(self, run_id: str) -> None:
        self._call("release")
        if self.rows[run_id].state == "running":
            self._set(run_id, state="queued", worker_pid=None, worker_host=None, child_pid=None)

    def finish(self, run_id: str, outcome: str, reason: str | None, message: str | None) -> bool:
        self._call("finish")
        if self.rows[run_id].state != "running":
            return False
        self._set(run_id, state="done", outcome=outcome, reason=reason, message=message)
        return True

    def requeue(self, run_id: str) -> Entry | None:
        self._call("requeue")
        old = self.rows.pop(run_id)
        if old.state != "running":
            self.rows[run_id] = old
            return None
        again = old.replaced(
            run_id=run_id + "-2",
            state="queued",
            attempt=old.attempt + 1,
            retry_of=run_id,
            worker_pid=None,
            worker_host=None,
            child_pid=None,
        )
        self.rows[again.run_id] = again
        return again

    def running(self) -> list[Entry]:
        self._call("running")
        return [r for r in self.rows.values() if r.state == "running"]

    def get(self, run_id: str) -> Entry:
        self._call("get")
        if run_id not in self.rows:
            raise QueueEntryNotFound(run_id)
        return self.rows[run_id]

    def active(self) -> list[Entry]:
        return [r for r in self.rows.values() if r.state != "done"]

    def prune(self, keep: int = 1000) -> int:
        return 0

    def states(self) -> list[str]:
        return [r.state for r in self.rows.values()]


@dataclass
class FakeRun:
    state: RunState


class FakeRecords(Records):
    """The run store: the runs named in `in_flight` have a record still active (the child died
    without finishing it) until reconciled; `failures[run_id]` are raised by the next
    reconciles of that run."""

    def __init__(self) -> None:
        self.in_flight: set[str] = set()
        self.failures: dict[str, list[Exception]] = {}
        self.reconciled: list[str] = []

    def find(self, entry: Entry) -> Any:
        return FakeRun(RunState.active) if entry.run_id in self.in_flight else None

    def reconcile(self, entry: Entry) -> None:
        if self.failures.get(entry.run_id):
            raise self.failures[entry.run_id].pop(0)
        self.reconciled.append(entry.run_id)
        self.in_flight.discard(entry.run_id)


@dataclass
class FakeSignals:
    stops: int = 0
    last: str | None = None


@dataclass
class Rig:
    """A worker wired to fakes, and the fakes."""

    worker: Worker
    queue: FakeQueue
    clock: FakeClock
    starter: FakeStarter
    records: FakeRecords
    notes: list[tuple[str, Outcome]] = field(default_factory=list)

    @property
    def settings(self) -> WorkerSettings:
        return self.worker.settings

    def child(self, run_id: str) -> FakeChild:
        return self.starter.of(run_id)

    def noted(self) -> list[tuple[str, str | None]]:
        return [(run_id, result.reason) for run_id, result in self.notes]


def entry(**fields: Any) -> Entry:
    base: dict[str, Any] = {
        "seq": 1,
        "run_id": "20261124-100000-000000-abcdef",
        "git_dir": "/srv/p.git",
        "ref": "refs/heads/main",
        "sha": "a" * 40,
        "pushed_at": "2026-11-24T10:00:00.000000Z",
        "state": "queued",
        "attempt": 1,
        "retry_of": None,
        "executor": None,
        "worker_pid": None,
        "worker_start": None,
        "worker_host": None,
        "child_pid": None,
        "child_start": None,
        "claimed_at": None,
        "finished_at": None,
        "cancel": False,
        "outcome": None,
        "reason": None,
        "message": None,
    }
    base.update(fields)
    return Entry(base)


def rig(tmp_path: Path, *, queue: Any = None, **settings: Any) -> Rig:
    clock = FakeClock()
    starter = FakeStarter(clock)
    records = FakeRecords()
    notes: list[tuple[str, Outcome]] = []
    defaults: dict[str, Any] = {"poll_s": 60.0, "retry_s": 5.0, "stop_grace_s": 10.0}
    worker = Worker(
        WorkerSettings(state=tmp_path / "state", **{**defaults, **settings}),
        queue=queue if queue is not None else FakeQueue(),
        clock=clock,
        start_child=starter,
        records=records,
        note=lambda e, result: notes.append((e.run_id, result)),
        me=ME,
    )
    return Rig(worker, worker.queue, clock, starter, records, notes)  # type: ignore[arg-type]


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
