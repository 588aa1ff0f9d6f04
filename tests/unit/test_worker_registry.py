"""The worker registry with fakes: when a row counts as live (a fake clock for expiry), and
how a worker keeps its own row (registered at its first poll, refreshed at each poll and
when what it runs changes, deleted on a clean stop, dead rows forgotten now and then).

The real queues (SQLite and PostgreSQL) are in tests/integration/test_queue_contract.py.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from quire.service.errors import QueueUnavailable
from quire.service.registry import (
    Registration,
    WorkerInfo,
    local_live,
    new_worker_id,
    seen_within_ttl,
    worker_from_row,
)
from tests.unit.test_worker_loop_fakes import FakeClock, FakeQueue, FakeSignals, dead_pid, rig

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def info(**fields: Any) -> WorkerInfo:
    base: dict[str, Any] = {
        "id": "w1",
        "name": "build-1",
        "host": "elsewhere",
        "pid": 4242,
        "start": 7,
        "started_at": T0,
        "seen_at": T0,
        "concurrency": 2,
        "ttl_s": 30.0,
    }
    return WorkerInfo(**{**base, **fields})


class RegistryQueue(FakeQueue):
    """`FakeQueue` with a registry in memory, on a fake clock: rows live while seen within
    their ttl (PostgreSQL's rule); `forget_workers` deletes rows dead for `after_s`."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        super().__init__()
        self.clock = clock or FakeClock()
        self.registry: dict[str, WorkerInfo] = {}
        self.forgets: list[float] = []

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.clock())

    def heartbeat(self, worker: WorkerInfo) -> None:
        self._call("heartbeat")
        self.registry[worker.id] = worker.model_copy(update={"seen_at": self.now()})

    def unregister(self, worker_id: str) -> None:
        self._call("unregister")
        self.registry.pop(worker_id, None)

    def workers(self) -> list[WorkerInfo]:
        return [w for w in self.registry.values() if seen_within_ttl(w, self.now())]

    def forget_workers(self, after_s: float) -> int:
        self.forgets.append(after_s)
        gone = [
            w.id
            for w in self.registry.values()
            if w.seen_at is not None
            and (self.now() - w.seen_at).total_seconds() > after_s
            and not seen_within_ttl(w, self.now())
        ]
        for worker_id in gone:
            del self.registry[worker_id]
        return len(gone)


# --- when a row counts -----------------------------------------------------------------------


def test_a_heartbeat_counts_until_its_ttl_has_passed() -> None:
    worker = info(ttl_s=30.0)
    assert seen_within_ttl(worker, T0)
    assert seen_within_ttl(worker, T0 + timedelta(seconds=29.9))
    assert not seen_within_ttl(worker, T0 + timedelta(seconds=30))
    assert not seen_within_ttl(info(seen_at=None), T0)  # never stored: not live


def test_on_sqlite_a_worker_of_this_host_is_live_while_its_process_is() -> None:
    here = socket.gethostname()
    me = info(host=here, pid=os.getpid(), start=None, seen_at=T0 - timedelta(days=1))
    assert local_live(me, T0)  # its heartbeat is old, its process lives: live
    gone = info(host=here, pid=dead_pid(), start=None, seen_at=T0)
    assert not local_live(gone, T0)  # seen just now, but its process is gone
    reused = info(host=here, pid=os.getpid(), start=1, seen_at=T0)
    assert not local_live(reused, T0)  # the pid lives, but is another process


def test_on_sqlite_another_hosts_worker_is_judged_by_its_heartbeat() -> None:
    other = info(host="elsewhere", pid=dead_pid(), ttl_s=15.0)
    assert local_live(other, T0 + timedelta(seconds=14))  # a pid of another machine: not ours
    assert not local_live(other, T0 + timedelta(seconds=15))


