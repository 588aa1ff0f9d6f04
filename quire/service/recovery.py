"""Runs of a dead worker: found by pid liveness (or an expired lease), reaped, then queued
again once.

With a queue that keeps leases (PostgreSQL) a worker on any machine is
gone when its lease runs out: a live worker takes the row over
(`expired()`) and handles it as below; what the lost worker left on its
own machine (records, containers) is reconciled there when it comes back.

A running row belongs to a worker (pid + /proc start time + host) and,
once started, to its child `quire ci run`. When the worker is dead (on
this host) and so is the child (it gets SIGTERM when the worker dies, and
records its run `interrupted`), the run is reconciled like
`quire ci reconcile` does (a run still in active/ is failed as
`orphaned`, its container removed), its outcome is noted, and the row is
queued again with a new run id at its old place in the queue; the second
time a worker dies under it, it is given up (`abandoned`). A run that
finished normally just as its worker died keeps its result. A run that
cannot be recovered now (its record cannot be reconciled: a full disk) is
left running in the queue, so the next poll tries it again.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from quire.ci.store.liveness import is_alive
from quire.ci.store.runs import FINISHED, RunDir
from quire.errors import QuireError
from quire.service import outcome as outcomes
from quire.service.errors import QueueCorrupt, QueueReplaced, QueueUnavailable
from quire.service.outcome import FAILED, Outcome
from quire.service.queue import MAX_ATTEMPTS, Entry, Owner

if TYPE_CHECKING:
    from quire.service.queue import WorkQueue

log = logging.getLogger("quire.worker")

LOST_REASONS = ("interrupted", "orphaned", "unreadable")
# The queue's own failures: handled by the worker's loop (retry later, or stop), not per run.
QUEUE_ERRORS = (QueueUnavailable, QueueCorrupt, QueueReplaced)
Recorder = Callable[[Entry, Outcome], None]
# A run given up on its lost worker's behalf, with why: failed in the run index.
LostRun = Callable[[Entry, str], None]


def _ignore_lost(entry: Entry, message: str) -> None:
    """Without a run index the records say it (on the worker's machine)."""


class Records:
    """The run store as the worker sees a queued run's record: find it, reconcile it.

    One object so the worker's unit tests can stand in for the store, and
    for its failures (a full disk), without making real runs.
    """

    def find(self, entry: Entry) -> RunDir | None:
        """The run record of `entry`'s run id, or None if it was never made."""
        return outcomes.find_record(entry)

    def record_cancelled(self, entry: Entry, result: Outcome) -> Outcome:
        """A cancelled run that ended before its record existed gets one (in cancelled/,
        who asked and when), as a run cancelled while queued does."""
        store = outcomes.store_of(entry)
        request = store.cancel_request(entry.run_id)
        if request is None:
            return result
        recorded = outcomes.record_cancelled(entry, request) is not None
        return dataclasses.replace(result, recorded=recorded, cancelled_by=request.by)

    def reconcile(self, entry: Entry) -> None:
        """Fail the run if it is still in flight; raises `OSError` or a `QuireError`
        when its records cannot be written."""
        reconcile_run(entry)


RECORDS = Records()


def orphaned(entry: Entry, me: Owner) -> bool:
    """Whether `entry` is running for a worker that is dead, and its child is too."""
    if entry.worker_host != me.host or entry.worker_pid is None:
        return False  # another host's pids mean nothing here
    if (entry.worker_pid, entry.worker_start) == (me.pid, me.start):
        return False
    if is_alive(entry.worker_pid, entry.worker_start):
        return False
    # The child may still be tearing down after its worker's death: wait for it.
    return entry.child_pid is None or not is_alive(entry.child_pid, entry.child_start)


def lost_runs(queue: WorkQueue, me: Owner) -> list[Entry]:
    """The running rows whose worker is gone: by lease when the queue keeps leases (a
    worker on any machine; the rows are now leased to `me`), else by pid on this host."""
    if getattr(queue, "leases", False):
        mine = (me.host, me.pid, me.start)
        # Ours only if this worker's own renewal came late: taking it over renewed it.
        return [
            e for e in queue.expired(me) if (e.worker_host, e.worker_pid, e.worker_start) != mine
        ]
    return [entry for entry in queue.running() if orphaned(entry, me)]


def recover(
    queue: WorkQueue,
    me: Owner,
    note: Recorder,
    records: Records = RECORDS,
    lost: LostRun = _ignore_lost,
) -> int:
    """Recover every running row of dead workers; returns how many were handled.
    `lost(entry, why)` for each run given up (queued again, abandoned, cancelled).

    A run whose record cannot be reconciled now is logged and left for the
    next call; the queue's own errors (`QUEUE_ERRORS`) are raised.
    """
    handled = 0
    for entry in lost_runs(queue, me):
        try:
            recover_one(queue, entry, note, records, lost)
        except QUEUE_ERRORS:
            raise
        except (OSError, QuireError) as exc:
            log.error(
                "cannot recover run %s of dead worker %s yet: %s; trying again at the next poll",
                entry.run_id,
                entry.worker_pid,
                exc,
            )
            continue
        handled += 1
    return handled


def recover_one(
    queue: WorkQueue,
    entry: Entry,
    note: Recorder,
    records: Records = RECORDS,
    lost_run: LostRun = _ignore_lost,
) -> None:
    """Reap one dead worker's run, note its outcome, and queue it again (once)."""
    worker = f"worker {entry.worker_host} (pid {entry.worker_pid})"
    records.reconcile(entry)
    run = records.find(entry)
    if run is not None and run.state in FINISHED:
        result = outcomes.from_record(run, cancelled=entry.cancel)
        if result.reason not in LOST_REASONS:
            # It finished by itself just as its worker died: that is its result.
            if queue.finish(entry.run_id, result.outcome, result.reason, result.message):
                log.info("run %s finished as its worker died: %s", entry.run_id, result.describe())
                note(entry, result)
            return
        lost = result
    else:
        lost = Outcome(FAILED, "orphaned", None, outcomes.commit_of(entry))
    if entry.cancel:
        if queue.finish(entry.run_id, "cancelled", "cancelled", "its worker died"):
            note(entry, Outcome("cancelled", "cancelled", "its worker died", lost.commit))
            lost_run(entry, f"its {worker} was lost while it was being cancelled")
        return
    if entry.attempt >= MAX_ATTEMPTS:
        message = f"its worker died {entry.attempt} times; not queued again"
        if queue.finish(entry.run_id, FAILED, "abandoned", message):
            log.warning("run %s (%s %s): %s", entry.run_id, entry.repo, entry.ref, message)
            note(entry, Outcome(FAILED, "abandoned", message, lost.commit, recorded=lost.recorded))
            lost_run(entry, f"its {worker} was lost; {message}")
        return
    again = queue.requeue(entry.run_id)
    if again is None:
        return  # another worker recovered it first
    message = f"its worker (pid {entry.worker_pid}) died; queued again as run {again.run_id}"
    log.warning("run %s (%s %s): %s", entry.run_id, entry.repo, entry.ref, message)
    note(entry, Outcome(FAILED, lost.reason or "orphaned", message, lost.commit, lost.duration_s))
    lost_run(entry, f"its {worker} was lost; queued again as run {again.run_id}")


def reconcile_run(entry: Entry) -> None:
    """Fail the run if it is still in flight and remove its container (if docker)."""
    from quire.ci.store.reconcile import reconcile

    store = outcomes.store_of(entry)
    containers = entry.executor == "docker"
    try:
        actions = reconcile([store], containers=containers, in_flight_only=True)
    except QuireError as exc:  # docker unavailable: still fix the records
        log.warning("reconcile of %s: containers not checked: %s", store.repo, exc)
        actions = reconcile([store], containers=False, in_flight_only=True)
    for action in actions:
        log.info("reconcile: %s", action)


def owner() -> Owner:
    """This worker's identity in the queue."""
    import os

    from quire.ci.store.liveness import process_start_ticks

    pid = os.getpid()
    return Owner(pid, process_start_ticks(pid), socket.gethostname())
