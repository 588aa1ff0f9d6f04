"""The worker registry: which `quire ci worker` processes are live, and what they run.

Each worker keeps a row about itself in the queue's store (the SQLite queue
file, or the `workers` table on PostgreSQL) and refreshes it at every poll
(its heartbeat, `seen_at`); it deletes the row when it stops cleanly.

    WorkerInfo        one worker's row, as `quire ci workers` shows it
    new_worker_id()   a worker's key in the registry (new each time it starts)
    Registration      a worker's own row: its heartbeat, and its removal on a clean stop
    FORGET_AFTER_S    how long a dead worker's row stays before a live worker deletes it

When a worker counts as live:

- PostgreSQL: while its heartbeat is younger than its `ttl_s` (its lease, by
  the database's clock): a worker killed -9, or whose machine vanished,
  stops counting a lease after its last poll, as its runs do.
- SQLite (one machine): while its process lives (pid and /proc start time,
  as the queue's own recovery judges workers); a row of another host (a
  state directory on a shared disk) by its heartbeat, as on PostgreSQL.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# A dead worker's row no longer counts once its heartbeat is older than its ttl; live
# workers delete it this long after its last heartbeat, so `quire ci workers` stays short.
FORGET_AFTER_S = 600.0


class WorkerInfo(BaseModel):
    """One worker in the registry.

    `seen_at` is the queue's clock at the last heartbeat (None before the
    queue has stored one); `running` the run ids it had at that heartbeat.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    name: str  # `--name` (default: the host name); the name its claims carry
    host: str  # the machine's host name
    pid: int
    start: int | None = None  # /proc start ticks of `pid`: a reused pid is another process
    started_at: datetime
    seen_at: datetime | None = None
    concurrency: int = Field(ge=0)  # how many runs at once
    running: tuple[str, ...] = ()
    ttl_s: float = Field(gt=0)  # live while seen within this many seconds

    def running_text(self) -> str:
        """The `running` column as stored: run ids separated by spaces."""
        return " ".join(self.running)


def running_from_text(text: str | None) -> tuple[str, ...]:
    """The `running` column read back."""
    return tuple(text.split()) if text else ()


def worker_from_row(row: Mapping[str, Any]) -> WorkerInfo:
    """A `workers` row (SQLite or PostgreSQL, same columns) as a WorkerInfo."""
    return WorkerInfo(
        id=row["id"],
        name=row["name"],
        host=row["host"],
        pid=row["pid"],
        start=row["pid_start"],
        started_at=row["started_at"],
        seen_at=row["seen_at"],
        concurrency=row["concurrency"],
        running=running_from_text(row["running"]),
        ttl_s=row["ttl_s"],
    )


def seen_within_ttl(worker: WorkerInfo, now: datetime) -> bool:
    """Whether `worker`'s last heartbeat is younger than its ttl at `now` (PostgreSQL's
    rule, there by the database's clock)."""
    if worker.seen_at is None:
        return False
    return now < worker.seen_at + timedelta(seconds=worker.ttl_s)


def local_live(worker: WorkerInfo, now: datetime, host: str | None = None) -> bool:
    """The SQLite queue's rule: a worker of this host (`host`, default this machine's
    name) lives while its process does (pid and /proc start time); another host's
    while its heartbeat is younger than its ttl."""
    if worker.host == (host or socket.gethostname()):
        from quire.ci.store.liveness import is_alive

        return is_alive(worker.pid, worker.start)
    return seen_within_ttl(worker, now)


def new_worker_id() -> str:
    """A worker's key in the registry: unique per start, on any machine."""
    return os.urandom(8).hex()


class Registration:
    """A worker's own row: `beat(queue, running)` at each poll and whenever what it runs
    changes, `leave(queue)` when it stops cleanly. Every `forget_every_s` (on `clock`) a
    beat also deletes the rows of workers dead for `FORGET_AFTER_S`.

    A queue without a registry (the worker's in-memory unit-test fake) is left alone.
    """

    def __init__(
        self,
        info: WorkerInfo,
        clock: Callable[[], float],
        *,
        forget_every_s: float = 60.0,
        forget_after_s: float = FORGET_AFTER_S,
    ) -> None:
        self.info = info
        self.clock = clock
        self.forget_every_s = forget_every_s
        self.forget_after_s = forget_after_s
        self.next_forget = 0.0
        self.beaten: tuple[str, ...] | None = None  # `running` at the last beat that held

    def stale(self, running: Iterable[str]) -> bool:
        """Whether the row says something else than `running` (or was never written)."""
        return self.beaten != tuple(running)

    def beat(self, queue: object, running: Iterable[str]) -> int:
        """Register or refresh; returns how many dead workers' rows were deleted. Raises
        the queue's errors (`QueueUnavailable`: the worker tries again at its next poll)."""
        heartbeat = getattr(queue, "heartbeat", None)
        if heartbeat is None:
            return 0
        now_running = tuple(running)
        heartbeat(self.info.model_copy(update={"running": now_running}))
        self.beaten = now_running
        now = self.clock()
        if now < self.next_forget:
            return 0
        self.next_forget = now + self.forget_every_s
        forgotten: int = queue.forget_workers(self.forget_after_s)  # type: ignore[attr-defined]
        return forgotten

    def leave(self, queue: object) -> None:
        """Delete the row (a clean stop)."""
        unregister = getattr(queue, "unregister", None)
        if unregister is not None:
            unregister(self.info.id)
            self.beaten = None
