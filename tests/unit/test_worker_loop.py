"""The worker's loop, driven turn by turn with fakes (tests/unit/test_worker_loop_fakes.py):
what it claims and starts, how it records what its children came to, how it stops them.

Nothing here sleeps or spawns a run: `Worker.tick()` is one turn of the loop, `Worker.stop()`
what a stop signal leads to. Failures around it (a full disk, the queue file replaced) are
in test_worker_loop_faults.py.
"""

from __future__ import annotations

import errno
import logging
import signal
from pathlib import Path

import pytest

from quire.service.errors import QueueUnavailable
from tests.unit.test_worker_loop_fakes import ME, FakeSignals, rig


@pytest.fixture(autouse=True)
def worker_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="quire.worker")
    return caplog


# --- claiming and starting ------------------------------------------------------------------------


def test_fill_starts_no_more_runs_than_the_concurrency(tmp_path: Path) -> None:
    r = rig(tmp_path, concurrency=2)
    rows = [r.queue.push(f"refs/heads/b{i}") for i in range(5)]
    r.worker.tick()
    assert [c.run_id for c in r.starter.children] == [rows[0].run_id, rows[1].run_id]
    assert r.queue.states() == ["running", "running", "queued", "queued", "queued"]
    r.clock.advance(1)
    r.worker.tick()
    assert len(r.starter.children) == 2  # nothing ended: nothing more starts
    r.child(rows[0].run_id).exit(0)
    r.clock.advance(1)
    r.worker.tick()
    assert [c.run_id for c in r.starter.children][2:] == [rows[2].run_id]
    assert r.queue.states().count("running") == 2


def test_a_started_run_is_told_to_the_queue_with_its_child(tmp_path: Path) -> None:
    r = rig(tmp_path, executor="docker")
    row = r.queue.push()
    r.worker.tick()
    child = r.child(row.run_id)
    assert "--executor" in child.argv and child.argv[child.argv.index("--executor") + 1] == "docker"
    now = r.queue.rows[row.run_id]
    assert (now.state, now.child_pid, now.executor, now.worker_pid) == (
        "running",
        child.pid,
        "docker",
        ME.pid,
    )


def test_a_run_that_cannot_start_is_released_and_retried_after_retry_s(
    tmp_path: Path, worker_log: pytest.LogCaptureFixture
) -> None:
    r = rig(tmp_path, retry_s=5.0, poll_s=60.0)
    row = r.queue.push()
    r.starter.failures.append(OSError(errno.EMFILE, "Too many open files"))
    wait = r.worker.tick()
    assert r.starter.children == []
    assert r.queue.rows[row.run_id].state == "queued"  # released: it keeps its place
    assert wait == 5.0  # the loop wakes for the retry, not only at the next poll
    assert f"cannot start run {row.run_id}: [Errno 24] Too many open files" in worker_log.text
    r.clock.advance(4.9)
    r.worker.tick()
    assert r.starter.children == []  # not before retry_s
    r.clock.advance(0.1)
    r.worker.tick()
    assert [c.run_id for c in r.starter.children] == [row.run_id]
    assert r.queue.rows[row.run_id].state == "running"


# --- finishing ------------------------------------------------------------------------------------


def test_reaped_outcomes_are_recorded_in_order_and_noted_once(tmp_path: Path) -> None:
    r = rig(tmp_path, concurrency=3)
    a, b, c = (r.queue.push(f"refs/heads/{name}") for name in "abc")
    r.worker.tick()
    r.child(b.run_id).exit(2)
    r.worker.tick()
    assert r.noted() == [(b.run_id, "error")]
    r.child(a.run_id).exit(130)
    r.child(c.run_id).exit(-signal.SIGKILL)
    r.queue.failures["finish"] = [QueueUnavailable("disk full")]  # a's outcome must wait
    r.worker.tick()
    assert r.noted() == [(b.run_id, "error")]
    assert r.queue.rows[c.run_id].state == "running"  # not recorded before a's
    r.clock.advance(r.settings.retry_s)
    r.worker.tick()
    r.clock.advance(r.settings.poll_s)
    r.worker.tick()
    assert r.noted() == [
        (b.run_id, "error"),
        (a.run_id, "interrupted"),
        (c.run_id, "killed by signal 9"),
    ]
    assert [r.queue.rows[x.run_id].reason for x in (a, b, c)] == [
        "interrupted",
        "error",
        "killed by signal 9",
    ]


