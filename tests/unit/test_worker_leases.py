"""The worker on a queue that keeps leases (PostgreSQL), driven turn by turn with fakes:
it renews its runs' leases at each poll, stops a run whose lease was lost or whose cancel
was asked elsewhere, and recovers expired leases instead of looking at pids.

The real PostgreSQL queue is in tests/integration/test_queue_contract.py and
test_workers_postgres.py; here the fake of test_worker_loop_fakes.py grows leases.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from quire.service import outcome as outcomes
from quire.service.queue import Entry, Owner
from tests.unit.test_worker_loop_fakes import ME, FakeQueue, rig


class LeasingQueue(FakeQueue):
    """`FakeQueue` with leases: `lost` run ids are no longer this worker's; `lapsed` rows are
    handed out by the next `expired()`."""

    leases = True

    def __init__(self) -> None:
        super().__init__()
        self.renewed: list[tuple[str, float]] = []
        self.lost: set[str] = set()
        self.lapsed: list[Entry] = []

    def renew(self, run_id: str, seconds: float) -> Entry | None:
        self._call("renew")
        self.renewed.append((run_id, seconds))
        row = self.rows.get(run_id)
        if run_id in self.lost or row is None or row.state != "running":
            return None
        return row

    def expired(self, owner: Owner) -> list[Entry]:
        self._call("expired")
        found, self.lapsed = self.lapsed, []
        return found

    def notifications(self) -> None:
        return None

    def finish(self, run_id: str, outcome: str, reason: str | None, message: str | None) -> bool:
        if run_id not in self.rows:  # queued again under a new id by another worker
            self._call("finish")
            return False
        return super().finish(run_id, outcome, reason, message)


def leasing_rig(tmp_path: Path, **settings: Any) -> Any:
    return rig(tmp_path, queue=LeasingQueue(), **{"poll_s": 60.0, "lease_s": 30.0, **settings})


def test_the_worker_renews_its_runs_leases_three_times_a_lease(tmp_path: Path) -> None:
    r = leasing_rig(tmp_path, lease_s=30.0)
    row = r.queue.push()
    first_wait = r.worker.tick()
    assert r.child(row.run_id).pid
    assert first_wait == 10.0  # a third of the lease, sooner than poll_s
    r.clock.advance(10.0)
    r.worker.tick()
    assert r.queue.renewed == [(row.run_id, 30.0)]
    assert "running" not in r.queue.calls  # no pid checks: expired leases only
    assert r.queue.calls.count("expired") == 2


def test_a_run_whose_lease_was_lost_is_stopped_and_not_finished_by_this_worker(
    tmp_path: Path,
) -> None:
    r = leasing_rig(tmp_path)
    row = r.queue.push()
    r.worker.tick()
    r.queue.requeue(row.run_id)  # another worker found the lease expired and queued it again
    r.queue.lost.add(row.run_id)
    r.clock.advance(10.0)
    r.worker.tick()
    assert r.child(row.run_id).signals == [signal.SIGTERM]
    r.clock.advance(10.0)
    r.worker.tick()
    assert r.queue.rows[row.run_id + "-2"].state in ("queued", "running")
    assert r.notes == []  # its outcome belongs to the worker that runs it again


def test_a_cancel_asked_on_another_machine_stops_the_run_at_the_next_renewal(
    tmp_path: Path,
) -> None:
    r = leasing_rig(tmp_path)
    row = r.queue.push()
    r.worker.tick()
    r.child(row.run_id).obeys_sigterm = False  # it takes its time: look before it ends
    r.queue.cancel(row.run_id, "alice@laptop")
    r.clock.advance(10.0)
    r.worker.tick()
    assert r.child(row.run_id).signals == [signal.SIGTERM]
    # Who asked is written where this machine's `quire ci run` looks when it stops, so the
    # run is recorded cancelled by alice, not interrupted.
    request = outcomes.store_of(row).cancel_request(row.run_id)
    assert request is not None and request.by == "alice@laptop"
    r.child(row.run_id).code = 130
    r.clock.advance(1.0)
    r.worker.tick()
    done = r.queue.rows[row.run_id]
    assert (done.state, done.outcome) == ("done", "cancelled")


def test_an_expired_lease_of_another_worker_is_queued_again(tmp_path: Path) -> None:
    r = leasing_rig(tmp_path, concurrency=1)
    row = r.queue.push(worker_pid=1, worker_host="elsewhere")
    r.queue.rows[row.run_id] = row.replaced(state="running")
    r.queue.lapsed = [r.queue.rows[row.run_id]]
    r.worker.tick()
    again = r.queue.rows[row.run_id + "-2"]
    assert (again.attempt, again.retry_of) == (2, row.run_id)
    assert [c.run_id for c in r.starter.children] == [again.run_id]
    assert r.noted() == [(row.run_id, "orphaned")]


def test_a_lapsed_lease_of_this_worker_is_not_recovered_by_it(tmp_path: Path) -> None:
    r = leasing_rig(tmp_path)
    row = r.queue.push()
    r.worker.tick()
    r.queue.lapsed = [r.queue.rows[row.run_id]]  # its renewal came late: taking over renewed it
    r.clock.advance(10.0)
    r.worker.tick()
    assert r.queue.rows[row.run_id].state == "running"
    assert "requeue" not in r.queue.calls and r.child(row.run_id).signals == []
    assert ME.pid == r.queue.rows[row.run_id].worker_pid


class RecordingPublisher:
    """The worker's publisher, recording what it was asked (and the queue row's state then)."""

    def __init__(self, queue: LeasingQueue) -> None:
        self.queue = queue
        self.calls: list[tuple[str, str, str]] = []

    def track(self, entry: Entry) -> None:
        self.calls.append(("track", entry.run_id, ""))

    def finish(self, run_id: str) -> None:
        # The run index gets the run's last records before the queue says it is done.
        self.calls.append(("finish", run_id, self.queue.rows[run_id].state))

    def lost(self, entry: Entry, message: str) -> None:
        self.calls.append(("lost", entry.run_id, message))

    def close(self) -> None:
        pass


def test_the_worker_publishes_its_runs_and_the_last_batch_before_the_queue_hears(
    tmp_path: Path,
) -> None:
    r = leasing_rig(tmp_path)
    r.worker.publisher = publisher = RecordingPublisher(r.queue)
    row = r.queue.push()
    r.worker.tick()
    assert publisher.calls == [("track", row.run_id, "")]
    r.child(row.run_id).exit(0)
    r.worker.tick()
    assert publisher.calls[1] == ("finish", row.run_id, "running")
    assert r.queue.rows[row.run_id].state == "done"


def test_a_lost_workers_run_is_failed_in_the_run_index_naming_the_worker_and_the_retry(
    tmp_path: Path,
) -> None:
    r = leasing_rig(tmp_path, concurrency=0)
    r.worker.publisher = publisher = RecordingPublisher(r.queue)
    row = r.queue.push(worker_pid=4242, worker_host="elsewhere")
    r.queue.rows[row.run_id] = row.replaced(state="running")
    r.queue.lapsed = [r.queue.rows[row.run_id]]
    r.worker.tick()
    ((kind, run_id, message),) = publisher.calls
    assert (kind, run_id) == ("lost", row.run_id)
    assert "worker elsewhere (pid 4242) was lost" in message
    assert f"queued again as run {row.run_id}-2" in message


def test_a_cancel_asked_between_claim_and_start_is_recorded_with_who_asked(
    tmp_path: Path,
) -> None:
    r = leasing_rig(tmp_path)
    row = r.queue.push()
    r.queue.rows[row.run_id] = row.replaced(cancel=True, cancel_by="bob@ci")
    r.worker.tick()
    assert r.child(row.run_id).signals == [signal.SIGTERM]
    request = outcomes.store_of(row).cancel_request(row.run_id)
    assert request is not None and request.by == "bob@ci"


def test_a_cancel_asked_on_this_machine_keeps_its_own_request(tmp_path: Path) -> None:
    r = leasing_rig(tmp_path)
    row = r.queue.push()
    r.worker.tick()
    r.child(row.run_id).obeys_sigterm = False
    outcomes.store_of(row).request_cancel(row.run_id, "carol@here")
    r.queue.cancel(row.run_id, "carol@here (queue)")
    r.clock.advance(10.0)
    r.worker.tick()
    request = outcomes.store_of(row).cancel_request(row.run_id)
    assert request is not None and request.by == "carol@here"
