"""The worker's loop when the world fails it, driven with fakes
(tests/unit/test_worker_loop_fakes.py): the queue that cannot be written now, a run store
that cannot be (a full disk), the queue file replaced or damaged under it.

Passing failures are logged and tried again later (retry_s, or the next poll); a queue
file that is not the one the worker opened stops the loop with a `QueueReplaced` (exit 3).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from pathlib import Path

import pytest

from quire.errors import ExitCode
from quire.service.errors import QueueCorrupt, QueueReplaced, QueueUnavailable
from quire.service.queue import Push, Queue, queue_path
from tests.unit.test_worker_loop_fakes import HOST, FakeSignals, dead_pid, rig


@pytest.fixture(autouse=True)
def worker_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="quire.worker")
    return caplog


# --- a queue that cannot be written now ----------------------------------------------------------


def test_an_unavailable_queue_makes_the_loop_retry_after_retry_s(
    tmp_path: Path, worker_log: pytest.LogCaptureFixture
) -> None:
    r = rig(tmp_path, retry_s=5.0, poll_s=60.0)
    row = r.queue.push()
    r.queue.failures["claim"] = [QueueUnavailable("cannot claim a run from the queue: disk full")]
    signals = FakeSignals()
    waits: list[float] = []

    def wait(timeout: float) -> None:
        waits.append(timeout)
        r.clock.advance(timeout)
        if r.starter.children:
            signals.stops, signals.last = 1, "SIGTERM"

    r.worker.run(wait, signals)
    assert waits[0] == 5.0  # woke for the retry, not at the next poll 60 s away
    assert [c.run_id for c in r.starter.children] == [row.run_id]
    assert "disk full; retrying in 5s" in worker_log.text
    assert "SIGTERM received: stopping (1 runs to interrupt)" in worker_log.text


# --- a run store that cannot be written (a full disk) --------------------------------------------


def test_an_ended_run_whose_record_cannot_be_reconciled_is_retried_at_the_next_poll(
    tmp_path: Path, worker_log: pytest.LogCaptureFixture
) -> None:
    r = rig(tmp_path, concurrency=2, poll_s=30.0)
    first, second = r.queue.push("refs/heads/a"), r.queue.push("refs/heads/b")
    r.worker.tick()
    r.records.in_flight.add(first.run_id)  # the child died before finishing its record
    r.records.failures[first.run_id] = [OSError(errno.ENOSPC, "No space left on device")]
    r.child(first.run_id).exit(-signal.SIGKILL)
    r.child(second.run_id).exit(0)
    wait = r.worker.tick()
    assert "its record cannot be reconciled: [Errno 28] No space left on device" in worker_log.text
    assert r.notes == [] and r.queue.states() == ["running", "running"]  # in order: both wait
    assert wait <= 30.0
    r.clock.advance(29)
    r.worker.tick()
    assert r.records.reconciled == []  # not before the next poll
    r.clock.advance(1)
    r.worker.tick()
    assert r.records.reconciled == [first.run_id]
    assert r.noted() == [(first.run_id, "killed by signal 9"), (second.run_id, "no-pipeline")]
    r.clock.advance(30)
    r.worker.tick()
    assert len(r.notes) == 2


def test_a_dead_workers_run_that_cannot_be_reconciled_is_retried_at_the_next_poll(
    tmp_path: Path, worker_log: pytest.LogCaptureFixture
) -> None:
    r = rig(tmp_path, poll_s=30.0, concurrency=2)
    dead = dead_pid()
    lost, other = (
        r.queue.push(ref, state="running", worker_pid=dead, worker_host=HOST, executor="host")
        for ref in ("refs/heads/a", "refs/heads/b")
    )
    full = OSError(errno.ENOSPC, "No space left on device")
    r.records.failures[lost.run_id] = [full, full]  # twice; other's record goes through
    r.worker.tick()
    assert f"cannot recover run {lost.run_id}" in worker_log.text
    assert r.queue.rows[lost.run_id].state == "running"
    assert r.records.reconciled == [other.run_id]  # one failure does not hold the others up
    r.clock.advance(30)
    r.worker.tick()  # the disk is still full: logged again, the worker goes on
    assert r.queue.rows[lost.run_id].state == "running"
    r.clock.advance(30)
    r.worker.tick()
    assert r.records.reconciled == [other.run_id, lost.run_id]
    again = r.queue.rows[lost.run_id + "-2"]
    assert (again.attempt, again.retry_of) == (2, lost.run_id)
    assert r.noted() == [(other.run_id, "orphaned"), (lost.run_id, "orphaned")]
    assert [c.run_id for c in r.starter.children] == [other.run_id + "-2", again.run_id]


def test_a_queue_unavailable_during_recovery_is_retried_at_the_next_poll(tmp_path: Path) -> None:
    r = rig(tmp_path, poll_s=30.0)
    lost = r.queue.push(state="running", worker_pid=dead_pid(), worker_host=HOST, executor="host")
    r.queue.failures["requeue"] = [QueueUnavailable("cannot queue a run again: disk full")]
    r.worker.tick()
    assert r.queue.rows[lost.run_id].state == "running"
    r.clock.advance(30)
    r.worker.tick()
    assert lost.run_id + "-2" in r.queue.rows


# --- the queue file replaced under the worker ------------------------------------------------


def test_a_replaced_queue_stops_the_loop_and_nothing_more_is_written_to_it(
    tmp_path: Path, worker_log: pytest.LogCaptureFixture
) -> None:
    r = rig(tmp_path)
    row = r.queue.push()
    r.worker.tick()
    problem = QueueReplaced(f"the queue file {r.queue.path} was replaced or truncated")
    r.queue.failures["verify"] = [problem]
    signals = FakeSignals()
    with pytest.raises(QueueReplaced) as raised:
        r.worker.run(lambda timeout: r.clock.advance(timeout), signals)
    assert raised.value.exit_code == ExitCode.environment
    assert f"the queue file {r.queue.path} was replaced or truncated; stopping" in worker_log.text
    calls = len(r.queue.calls)
    r.worker.stop(signals)
    assert r.child(row.run_id).signals == [signal.SIGTERM]
    assert "finish" not in r.queue.calls[calls:]  # the file is not ours: no more writes
    assert f"outcomes of {row.run_id} not recorded" in worker_log.text


def test_a_real_queue_file_truncated_under_the_worker_is_noticed_at_the_next_tick(
    tmp_path: Path,
) -> None:
    path = Path(queue_path(tmp_path / "state"))
    with Queue(path) as queue:
        r = rig(tmp_path, queue=queue)
        (row,) = queue.enqueue([Push("/srv/p.git", "refs/heads/main", "a" * 40, "2026-11-24Z")])
        r.worker.tick()
        assert r.child(row.run_id)
        os.truncate(path, 0)
        with pytest.raises(QueueReplaced, match="truncated to 0 bytes"):
            r.worker.tick()


def test_a_damaged_queue_stops_the_loop(tmp_path: Path) -> None:

    r = rig(tmp_path)
    r.queue.failures["claim"] = [QueueCorrupt("the queue database is damaged (malformed)")]
    with pytest.raises(QueueCorrupt):
        r.worker.run(lambda timeout: r.clock.advance(timeout), FakeSignals())
