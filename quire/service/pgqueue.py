"""The run queue on PostgreSQL: one database shared by hooks and workers on many machines.

Schema (versions in `schema_version`; applied by `quire.service.pgschema.migrate()`,
`quire ci db migrate`):

    CREATE TABLE queue (
        -- the columns of the SQLite queue (quire.service.queue), same names and meanings;
        -- worker_host is the worker's --name (default: its host name), and:
        lease_until  timestamptz,      -- running: the claim is its worker's until then
        lease_s      double precision, -- the length of that lease
        url          text              -- (version 2) where workers fetch the pushed object
    );
    CREATE UNIQUE INDEX one_running_per_ref ON queue (git_dir, ref) WHERE state = 'running';

A claim is `SELECT ... FOR UPDATE SKIP LOCKED` of the oldest queued row
whose repository and ref has nothing running, moved to running with a lease
(`lease_until`, by the database's clock: the machines' clocks never
matter). The worker renews it while the run goes. A lease that runs out
means its worker is gone, on whatever machine: `expired()` hands such rows
to a live worker, which queues each again once (`requeue`) and gives it up
(`abandoned`) the second time, as the SQLite queue does after a kill -9.
Except within one lease of the server's start: leases that ran out while
the database was down say nothing about their workers, which get that
long to renew them.
`enqueue` and `requeue` NOTIFY `quire_queue`; idle workers LISTEN
(`notifications()`), so a push starts at once on any machine.

Errors: the server cannot be reached or the connection broke:
`QueueUnavailable` naming the server (never its password); the next call
connects again. A schema newer than this quire: `QueueCorrupt`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg

from quire.service.errors import QueueEntryNotFound, QueueUnavailable
from quire.service.pgschema import (
    CHANNEL,
    LIVE_WORKERS,
    SCHEMA_VERSION,
    Reconnecting,
    connect,
    refuse_newer,
    schema_version,
    too_old,
    unavailable,
)
from quire.service.queue import (
    CLAIM_SCHEDULE,
    INSERT_RUN,
    KEPT_EXECUTOR,
    LAST_SCHEDULED,
    Entry,
    Owner,
    Push,
    QueueReads,
    new_run_id,
    push_values,
    trigger_text,
    utc_text,
)
from quire.service.queues import DEFAULT_LEASE_S, server_name

if TYPE_CHECKING:
    from quire.service.pgschema import Connection
    from quire.service.queue import HasJson
    from quire.service.registry import WorkerInfo

__all__ = ["CHANNEL", "Notifications", "PgQueue"]


def _entry(row: dict[str, Any]) -> Entry:
    return Entry(row)


class PgQueue(QueueReads):
    """An open connection to the queue database (the `RunQueue` protocol).

    `lease_s`: how long a claim made through this connection lasts unless
    renewed. One connection serves one worker or one command; `renew` only
    extends claims this connection's owner made.
    """

    leases = True
    MARK = "%s"

    def __init__(self, url: str, *, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.url = url
        self.path = server_name(url)
        self.lease_s = lease_s
        self._owner: Owner | None = None
        self._connection = Reconnecting(url)
        try:
            with self._translated("open"):
                version = schema_version(self._conn())
            refuse_newer(url, version)
        except BaseException:
            self.close()
            raise
        if version < SCHEMA_VERSION:
            self.close()
            raise too_old(url, version)

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> PgQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------------

    def _conn(self) -> Connection:
        return self._connection.get()

    @contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # The server went away (or the connection with it): the next call connects again.
            raise QueueUnavailable(unavailable(self.url, doing, exc)) from exc

    @contextmanager
    def _write(self, doing: str) -> Iterator[Connection]:
        with self._translated(doing):
            db = self._conn()
            with db.transaction():
                yield db

    def _select(self, query: str, *params: Any) -> list[Entry]:
        with self._translated("read"):
            return [_entry(row) for row in self._conn().execute(query, params).fetchall()]

    def check(self) -> None:
        """The server answers and the schema is this quire's (`QueueUnavailable` if not)."""
        with self._translated("check"):
            version = schema_version(self._conn())
        refuse_newer(self.url, version)

    def verify(self) -> None:
        """Nothing to verify: no file can be replaced under a server's connection."""

    def notifications(self) -> Notifications:
        """A listening connection of its own: readable when a run may be waiting."""
        return Notifications(self.url)

    # --- the hook's side -----------------------------------------------------------------------

    def enqueue(
        self, pushes: Sequence[Push], trigger: HasJson | None = None, executor: str | None = None
    ) -> list[Entry]:
        """Queue one run per push, in one transaction, and wake listening workers.
        `trigger`: how they were started (None: a push); `executor`: the one to run them
        with (None: the worker's choice when it claims them)."""
        rows = []
        with self._write("queue a run in") as db:
            for push in pushes:
                found = db.execute(
                    INSERT_RUN.replace("?", "%s") + " RETURNING *",
                    (new_run_id(), *push_values(push), trigger_text(trigger), executor),
                ).fetchone()
                rows.append(found)
            # Delivered at commit, so a woken worker finds the rows.
            db.execute(f"NOTIFY {CHANNEL}")
        return [_entry(row) for row in rows if row is not None]

    # --- schedules (quire.service.schedule) ----------------------------------------------------

    def last_scheduled(self, git_dir: str, cron: str, ref: str) -> str | None:
        """The latest scheduled time taken for this schedule (RFC 3339 UTC), None if never."""
        with self._translated("read"):
            row = self._conn().execute(LAST_SCHEDULED, (git_dir, cron, ref)).fetchone()
        return None if row is None else row["due_at"]

    def claim_schedule(
        self,
        git_dir: str,
        cron: str,
        ref: str,
        due_at: str,
        push: Push | None = None,
        trigger: HasJson | None = None,
    ) -> tuple[bool, Entry | None]:
        """Take the scheduled time `due_at` and, with `push`, queue its run, in one
        transaction; (False, None) when another worker took it first (the primary key)."""
        run_id = None if push is None else new_run_id()
        with self._write("queue a scheduled run in") as db:
            taken = db.execute(CLAIM_SCHEDULE, (git_dir, cron, ref, due_at, run_id))
            if taken.rowcount != 1:
                return False, None
            row = None
            if push is not None:
                row = db.execute(
                    INSERT_RUN.replace("?", "%s") + " RETURNING *",
                    (run_id, *push_values(push), trigger_text(trigger), None),
                ).fetchone()
                db.execute(f"NOTIFY {CHANNEL}")
        return True, None if row is None else _entry(row)

    # --- the worker's side ---------------------------------------------------------------------

    def claim(self, owner: Owner) -> Entry | None:
        """The oldest queued row whose repository and ref has nothing running, now running
        for `owner` with a lease of `lease_s`; None if there is none."""
        self._owner = owner
        for _ in range(10):
            try:
                return self._claim_once(owner)
            except psycopg.errors.UniqueViolation:
                # Another worker claimed a row of the same repository and ref in between:
                # one_running_per_ref refused ours; look again (that row is skipped now).
                continue
        return None

    def _claim_once(self, owner: Owner) -> Entry | None:
        with self._write("claim a run from") as db:
            found = db.execute(
                "SELECT seq FROM queue AS q WHERE state = 'queued' AND NOT EXISTS"
                " (SELECT 1 FROM queue AS r WHERE r.state = 'running'"
                "  AND r.git_dir = q.git_dir AND r.ref = q.ref)"
                " ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED"
            ).fetchone()
            if found is None:
                return None
            row = db.execute(
                "UPDATE queue SET state = 'running', worker_pid = %s, worker_start = %s,"
                " worker_host = %s, claimed_at = %s,"
                " lease_until = now() + make_interval(secs => %s), lease_s = %s"
                " WHERE seq = %s RETURNING *",
                (
                    owner.pid,
                    owner.start,
                    owner.host,
                    utc_text(),
                    self.lease_s,
                    self.lease_s,
                    found["seq"],
                ),
            ).fetchone()
        return None if row is None else _entry(row)

    def renew(self, run_id: str, seconds: float) -> Entry | None:
        """Extend this owner's lease of `run_id` to `seconds` from now; returns the row
        (its `cancel` flag says whether to stop), or None if the claim is not ours any
        more (its lease ran out and another worker took it over)."""
        if self._owner is None:
            return None
        found = self._select(
            "UPDATE queue SET lease_until = now() + make_interval(secs => %s), lease_s = %s"
            " WHERE run_id = %s AND state = 'running' AND worker_host = %s AND worker_pid = %s"
            " AND worker_start IS NOT DISTINCT FROM %s RETURNING *",
            seconds,
            seconds,
            run_id,
            self._owner.host,
            self._owner.pid,
            self._owner.start,
        )
        return found[0] if found else None

    def expired(self, owner: Owner) -> list[Entry]:
        """Running rows whose lease ran out, taken over by `owner` (leased to it for
        `lease_s`, so no other worker recovers them too); returned as they were, with
        the lost worker's name and pid. None within a lease of the server's start."""
        with self._write("take over expired runs in") as db:
            rows = db.execute(
                "WITH lost AS (SELECT * FROM queue WHERE state = 'running'"
                "  AND lease_until < now()"
                # Within a lease of the server's start, its worker has not had a chance yet.
                "  AND now() > pg_postmaster_start_time() + make_interval(secs => lease_s)"
                "  ORDER BY seq FOR UPDATE SKIP LOCKED)"
                " UPDATE queue AS q SET worker_pid = %s, worker_start = %s, worker_host = %s,"
                " lease_until = now() + make_interval(secs => %s), lease_s = %s"
                " FROM lost WHERE q.seq = lost.seq RETURNING lost.*",
                (owner.pid, owner.start, owner.host, self.lease_s, self.lease_s),
            ).fetchall()
        return sorted((_entry(row) for row in rows), key=lambda e: e.seq)

    def started(self, run_id: str, executor: str, pid: int, start: int | None) -> bool:
        """Record the child running `run_id`; True if a cancel was asked for meanwhile."""
        with self._write("record a started run in") as db:
            row = db.execute(
                "UPDATE queue SET executor = %s, child_pid = %s, child_start = %s"
                " WHERE run_id = %s AND state = 'running' RETURNING cancel",
                (executor, pid, start, run_id),
            ).fetchone()
        return bool(row and row["cancel"])

    def release(self, run_id: str) -> None:
        """Put a claimed row back (its child could not be started); it keeps its place."""
        with self._write("release a run in") as db:
            db.execute(
                "UPDATE queue SET state = 'queued', worker_pid = NULL, worker_start = NULL,"
                f" worker_host = NULL, claimed_at = NULL, executor = {KEPT_EXECUTOR},"
                " child_pid = NULL,"
                " child_start = NULL, lease_until = NULL WHERE run_id = %s AND state = 'running'",
                (run_id,),
            )
            db.execute(f"NOTIFY {CHANNEL}")

    def finish(self, run_id: str, outcome: str, reason: str | None, message: str | None) -> bool:
        """running -> done; False if the row was not running (someone else finished it)."""
        with self._write("record a finished run in") as db:
            done = db.execute(
                "UPDATE queue SET state = 'done', finished_at = %s, outcome = %s, reason = %s,"
                " message = %s, lease_until = NULL WHERE run_id = %s AND state = 'running'",
                (utc_text(), outcome, reason, message, run_id),
            )
        return bool(done.rowcount == 1)

    def requeue(self, run_id: str) -> Entry | None:
        """A lost worker's running row, queued again under a new run id at its old place;
        None if the row is not running any more."""
        with self._write("queue a run again in") as db:
            row = db.execute(
                "UPDATE queue SET state = 'queued', run_id = %s, retry_of = %s,"
                f" attempt = attempt + 1, executor = {KEPT_EXECUTOR}, worker_pid = NULL,"
                " worker_start = NULL, worker_host = NULL, child_pid = NULL,"
                " child_start = NULL, claimed_at = NULL, lease_until = NULL"
                " WHERE run_id = %s AND state = 'running' RETURNING *",
                (new_run_id(), run_id, run_id),
            ).fetchone()
            if row is not None:
                db.execute(f"NOTIFY {CHANNEL}")
        return None if row is None else _entry(row)

    # --- the worker registry (quire.service.registry) ----------------------------------------

    def heartbeat(self, worker: WorkerInfo) -> None:
        """Register `worker`, or refresh its row: seen now (the database's clock), running
        `worker.running`."""
        with self._write("record a worker in") as db:
            db.execute(
                "INSERT INTO workers (id, name, host, pid, pid_start, started_at, seen_at,"
                " concurrency, running, ttl_s) VALUES (%s, %s, %s, %s, %s, %s, now(), %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET seen_at = now(), running = excluded.running,"
                " concurrency = excluded.concurrency, ttl_s = excluded.ttl_s",
                (
                    worker.id,
                    worker.name,
                    worker.host,
                    worker.pid,
                    worker.start,
                    worker.started_at,
                    worker.concurrency,
                    worker.running_text(),
                    worker.ttl_s,
                ),
            )

    def unregister(self, worker_id: str) -> None:
        """Delete a worker's row (it stops cleanly)."""
        with self._write("remove a worker from") as db:
            db.execute("DELETE FROM workers WHERE id = %s", (worker_id,))

    def workers(self) -> list[WorkerInfo]:
        """The live workers (seen within their ttl, by the database's clock), by name."""
        from quire.service.registry import worker_from_row

        with self._translated("read"):
            rows = (
                self._conn()
                .execute(f"SELECT * FROM workers WHERE {LIVE_WORKERS} ORDER BY name, started_at")
                .fetchall()
            )
        return [worker_from_row(row) for row in rows]

    def forget_workers(self, after_s: float) -> int:
        """Delete the rows of dead workers not seen for `after_s` seconds; how many went."""
        with self._write("remove dead workers from") as db:
            gone = db.execute(
                "DELETE FROM workers WHERE NOT (" + LIVE_WORKERS + ")"
                " AND seen_at < now() - make_interval(secs => %s)",
                (after_s,),
            )
        return int(gone.rowcount)

    def cancel(self, run_id: str, by: str | None = None) -> Entry:
        """Cancel a row: a queued one is done (`cancelled`) at once; a running one is
        flagged (asked by `by`), and its worker stops it (at its next renewal), recorded as
        cancelled by `by`. Returns the row as it was."""
        with self._write("cancel a run in") as db:
            row = db.execute(
                "SELECT * FROM queue WHERE run_id = %s AND state != 'done' FOR UPDATE",
                (run_id,),
            ).fetchone()
            if row is None:
                raise QueueEntryNotFound(f"run {run_id} is no longer queued or running")
            if row["state"] == "queued":
                db.execute(
                    "UPDATE queue SET state = 'done', outcome = 'cancelled',"
                    " reason = 'cancelled', message = 'cancelled before it started',"
                    " finished_at = %s WHERE seq = %s",
                    (utc_text(), row["seq"]),
                )
            else:
                db.execute(
                    "UPDATE queue SET cancel = true, cancel_by = %s WHERE seq = %s",
                    (by, row["seq"]),
                )
        return _entry(row)

    def prune(self, keep: int = 1000) -> int:
        """Forget all but the newest `keep` done rows; returns how many went."""
        with self._write("prune") as db:
            gone = db.execute(
                "DELETE FROM queue WHERE state = 'done' AND seq NOT IN"
                " (SELECT seq FROM queue WHERE state = 'done' ORDER BY seq DESC LIMIT %s)",
                (keep,),
            )
        return int(gone.rowcount)