def test_an_outcome_someone_else_recorded_is_not_noted_again(tmp_path: Path) -> None:
    r = rig(tmp_path)
    row = r.queue.push()
    r.worker.tick()
    r.queue._set(row.run_id, state="done", outcome="failed", reason="orphaned")
    r.child(row.run_id).exit(1)
    r.worker.tick()
    r.clock.advance(r.settings.poll_s)
    r.worker.tick()
    assert r.notes == []
    assert r.queue.rows[row.run_id].reason == "orphaned"


def test_a_cancel_asked_during_a_run_makes_it_cancelled_at_its_end(tmp_path: Path) -> None:
    r = rig(tmp_path)
    row = r.queue.push()
    r.worker.tick()
    r.queue.cancel(row.run_id)  # `quire ci cancel` flags the row, then signals the child
    r.child(row.run_id).exit(130)
    r.worker.tick()
    done = r.queue.rows[row.run_id]
    assert (done.state, done.outcome, done.reason) == ("done", "cancelled", "cancelled")
    assert r.noted() == [(row.run_id, "cancelled")]


def test_a_cancel_asked_before_the_child_started_stops_it_at_once(tmp_path: Path) -> None:
    r = rig(tmp_path)
    row = r.queue.push()
    real_started = r.queue.started

    def started(run_id: str, executor: str, pid: int, start: int | None) -> bool:
        r.queue.cancel(run_id)  # asked between the claim and the start
        return real_started(run_id, executor, pid, start)

    r.queue.started = started  # type: ignore[method-assign]
    r.worker.tick()
    assert r.child(row.run_id).signals == [signal.SIGTERM]
    r.worker.tick()
    assert r.queue.rows[row.run_id].outcome == "cancelled"


# --- stopping ---------------------------------------------------------------------------------


def test_stop_sends_sigterm_to_every_child_and_records_them_interrupted(tmp_path: Path) -> None:
    r = rig(tmp_path, concurrency=3)
    rows = [r.queue.push(f"refs/heads/b{i}") for i in range(3)]
    r.worker.tick()
    start = r.clock()
    r.worker.stop(FakeSignals(stops=1, last="SIGTERM"))
    assert [c.signals for c in r.starter.children] == [[signal.SIGTERM]] * 3
    assert all(c.killed_at is None for c in r.starter.children)
    assert r.clock() - start < r.settings.stop_grace_s
    assert [r.queue.rows[x.run_id].reason for x in rows] == ["interrupted"] * 3
    assert sorted(r.noted()) == sorted((x.run_id, "interrupted") for x in rows)


def test_stop_kills_a_child_that_outlives_stop_grace_s(tmp_path: Path) -> None:
    r = rig(tmp_path, concurrency=2, stop_grace_s=10.0)
    polite, stubborn = r.queue.push("refs/heads/a"), r.queue.push("refs/heads/b")
    r.worker.tick()
    r.child(stubborn.run_id).obeys_sigterm = False
    start = r.clock()
    r.worker.stop(FakeSignals(stops=1, last="SIGTERM"))
    killed_at = r.child(stubborn.run_id).killed_at
    assert killed_at is not None and killed_at - start >= 10.0  # the whole grace, on the fake clock
    assert r.child(polite.run_id).killed_at is None
    assert r.child(stubborn.run_id).signals == [signal.SIGTERM]
    assert r.queue.rows[stubborn.run_id].reason == "killed by signal 9"
    assert r.queue.rows[polite.run_id].reason == "interrupted"


def test_a_second_stop_signal_kills_at_once(tmp_path: Path) -> None:
    r = rig(tmp_path, stop_grace_s=10.0)
    row = r.queue.push()
    r.worker.tick()
    r.child(row.run_id).obeys_sigterm = False
    signals = FakeSignals(stops=1, last="SIGTERM")
    real_wait = r.child(row.run_id).wait

    def wait(timeout: float | None = None) -> int | None:
        signals.stops = 2  # Ctrl-C again while waiting
        return real_wait(timeout)

    r.child(row.run_id).wait = wait  # type: ignore[method-assign]
    start = r.clock()
    r.worker.stop(signals)
    assert r.child(row.run_id).killed_at == pytest.approx(start + 0.05)
