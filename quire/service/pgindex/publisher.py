"""A worker's publisher: ships the directories of the runs it runs into the run index, as
they change (a thread, every `interval_s`), so readers on any machine follow them live.

    track(entry)      a run this worker started: publish it from now on
    finish(run_id)    its child ended: ship what is left (now, in the caller's thread),
                      then stop publishing it
    lost(entry, msg)  a run another worker lost (its lease ran out): failed in the index

What goes is `quire.ci.store.shipping.scan()` of the run's directory against
what was shipped. A batch that cannot be shipped (the database is away) is
not counted as shipped: the publisher forgets what it knew of those runs
and asks the database again (`marks`) before the next batch, so it resumes
exactly where the database is, and nothing is sent twice or lost.

Without a database there is no publisher (`NoPublisher`): the files are the index.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from quire.ci.store.runs import FINISHED, RunState, RunStore
from quire.ci.store.shipping import FileChange, Marks, RunRow, more, scan
from quire.errors import QuireError
from quire.service.queue import Entry

log = logging.getLogger("quire.worker")

INTERVAL_S = 0.25
FINISHED_STATES = frozenset(state.value for state in FINISHED)
IN_FLIGHT_STATES = frozenset(state.value for state in RunState if state not in FINISHED)
# After a batch could not be shipped (the database is away): the thread's next try.
RETRY_S = 5.0


class IndexWrites(Protocol):
    """The run index as a publisher writes it (`IndexWriter`; a fake in unit tests)."""

    def ship(self, rows: list[RunRow], changes: list[FileChange]) -> None: ...
    def marks(self, run_id: str) -> Marks: ...
    def state(self, run_id: str) -> str | None: ...
    def lost(self, run_id: str, message: str) -> bool: ...
    def close(self) -> None: ...


class RunPublisher(Protocol):
    """What the worker asks of a publisher (no-ops without a database)."""

    def track(self, entry: Entry) -> None: ...
    def finish(self, run_id: str) -> None: ...
    def lost(self, entry: Entry, message: str) -> None: ...
    def close(self) -> None: ...


class NoPublisher:
    """No run index but the files: nothing to publish."""

    def track(self, entry: Entry) -> None:
        pass

    def finish(self, run_id: str) -> None:
        pass

    def lost(self, entry: Entry, message: str) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class _Tracked:
    entry: Entry
    marks: Marks | None = None  # None: unknown, ask the index
    state: str | None = None  # the state last shipped
    ending: bool = False  # its child ended: drop it once everything is shipped
    more: bool = False  # its last scan was full: more may be left to ship


@dataclass
class Publisher:
    """Publishes the runs of one worker (`name`, state directory `state_dir`)."""

    index: IndexWrites
    name: str
    state_dir: Path
    interval_s: float = INTERVAL_S
    retry_s: float = RETRY_S
    runs: dict[str, _Tracked] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _failed: bool = False  # the last batch failed: the thread waits `retry_s`

    def store(self, entry: Entry) -> RunStore:
        """Where the child `quire ci run` of `entry` writes its run."""
        return RunStore(entry.repo, root=self.state_dir / "runs" / entry.repo)

    def track(self, entry: Entry) -> None:
        with self._lock:
            self.runs[entry.run_id] = _Tracked(entry)

    def finish(self, run_id: str) -> None:
        """Ship the run's last changes now; it stays tracked if that failed (the thread
        tries again)."""
        with self._lock:
            tracked = self.runs.get(run_id)
            if tracked is None:
                return
            tracked.ending = True
            self._drain([tracked])

    def lost(self, entry: Entry, message: str) -> None:
        try:
            if self.index.lost(entry.run_id, message):
                log.info("run %s: failed in the run index: %s", entry.run_id, message)
        except QuireError as exc:
            log.error("run %s: cannot mark it lost in the run index: %s", entry.run_id, exc)

    def publish(self) -> None:
        """One pass over every tracked run."""
        with self._lock:
            self._publish(list(self.runs.values()))

    def _drain(self, tracked: list[_Tracked]) -> None:
        """Publish until nothing is left of `tracked` (a scan ships a bounded batch) or a
        batch fails (the thread tries again)."""
        while True:
            self._publish(tracked)
            if self._failed:
                return
            tracked = [run for run in tracked if run.more]
            if not tracked:
                return

    def _publish(self, tracked: list[_Tracked]) -> None:
        rows: list[RunRow] = []
        changes: list[FileChange] = []
        after: dict[str, tuple[Marks, str, bool]] = {}
        try:
            for run in tracked:
                found = self._batch(run)
                if found is None:
                    continue
                row, run_changes, marks = found
                if run_changes or row.state != run.state:
                    rows.append(row)
                    changes += run_changes
                after[run.entry.run_id] = (marks, row.state, more(run_changes))
            if rows:
                self.index.ship(rows, changes)
        except QuireError as exc:
            # Not shipped, or not known to be: ask the index what it has before the next batch.
            log.error("cannot publish runs to the run index: %s; trying again", exc)
            for run in tracked:
                run.marks = None
            self._failed = True
            return
        self._failed = False
        for run in tracked:
            if run.entry.run_id not in after:
                run.more = False  # not scanned (not found, or moving): the thread sees to it
                continue
            run.marks, run.state, run.more = after[run.entry.run_id]
            if run.ending and not run.more:
                self.runs.pop(run.entry.run_id, None)

    def _batch(self, run: _Tracked) -> tuple[RunRow, list[FileChange], Marks] | None:
        entry = run.entry
        where = _locate(self.store(entry), entry.run_id)
        if where is None:
            if run.ending:  # it ended before its run existed: nothing to publish
                self.runs.pop(entry.run_id, None)
            return None
        state, path = where
        if run.marks is None:
            run.marks = self.index.marks(entry.run_id)
            run.state = self.index.state(entry.run_id)
        changes, marks = scan(entry.run_id, path, run.marks)
        if state.value in FINISHED_STATES and more(changes):
            # Not all of it goes in this batch: a reader that sees a run finished must see
            # its logs whole, so it stays in flight in the index until its last batch.
            state = RunState(run.state) if run.state in IN_FLIGHT_STATES else RunState.active
        if not path.is_dir():
            # It moved (running/ -> complete/) while scanned: what was not found there is not
            # deleted. A run's directory only moves on, so one still there was there throughout;
            # the next pass scans it where it went.
            return None
        row = RunRow(
            run_id=entry.run_id,
            repo=entry.repo,
            git_dir=entry.git_dir,
            worker=self.name,
            state_dir=str(self.state_dir),
            state=state.value,
        )
        return row, changes, marks

    # --- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="quire-publisher", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.retry_s if self._failed else self.interval_s):
            try:
                self.publish()
            except Exception:  # a bug here must not stop the worker's runs
                log.exception("the run publisher failed; going on")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:  # what is left of runs still tracked
            self._drain(list(self.runs.values()))
        self.index.close()


def _locate(store: RunStore, run_id: str) -> tuple[RunState, Path] | None:
    """The run's state and directory, by looking in each state directory (no listing)."""
    for _ in range(2):  # it may move between two looks
        for state in RunState:
            path = store.root / state.value / run_id
            if path.is_dir():
                return state, path
    return None
