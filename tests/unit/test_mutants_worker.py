"""The worker's end of a run against single-point bugs the rest of the unit suite let
through (issue 19): a child that died while its run was still pending leaves a record the
worker reconciles too, a cancel flag that cannot be read is not taken as asked, and a stop
works out the outcomes a full disk held back."""

from __future__ import annotations

import errno
import signal
from pathlib import Path
from typing import Any

from quire.ci.store.runs import RunState
from quire.service.errors import QueueUnavailable
from quire.service.queue import Entry
from tests.unit.test_worker_loop_fakes import FakeRecords, FakeRun, FakeSignals, rig


class PendingRecords(FakeRecords):
    """Runs in `in_flight` have a record still in pending/ until reconciled."""

    def find(self, entry: Entry) -> Any:
        return FakeRun(RunState.pending) if entry.run_id in self.in_flight else None


def test_a_run_left_pending_by_a_dead_child_is_reconciled(tmp_path: Path) -> None:
    r = rig(tmp_path)
    records = PendingRecords()
    r.worker.records = records
    row = r.queue.push()
    r.worker.tick()
    records.in_flight.add(row.run_id)  # the child died before its run became active
    r.child(row.run_id).exit(-signal.SIGKILL)
    r.worker.tick()
    assert records.reconciled == [row.run_id]
    assert r.noted() == [(row.run_id, "killed by signal 9")]


def test_a_cancel_flag_that_cannot_be_read_is_not_taken_as_asked(tmp_path: Path) -> None:
    r = rig(tmp_path)
    row = r.queue.push()
    r.worker.tick()
    r.child(row.run_id).exit(2)  # `quire ci run` failed before making a record
    r.queue.failures["get"] = [QueueUnavailable("database is locked")]
    r.worker.tick()
    assert r.noted() == [(row.run_id, "error")]
    assert r.notes[0][1].outcome == "failed"


def test_a_stop_works_out_an_outcome_held_back_until_the_next_poll(tmp_path: Path) -> None:
    r = rig(tmp_path, poll_s=30.0)
    row = r.queue.push()
    r.worker.tick()
    r.records.in_flight.add(row.run_id)
    r.records.failures[row.run_id] = [OSError(errno.ENOSPC, "No space left on device")]
    r.child(row.run_id).exit(-signal.SIGKILL)
    r.worker.tick()  # its record cannot be reconciled: tried again at the next poll...
    assert r.notes == []
    r.worker.stop(FakeSignals(stops=1, last="SIGTERM"))  # ... or when the worker stops
    assert r.records.reconciled == [row.run_id]
    assert r.noted() == [(row.run_id, "killed by signal 9")]