def test_a_row_reads_back_into_the_model() -> None:
    row = {
        "id": "w9",
        "name": "build-2",
        "host": "h",
        "pid": 12,
        "pid_start": None,
        "started_at": "2026-12-04T12:00:00.000000Z",
        "seen_at": "2026-12-04T12:00:05.000000Z",
        "concurrency": 3,
        "running": "r1 r2",
        "ttl_s": 30.0,
    }
    worker = worker_from_row(row)
    assert worker.running == ("r1", "r2")
    assert worker.seen_at == T0 + timedelta(seconds=5)
    assert worker.running_text() == "r1 r2"
    assert worker_from_row({**row, "running": ""}).running == ()
    assert new_worker_id() != new_worker_id()


# --- a worker's own row ----------------------------------------------------------------------


def test_a_registration_beats_forgets_now_and_then_and_leaves() -> None:
    clock = FakeClock()
    queue = RegistryQueue(clock)
    reg = Registration(info(seen_at=None), clock, forget_every_s=60.0, forget_after_s=600.0)
    assert reg.stale([])  # never written
    reg.beat(queue, ["r1"])
    assert [w.running for w in queue.workers()] == [("r1",)]
    assert not reg.stale(["r1"]) and reg.stale(["r1", "r2"])
    assert queue.forgets == [600.0]  # the first beat looks for dead rows
    clock.advance(59)
    reg.beat(queue, [])
    assert queue.forgets == [600.0]  # not again within the minute
    clock.advance(1)
    reg.beat(queue, [])
    assert queue.forgets == [600.0, 600.0]
    reg.leave(queue)
    assert queue.registry == {}
    assert reg.stale([])  # gone: a later beat registers it again


def test_a_dead_workers_row_stops_counting_then_a_live_worker_deletes_it() -> None:
    clock = FakeClock()
    queue = RegistryQueue(clock)
    dead = Registration(info(id="dead", ttl_s=30.0), clock)
    live = Registration(info(id="live", ttl_s=30.0), clock, forget_every_s=60.0)
    start = clock()
    dead.beat(queue, ["r1"])  # then it is killed -9: no more beats, no leave
    live.beat(queue, [])
    assert {w.id for w in queue.workers()} == {"dead", "live"}
    for _ in range(3):
        clock.advance(10)
        live.beat(queue, [])
    assert {w.id for w in queue.workers()} == {"live"}  # its heartbeat expired: not counted
    assert "dead" in queue.registry  # but its row is still there
    while clock() - start < 600:
        clock.advance(10)
        live.beat(queue, [])
    assert "dead" in queue.registry  # kept for forget_after_s (600 s here)
    while clock() - start < 600 + 60:  # ... and then at most forget_every_s more
        clock.advance(10)
        live.beat(queue, [])
    assert set(queue.registry) == {"live"}


def test_a_queue_without_a_registry_is_left_alone() -> None:
    reg = Registration(info(), FakeClock())
    assert reg.beat(FakeQueue(), ["r1"]) == 0
    reg.leave(FakeQueue())  # nothing to delete, nothing raised


def test_the_worker_registers_at_its_first_poll_and_shows_what_it_runs(tmp_path: Path) -> None:
    queue = RegistryQueue()
    r = rig(tmp_path, queue=queue, concurrency=2, name="build-7", poll_s=5.0)
    queue.clock = r.clock
    row = queue.push()
    r.worker.tick()
    (me,) = queue.workers()
    assert (me.name, me.host, me.pid, me.concurrency) == (
        "build-7",
        socket.gethostname(),
        os.getpid(),
        2,
    )
    assert me.running == (row.run_id,)  # beaten again once the run started
    assert me.ttl_s == 15.0  # SQLite-like queue: a few polls (another host's rows only)
    r.child(row.run_id).exit(0)
    r.worker.tick()
    assert queue.workers()[0].running == ()  # its end is shown at once, not a poll later


