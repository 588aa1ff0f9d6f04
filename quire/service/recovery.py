"""Runs of a dead worker: found by pid liveness, reaped, then queued again once.

A running row belongs to a worker (pid + /proc start time + host) and,
once started, to its child `quire ci run`. When the worker is dead (on
this host) and so is the child (it gets SIGTERM when the worker dies, and
records its run `interrupted`), the run is reconciled like
`quire ci reconcile` does (a run still in active/ is failed as
`orphaned`, its container removed), its outcome is noted, and the row is
queued again with a new run id at its old place in the queue; the second
time a worker dies under it, it is given up (`abandoned`). A run that
finished normally just as its worker died keeps its result.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from quire.ci.store.liveness import is_alive
from quire.ci.store.runs import RunState
from quire.errors import QuireError
from quire.service import outcome as outcomes
from quire.service.outcome import FAILED, Outcome
from quire.service.queue import MAX_ATTEMPTS, Entry, Owner, Queue

log = logging.getLogger("quire.worker")

LOST_REASONS = ("interrupted", "orphaned", "unreadable")
Recorder = Callable[[Entry, Outcome], None]


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


def recover(queue: Queue, me: Owner, note: Recorder) -> int:
    """Recover every running row of dead workers; returns how many were handled."""
    handled = 0
    for entry in queue.running():
        if orphaned(entry, me):
            recover_one(queue, entry, note)
            handled += 1
    return handled


def recover_one(queue: Queue, entry: Entry, note: Recorder) -> None:
    """Reap one dead worker's run, note its outcome, and queue it again (once)."""
    reconcile_run(entry)
    run = outcomes.find_record(entry)
    if run is not None and run.state in (RunState.complete, RunState.failed):
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
        return
    if entry.attempt >= MAX_ATTEMPTS:
        message = f"its worker died {entry.attempt} times; not queued again"
        if queue.finish(entry.run_id, FAILED, "abandoned", message):
            log.warning("run %s (%s %s): %s", entry.run_id, entry.repo, entry.ref, message)
            note(entry, Outcome(FAILED, "abandoned", message, lost.commit, recorded=lost.recorded))
        return
    again = queue.requeue(entry.run_id)
    if again is None:
        return  # another worker recovered it first
    message = f"its worker (pid {entry.worker_pid}) died; queued again as run {again.run_id}"
    log.warning("run %s (%s %s): %s", entry.run_id, entry.repo, entry.ref, message)
    note(entry, Outcome(FAILED, lost.reason or "orphaned", message, lost.commit, lost.duration_s))


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
