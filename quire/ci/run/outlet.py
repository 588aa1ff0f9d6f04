"""The one outlet of a run: every event goes in here, is masked once, and fans out.

    orchestrator, job runner, runtime, executors
                   | emit(event) / output(job, stream, bytes)
                   v
               RunOutlet   -- masks secrets (text fields; output as a stream)
                   |
       +-----------+-------------+
       v           v             v
   JsonLogs    RunRecords     reporter (terminal, or whatever the caller gave)
   log.jsonl   state.yml ...

Subscribers are called in order, the durable ones first, so a record is on
disk before the terminal says it happened. A subscriber that cannot write
(`StoreWriteFailed`: a full disk) does not stop the others: the outlet keeps
the failure, warns once, and the run's parts stop the run (`failure`).
A subscriber may call back into the outlet (a warning about a record it
could not write): the lock is re-entrant. Output bytes are masked per (job, stream) across chunk
boundaries; what a stream still holds back is let out before the next event
of the same job (or at the end), so the order of a job's events never
changes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar, cast

from quire.ci.events import (
    Event,
    Level,
    Notice,
    Output,
    RunFinished,
    StreamName,
    TextEvent,
)
from quire.ci.run.redact import Redactor, StreamRedactor
from quire.errors import StoreWriteFailed


class Subscriber(Protocol):
    """Something that watches a run: it gets every event, already masked."""

    def handle(self, event: Event) -> None: ...

    def close(self) -> None:
        """The run is over (or abandoned): release files, clear the screen's status."""


E = TypeVar("E", bound=TextEvent)
_KeyFilter = Callable[[tuple[str | None, StreamName]], bool]


class RunOutlet:
    """Masks secrets once and hands every event to every subscriber, in order."""

    def __init__(self, redactor: Redactor, subscribers: Sequence[Subscriber]) -> None:
        self._redactor = redactor
        self._subscribers = list(subscribers)
        self._streams: dict[tuple[str | None, StreamName], StreamRedactor] = {}
        # Re-entrant: a subscriber may report trouble through the outlet itself.
        self._lock = threading.RLock()
        self._closed = False
        self.failures: list[StoreWriteFailed] = []
        self._warning = False

    @property
    def failure(self) -> StoreWriteFailed | None:
        """The first write that failed (the run cannot be recorded whole), or None."""
        return self.failures[0] if self.failures else None

    def check(self) -> None:
        """Raise the first failed write, if any: a run that cannot be recorded stops."""
        if self.failures:
            raise self.failures[0]

    def hide(self, value: str) -> None:
        """Mask `value` from now on (a secret a job asked for)."""
        with self._lock:
            self._redactor.add(value)

    def emit(self, event: E) -> E:
        """Mask `event`, deliver it, and return it as delivered."""
        with self._lock:
            job = getattr(event, "job", None)
            if isinstance(event, RunFinished):
                self._release(lambda key: True)
            else:
                self._release(lambda key: key[0] == job)
            safe = cast(E, event.redacted(self._redactor))
            self._deliver(safe)
            return safe

    def output(self, job: str | None, stream: StreamName, data: bytes) -> None:
        """A chunk of output of `job` (None: the image build), as it arrived."""
        with self._lock:
            key = (job, stream)
            redactor = self._streams.get(key)
            if redactor is None:
                redactor = self._streams[key] = self._redactor.stream()
            safe = redactor.feed(data)
            if safe:
                self._deliver(Output(job, stream, safe))

    def notice(self, text: str, *, level: Level = Level.info) -> None:
        """quire's own word about the run."""
        self.emit(Notice(text, level))

    def warning(self, text: str) -> None:
        self.emit(Notice(text, Level.warning))

    def close(self) -> None:
        """Let out what the streams hold and close every subscriber (once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._release(lambda key: True)
            finally:
                _close_all(self._subscribers)

    def _release(self, which: _KeyFilter) -> None:
        for key in [key for key in self._streams if which(key)]:
            held = self._streams.pop(key).flush()
            if held:
                self._deliver(Output(key[0], key[1], held))

    def _deliver(self, event: Event) -> None:
        for subscriber in self._subscribers:
            try:
                subscriber.handle(event)
            except StoreWriteFailed as exc:
                self._failed(exc)

    def _failed(self, exc: StoreWriteFailed) -> None:
        self.failures.append(exc)
        if len(self.failures) > 1 or self._warning:
            return
        self._warning = True  # the warning itself may fail to be written: say it once
        try:
            self._deliver(Notice(f"{exc}; the run stops", Level.warning))
        finally:
            self._warning = False


def _close_all(subscribers: Iterable[Subscriber]) -> None:
    """Close each; the first failure is raised after all had their turn."""
    failure: BaseException | None = None
    for subscriber in subscribers:
        try:
            subscriber.close()
        except BaseException as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