def test_the_worker_refreshes_its_row_at_each_poll_and_outlives_its_ttl(tmp_path: Path) -> None:
    queue = RegistryQueue()
    r = rig(tmp_path, queue=queue, poll_s=5.0)
    queue.clock = r.clock
    r.worker.tick()
    beats = queue.calls.count("heartbeat")
    for _ in range(10):  # 50 s: over three times its ttl
        r.clock.advance(5.0)
        r.worker.tick()
    assert queue.calls.count("heartbeat") == beats + 10
    assert len(queue.workers()) == 1


def test_on_a_leasing_queue_the_ttl_is_the_lease(tmp_path: Path) -> None:
    class LeasingRegistry(RegistryQueue):
        leases = True

        def renew(self, run_id: str, seconds: float) -> None:
            return None

        def expired(self, owner: Any) -> list[Any]:
            return []

        def notifications(self) -> None:
            return None

    queue = LeasingRegistry()
    r = rig(tmp_path, queue=queue, lease_s=12.0, poll_s=60.0)
    queue.clock = r.clock
    r.worker.tick()
    assert queue.workers()[0].ttl_s == 12.0


def test_the_worker_leaves_the_registry_when_it_stops_cleanly(tmp_path: Path) -> None:
    queue = RegistryQueue()
    r = rig(tmp_path, queue=queue)
    queue.clock = r.clock
    r.worker.tick()
    assert len(queue.workers()) == 1
    r.worker.stop(FakeSignals())
    assert queue.workers() == [] and queue.registry == {}


def test_a_heartbeat_the_queue_refuses_is_tried_again(tmp_path: Path) -> None:
    queue = RegistryQueue()
    r = rig(tmp_path, queue=queue, poll_s=5.0, retry_s=5.0)
    queue.clock = r.clock
    queue.failures["heartbeat"] = [QueueUnavailable("cannot record a worker in the queue")]
    r.worker.tick()
    assert queue.workers() == []
    r.clock.advance(5.0)
    r.worker.tick()
    assert len(queue.workers()) == 1


def test_a_stop_whose_unregister_fails_leaves_the_row_to_expire(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = RegistryQueue()
    r = rig(tmp_path, queue=queue)
    queue.clock = r.clock
    r.worker.tick()
    queue.failures["unregister"] = [QueueUnavailable("cannot remove a worker from the queue")]
    r.worker.stop(FakeSignals())  # does not raise
    assert "stays in the registry until it expires" in caplog.text
    assert len(queue.registry) == 1


# --- quire ci workers ------------------------------------------------------------------------


def test_quire_ci_workers_lists_the_live_workers_of_the_sqlite_queue() -> None:
    import json

    from typer.testing import CliRunner

    from quire.ci.store.liveness import process_start_ticks
    from quire.cli.app import app
    from quire.paths import state_dir
    from quire.service.queue import open_queue

    runner = CliRunner()
    assert "no worker is running" in runner.invoke(app, ["ci", "workers"]).stdout
    here = socket.gethostname()
    me = info(host=here, pid=os.getpid(), start=process_start_ticks(os.getpid()))
    with open_queue(state_dir()) as queue:
        queue.heartbeat(me.model_copy(update={"name": "build-1", "running": ("r1",)}))
        queue.heartbeat(info(id="w2", name="gone", host=here, pid=dead_pid(), start=None))
    shown = runner.invoke(app, ["ci", "workers"])
    assert shown.exit_code == 0, shown.output
    header, row = shown.stdout.splitlines()
    assert header.split() == ["name", "host", "pid", "since", "seen", "runs", "running"]
    assert row.split()[:3] == ["build-1", here, str(os.getpid())]
    assert row.split()[3:5] == ["2026-12-04", "12:00:00"]  # since it started
    assert row.split()[-2:] == ["1/2", "r1"]
    assert "gone" not in shown.stdout  # its process is dead
    (listed,) = json.loads(runner.invoke(app, ["ci", "workers", "--json"]).stdout)
    assert (listed["name"], listed["pid"], listed["running"]) == ("build-1", os.getpid(), ["r1"])
    assert listed["seen_at"] is not None