class Notifications:
    """A connection that LISTENs on the queue's channel; `fileno()` for a selector.

    If the connection breaks, `drain()` reports it once and the worker's
    fallback poll takes over until `reconnect()` succeeds.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._db: Connection | None = None
        self._fd = -1
        self.reconnect()

    def reconnect(self) -> None:
        """Listen again on a new connection (`QueueUnavailable` if the server is gone)."""
        self.close()
        db = connect(self.url, autocommit=True)
        try:
            db.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as exc:
            db.close()
            raise QueueUnavailable(unavailable(self.url, "listen on", exc)) from exc
        self._db = db
        self._fd = int(db.fileno())

    @property
    def broken(self) -> bool:
        return self._db is None or self._db.closed or self._db.broken

    def fileno(self) -> int:
        # Kept after the connection broke: a selector looks it up to unregister it.
        return self._fd

    def drain(self) -> int:
        """Read every pending notification; returns how many there were."""
        if self._db is None:
            return 0
        count = 0
        try:
            self._db.pgconn.consume_input()
            while self._db.pgconn.notifies() is not None:
                count += 1
        except psycopg.Error:
            self.close()
        return count

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a notification; True if one came."""
        import selectors

        if self._db is None:
            return False
        if self.drain():
            return True
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            ready = selector.select(timeout)
        return bool(ready) and self.drain() > 0

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> Notifications:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
