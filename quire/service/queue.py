"""The run queue: one SQLite database in the state directory, shared by hooks and workers.

    $QUIRE_STATE_DIR/queue.sqlite3      (WAL mode: -wal and -shm files beside it; all 0600)

Schema (version 3, kept in `PRAGMA user_version`; `_MIGRATIONS` brings older files up):

    CREATE TABLE queue (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order: oldest first
        run_id       TEXT NOT NULL UNIQUE,   -- the run's id in the store (new per attempt)
        git_dir      TEXT NOT NULL,          -- absolute path of the pushed repository
        ref          TEXT NOT NULL,          -- refs/heads/main, refs/tags/v1
        sha          TEXT NOT NULL,          -- the pushed object (a commit, or an annotated tag)
        pushed_at    TEXT NOT NULL,          -- RFC 3339, UTC
        state        TEXT NOT NULL,          -- queued | running | done
        attempt      INTEGER NOT NULL,       -- 2 once queued again after its worker died
        retry_of     TEXT,                   -- the run id of the attempt that worker lost
        executor     TEXT,                   -- host | docker, chosen when claimed
        worker_pid   INTEGER, worker_start INTEGER, worker_host TEXT,  -- who claimed it
        child_pid    INTEGER, child_start INTEGER,   -- its `quire ci run` (start: /proc ticks)
        claimed_at   TEXT, finished_at TEXT,
        cancel       INTEGER NOT NULL,       -- 1: `quire ci cancel` asked to stop it
        outcome      TEXT,                   -- done: complete | failed | cancelled
        reason       TEXT,                   -- why it failed (jobs-failed, error, no-pipeline, ...)
        message      TEXT,                   -- what a person reads about it
        url          TEXT,                   -- where workers fetch the pushed object (version
                                             -- 2; NULL: file:// of git_dir)
        trigger_json TEXT,                   -- how it was started (a Trigger's JSON; version 2);
                                             -- NULL: a push
        cancel_by    TEXT                    -- who asked it to stop (version 2)
    );
    -- At most one run per repository and ref at a time, enforced by the database itself.
    CREATE UNIQUE INDEX one_running_per_ref ON queue (git_dir, ref) WHERE state = 'running';
    -- The worker registry (version 3; quire.service.registry): one row per live worker,
    -- refreshed at each of its polls, deleted when it stops cleanly.
    CREATE TABLE workers (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, host TEXT NOT NULL,
        pid INTEGER NOT NULL, pid_start INTEGER,  -- live while this process is (this host)
        started_at TEXT NOT NULL, seen_at TEXT NOT NULL,   -- RFC 3339, UTC
        concurrency INTEGER NOT NULL, running TEXT NOT NULL,  -- run ids, space-separated
        ttl_s REAL NOT NULL           -- another host's row: live while seen within ttl_s
    );
    -- Each scheduled time of each schedule is taken once, whichever worker sees it first
    -- (quire.service.schedule); run_id NULL: seen, nothing queued (a new schedule, a lost ref).
    CREATE TABLE schedule_claims (
        git_dir TEXT NOT NULL, cron TEXT NOT NULL, ref TEXT NOT NULL,
        due_at  TEXT NOT NULL,               -- RFC 3339, UTC
        run_id  TEXT,
        PRIMARY KEY (git_dir, cron, ref, due_at)
    );

A row goes queued -> running (a worker claims it, in a write transaction:
never twice) -> done. A running row whose worker died is put back to
queued once, with a new run id (`requeue`); the second time it is done
with reason `abandoned`. Done rows stay as a short history.

Standard library only, and only its cheap corner: the post-receive hook
imports this on every push (no dataclasses, secrets or typing at run time).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import UTC, datetime

from quire.service.errors import (
    QueueCorrupt,
    QueueEntryNotFound,
    QueueReplaced,
    QueueUnavailable,
)
from quire.service.queues import DEFAULT_LEASE_S, database_url

TYPE_CHECKING = False  # typing itself costs the hook milliseconds
if TYPE_CHECKING:
    # sqlite3 is imported by the SQLite queue itself: a hook on PostgreSQL never needs it.
    import sqlite3
    from collections.abc import Iterator, Mapping, Sequence
    from typing import Any, Protocol

    from quire.service.pgqueue import PgQueue
    from quire.service.queues import Notifications, RunQueue
    from quire.service.registry import WorkerInfo

    StrPath = str | os.PathLike[str]

    class HasJson(Protocol):
        """A Trigger (quire.ci.store.records), by shape: the hook never imports pydantic."""

        def model_dump_json(self) -> str: ...

    class WorkQueue(Protocol):
        """The queue as a worker uses it: `Queue`, or the in-memory fake of the worker's
        unit tests (tests/unit/test_worker_loop_fakes.py)."""

        path: str

        def verify(self) -> None: ...
        def claim(self, owner: Owner) -> Entry | None: ...
        # Only called when the queue has `leases` (the PostgreSQL queue); the in-memory fake
        # of the worker's unit tests has neither, and the worker asks with getattr.
        def renew(self, run_id: str, seconds: float) -> Entry | None: ...
        def expired(self, owner: Owner) -> list[Entry]: ...
        def notifications(self) -> Notifications | None: ...
        def started(self, run_id: str, executor: str, pid: int, start: int | None) -> bool: ...
        def release(self, run_id: str) -> None: ...
        def finish(
            self, run_id: str, outcome: str, reason: str | None, message: str | None
        ) -> bool: ...
        def requeue(self, run_id: str) -> Entry | None: ...
        def running(self) -> list[Entry]: ...
        def get(self, run_id: str) -> Entry: ...
        def active(self) -> list[Entry]: ...
        def prune(self, keep: int = 1000) -> int: ...


QUEUE_FILE = "queue.sqlite3"
MAX_ATTEMPTS = 2  # a run whose worker died is queued again once; a second death gives up

QUEUED, RUNNING, DONE = "queued", "running", "done"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    git_dir TEXT NOT NULL,
    ref TEXT NOT NULL,
    sha TEXT NOT NULL,
    pushed_at TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    attempt INTEGER NOT NULL DEFAULT 1,
    retry_of TEXT,
    executor TEXT,
    worker_pid INTEGER,
    worker_start INTEGER,
    worker_host TEXT,
    child_pid INTEGER,
    child_start INTEGER,
    claimed_at TEXT,
    finished_at TEXT,
    cancel INTEGER NOT NULL DEFAULT 0,
    outcome TEXT,
    reason TEXT,
    message TEXT
)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS one_running_per_ref ON queue (git_dir, ref)"
    " WHERE state = 'running'",
    "CREATE INDEX IF NOT EXISTS by_state ON queue (state, seq)",
)
# Each version's statements, applied in order (version 1: the table as first made).
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    _SCHEMA,
    (
        "ALTER TABLE queue ADD COLUMN url TEXT",
        # How a run was started (a Trigger's JSON); NULL: a push.
        "ALTER TABLE queue ADD COLUMN trigger_json TEXT",
        # Who asked a running run to stop: its worker records it, wherever it runs.
        "ALTER TABLE queue ADD COLUMN cancel_by TEXT",
        # The scheduled times taken, each once (quire.service.schedule).
        """CREATE TABLE IF NOT EXISTS schedule_claims (
    git_dir TEXT NOT NULL,
    cron TEXT NOT NULL,
    ref TEXT NOT NULL,
    due_at TEXT NOT NULL,
    run_id TEXT,
    PRIMARY KEY (git_dir, cron, ref, due_at)
)""",
    ),
    (
        # The worker registry (quire.service.registry).
        """CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    pid_start INTEGER,
    started_at TEXT NOT NULL,
    seen_at TEXT NOT NULL,
    concurrency INTEGER NOT NULL,
    running TEXT NOT NULL,
    ttl_s REAL NOT NULL
)""",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_CORRUPT = ("SQLITE_CORRUPT", "SQLITE_NOTADB")

# Shared with the PostgreSQL queue (its placeholder, %s; `?` here).
# The last value is the executor: None (the worker's choice when it claims the run), or a
# re-run's, the original run's.
INSERT_RUN = (
    "INSERT INTO queue (run_id, git_dir, ref, sha, pushed_at, url, trigger_json, executor)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# A push's executor is chosen when it is claimed, so a row queued again forgets it; a
# re-run's was fixed when it was queued (the original run's), so it keeps it.
KEPT_EXECUTOR = "CASE WHEN trigger_json IS NULL THEN NULL ELSE executor END"
LAST_SCHEDULED = (
    "SELECT max(due_at) AS due_at FROM schedule_claims WHERE git_dir = %s AND cron = %s"
    " AND ref = %s"
)
CLAIM_SCHEDULE = (
    "INSERT INTO schedule_claims (git_dir, cron, ref, due_at, run_id)"
    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)


def push_values(push: Push) -> tuple[str, str, str, str, str | None]:
    return (push.git_dir, push.ref, push.sha, push.pushed_at, push.url)


def queue_path(state: StrPath) -> str:
    """The queue database of the state directory `state`."""
    return os.path.join(state, QUEUE_FILE)


def repository_name(git_dir: str) -> str:
    """The store's name of the repository at `git_dir` (`proj-<hash>` for proj.git or
    proj/.git: see `quire.paths.repo_id`)."""
    from quire.paths import repo_id  # not on the hook's path: it costs `re`, `pathlib`

    git_dir = os.path.normpath(git_dir)
    name = os.path.basename(git_dir)
    return repo_id(os.path.basename(os.path.dirname(git_dir)) if name == ".git" else name, git_dir)


def file_url(path: str) -> str:
    """`path` (absolute) as the file:// URL git fetches it by: quoted, since git decodes
    %XX in a URL (a repository at `proj%41.git` would be looked for at `projA.git`)."""
    from urllib.parse import quote  # here: the hook imports this module and never needs it

    return "file://" + quote(path, safe="/")


def utc_text(when: datetime | None = None) -> str:
    """RFC 3339 UTC with a Z, as the queue stores times."""
    when = (when or datetime.now(UTC)).astimezone(UTC)
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_run_id(now: datetime | None = None) -> str:
    """A run id in the run store's format (`quire.ci.store.runs.new_run_id`).

    Repeated here because the hook must not import the store (pydantic,
    yaml); tests/unit/test_queue.py checks that the two agree.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return now.strftime("%Y%m%d-%H%M%S-%f-") + os.urandom(3).hex()


class Push:
    """One updated ref of one push, as the hook saw it; `url`: where workers fetch it
    (`[repositories.NAME] url`; None: the pushed repository's path as a file:// URL)."""

    __slots__ = ("git_dir", "pushed_at", "ref", "sha", "url")

    def __init__(
        self, git_dir: str, ref: str, sha: str, pushed_at: str, url: str | None = None
    ) -> None:
        self.git_dir, self.ref, self.sha, self.pushed_at = git_dir, ref, sha, pushed_at
        self.url = url


def trigger_text(trigger: HasJson | None) -> str | None:
    """The `trigger_json` column's value for `trigger` (None: a push)."""
    return None if trigger is None else trigger.model_dump_json()


class Owner:
    """The worker process that claims rows: pid, its /proc start time, and host."""

    __slots__ = ("host", "pid", "start")

    def __init__(self, pid: int, start: int | None, host: str) -> None:
        self.pid, self.start, self.host = pid, start, host


ENTRY_FIELDS = (
    "seq",
    "run_id",
    "git_dir",
    "ref",
    "sha",
    "pushed_at",
    "state",
    "attempt",
    "retry_of",
    "executor",
    "worker_pid",
    "worker_start",
    "worker_host",
    "child_pid",
    "child_start",
    "claimed_at",
    "finished_at",
    "cancel",
    "outcome",
    "reason",
    "message",
    "url",
    "trigger_json",
    "cancel_by",
)
LATER_FIELDS = frozenset(("url", "trigger_json", "cancel_by"))


class Entry:
    """One row of the queue (a snapshot: changing it changes nothing in the database)."""

    __slots__ = ENTRY_FIELDS
    seq: int
    run_id: str
    git_dir: str
    ref: str
    sha: str
    pushed_at: str
    state: str
    attempt: int
    retry_of: str | None
    executor: str | None
    worker_pid: int | None
    worker_start: int | None
    worker_host: str | None
    child_pid: int | None
    child_start: int | None
    claimed_at: str | None
    finished_at: str | None
    cancel: bool
    outcome: str | None
    reason: str | None
    message: str | None
    url: str | None
    trigger_json: str | None
    cancel_by: str | None

    def __init__(self, values: Mapping[str, Any]) -> None:
        for name in ENTRY_FIELDS:
            # Columns added after version 1 may be missing from a row made elsewhere.
            setattr(self, name, values.get(name) if name in LATER_FIELDS else values[name])
        self.cancel = bool(self.cancel)

    @property
    def repo(self) -> str:
        """The repository's name in the run store."""
        return repository_name(self.git_dir)

    @property
    def fetch_url(self) -> str:
        """Where a worker fetches the pushed object: `url`, else the pushed repository's
        path as a file:// URL."""
        return self.url or file_url(self.git_dir)

    def replaced(self, **changes: Any) -> Entry:
        """A copy with some fields changed."""
        return Entry({**self.as_json(), **changes})

    def as_json(self) -> dict[str, Any]:
        """The row as plain data (for `quire ci queue --json`)."""
        return {name: getattr(self, name) for name in ENTRY_FIELDS}

    def shown(self) -> dict[str, Any]:
        """The row and the repository's name, for people."""
        return {**self.as_json(), "repo": self.repo}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entry) and self.as_json() == other.as_json()

    def __repr__(self) -> str:
        return f"Entry({self.as_json()!r})"


def _entry(row: sqlite3.Row) -> Entry:
    return Entry(dict(zip(row.keys(), row, strict=True)))


class QueueReads:
    """The reading half of both queues (SQLite here, PostgreSQL in pgqueue.py): the same
    queries, written once; `MARK` is the driver's parameter placeholder."""

    MARK = "?"
    path: str

    def _select(self, sql: str, *params: Any) -> list[Entry]:
        raise NotImplementedError

    def running(self) -> list[Entry]:
        """Every running row, oldest first."""
        return self._select("SELECT * FROM queue WHERE state = 'running' ORDER BY seq")

    def get(self, run_id: str) -> Entry:
        """The row of `run_id`; raises `QueueEntryNotFound`."""
        found = self._select(f"SELECT * FROM queue WHERE run_id = {self.MARK}", run_id)
        if not found:
            raise QueueEntryNotFound(f"no run {run_id!r} in the queue {self.path}")
        return found[0]

    def active(self) -> list[Entry]:
        """Queued and running rows, oldest first."""
        return self._select("SELECT * FROM queue WHERE state != 'done' ORDER BY seq")

    def recent(self, limit: int) -> list[Entry]:
        """The last `limit` finished rows, newest first."""
        return self._select(
            "SELECT * FROM queue WHERE state = 'done' ORDER BY finished_at DESC, seq DESC"
            f" LIMIT {self.MARK}",
            limit,
        )

    def find_active(self, prefix: str) -> Entry:
        """The queued or running row whose run id starts with `prefix`; raises
        `QueueEntryNotFound` for none or several."""
        return pick_active(self.active(), prefix)


class Queue(QueueReads):
    """An open connection to the queue database.

    Every write is one `BEGIN IMMEDIATE` transaction: concurrent hooks and
    workers serialize on SQLite's write lock (waiting up to `timeout`
    seconds), so a row is claimed by exactly one worker. Raises
    `QueueCorrupt` when the file is not a healthy database and
    `QueueUnavailable` when it cannot be written now (disk full, locked).
    """

    def __init__(self, path: StrPath, *, timeout: float = 10.0) -> None:
        self.path = os.fspath(path)
        with self._translated("open"):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            _refuse_truncated(self.path)
            _create_private(self.path)
            import sqlite3

            self._db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        try:
            with self._translated("open"):
                # FULL: a queued run survives a power cut, not only a crash.
                self._db.execute("PRAGMA synchronous = FULL")
                self._ensure_schema()
                found = os.stat(self.path)
        except BaseException:
            self._db.close()
            raise
        self._identity = (found.st_dev, found.st_ino)

    # Ownership is a pid on this host (recovery.orphaned), not a lease that expires.
    leases = False

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------------

    @contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        import sqlite3

        try:
            yield
        except sqlite3.DatabaseError as exc:
            name = getattr(exc, "sqlite_errorname", "") or ""
            if name.startswith(_CORRUPT) or not isinstance(exc, sqlite3.OperationalError):
                raise QueueCorrupt(corrupt_message(self.path, str(exc))) from exc
            raise QueueUnavailable(
                f"cannot {doing} the queue {self.path}: {exc} "
                "(free disk space, or check the state directory's permissions)"
            ) from exc
        except OSError as exc:
            raise QueueUnavailable(f"cannot {doing} the queue {self.path}: {exc}") from exc

    @contextmanager
    def _write(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._translated(doing):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _ensure_schema(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise QueueCorrupt(
                f"the queue {self.path} has schema version {version}, newer than this quire "
                f"understands ({SCHEMA_VERSION}): upgrade quire"
            )
        # WAL: readers (quire ci queue) never block the hook's or a worker's writes.
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another process may have migrated meanwhile.
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            # One statement at a time: executescript() would commit our transaction first.
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _select(self, sql: str, *params: Any) -> list[Entry]:
        with self._translated("read"):
            return [_entry(row) for row in self._db.execute(sql, params).fetchall()]

    def check(self) -> None:
        """Raise `QueueCorrupt` unless SQLite's quick_check finds the database sound."""
        with self._translated("check"):
            found = [row[0] for row in self._db.execute("PRAGMA quick_check").fetchall()]
        if found != ["ok"]:
            raise QueueCorrupt(corrupt_message(self.path, "; ".join(found[:3])))

    def verify(self) -> None:
        """Raise `QueueReplaced` unless the file at `path` is still the database this
        connection opened, not truncated (`QueueUnavailable` if it cannot be looked at now).

        SQLite goes on using the file it opened, deleted or not, and does not
        read a file truncated under it while its WAL holds the pages: without
        this a worker would claim from a file nobody queues to any more. Only
        `stat`, never open: closing any descriptor of the file would drop this
        process's SQLite locks, and another connection would then take the WAL
        for its own and delete it under us. A file overwritten in place is left
        to SQLite, which says so (`QueueCorrupt`) once it reads the damage.
        """
        try:
            found = os.stat(self.path)
        except FileNotFoundError:
            raise QueueReplaced(replaced_message(self.path, "it was deleted")) from None
        except OSError as exc:
            raise QueueUnavailable(f"cannot read the queue {self.path}: {exc}") from exc
        if (found.st_dev, found.st_ino) != self._identity:
            what = "another file took its place"
        elif found.st_size == 0:
            what = "it was truncated to 0 bytes"
        else:
            return
        raise QueueReplaced(replaced_message(self.path, what))

    # --- the hook's side -----------------------------------------------------------------------

    def enqueue(
        self, pushes: Sequence[Push], trigger: HasJson | None = None, executor: str | None = None
    ) -> list[Entry]:
        """Queue one run per push, in one transaction; returns the new rows. `trigger`:
        how they were started (None: a push); `executor`: the one to run them with (None:
        the worker's choice when it claims them)."""
        run_ids = []
        with self._write("queue a run in") as db:
            for push in pushes:
                run_id = new_run_id()
                values = (run_id, *push_values(push), trigger_text(trigger), executor)
                db.execute(INSERT_RUN, values)
                run_ids.append(run_id)
        return [self.get(run_id) for run_id in run_ids]

    # --- schedules (quire.service.schedule) ----------------------------------------------------

    def last_scheduled(self, git_dir: str, cron: str, ref: str) -> str | None:
        """The latest scheduled time taken for this schedule (RFC 3339 UTC), None if never."""
        with self._translated("read"):
            row = self._db.execute(LAST_SCHEDULED.replace("%s", "?"), (git_dir, cron, ref))
            found = row.fetchone()
        return None if found is None else found[0]

    def claim_schedule(
        self,
        git_dir: str,
        cron: str,
        ref: str,
        due_at: str,
        push: Push | None = None,
        trigger: HasJson | None = None,
    ) -> tuple[bool, Entry | None]:
        """Take the scheduled time `due_at` of a schedule and, with `push`, queue its run,
        in one transaction. (False, None) when it was taken already (by another worker):
        the primary key of schedule_claims makes "once" the database's own rule."""
        run_id = None if push is None else new_run_id()
        with self._write("queue a scheduled run in") as db:
            taken = db.execute(
                CLAIM_SCHEDULE.replace("%s", "?"), (git_dir, cron, ref, due_at, run_id)
            )
            if taken.rowcount != 1:
                return False, None
            if push is not None:
                db.execute(INSERT_RUN, (run_id, *push_values(push), trigger_text(trigger), None))
        return True, None if run_id is None else self.get(run_id)

    # --- the worker's side ---------------------------------------------------------------------

    def claim(self, owner: Owner) -> Entry | None:
        """Move the oldest queued row whose repository and ref has nothing running to
        running, owned by `owner`; None if there is none."""
        with self._write("claim a run from") as db:
            row = db.execute(
                "SELECT seq FROM queue AS q WHERE state = 'queued' AND NOT EXISTS"
                " (SELECT 1 FROM queue AS r WHERE r.state = 'running'"
                "  AND r.git_dir = q.git_dir AND r.ref = q.ref)"
                " ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE queue SET state = 'running', worker_pid = ?, worker_start = ?,"
                " worker_host = ?, claimed_at = ? WHERE seq = ? AND state = 'queued'",
                (owner.pid, owner.start, owner.host, utc_text(), row["seq"]),
            )
            found = db.execute("SELECT * FROM queue WHERE seq = ?", (row["seq"],)).fetchone()
        return _entry(found)

    def started(self, run_id: str, executor: str, pid: int, start: int | None) -> bool:
        """Record the child running `run_id`; True if a cancel was asked for meanwhile."""
        with self._write("record a started run in") as db:
            db.execute(
                "UPDATE queue SET executor = ?, child_pid = ?, child_start = ?"
                " WHERE run_id = ? AND state = 'running'",
                (executor, pid, start, run_id),
            )
            row = db.execute("SELECT cancel FROM queue WHERE run_id = ?", (run_id,)).fetchone()
        return bool(row and row["cancel"])

    def release(self, run_id: str) -> None:
        """Put a claimed row back (its child could not be started); it keeps its place."""
        with self._write("release a run in") as db:
            db.execute(
                "UPDATE queue SET state = 'queued', worker_pid = NULL, worker_start = NULL,"
                f" worker_host = NULL, claimed_at = NULL, executor = {KEPT_EXECUTOR},"
                " child_pid = NULL, child_start = NULL WHERE run_id = ? AND state = 'running'",
                (run_id,),
            )

    def finish(self, run_id: str, outcome: str, reason: str | None, message: str | None) -> bool:
        """running -> done; False if the row was not running (someone else finished it)."""
        with self._write("record a finished run in") as db:
            done = db.execute(
                "UPDATE queue SET state = 'done', finished_at = ?, outcome = ?, reason = ?,"
                " message = ? WHERE run_id = ? AND state = 'running'",
                (utc_text(), outcome, reason, message, run_id),
            )
        return done.rowcount == 1

    def requeue(self, run_id: str) -> Entry | None:
        """A dead worker's running row, queued again under a new run id at its old place.

        None if the row is not running any more (another worker recovered it).
        """
        new_id = new_run_id()
        with self._write("queue a run again in") as db:
            done = db.execute(
                "UPDATE queue SET state = 'queued', run_id = ?, retry_of = ?,"
                f" attempt = attempt + 1, executor = {KEPT_EXECUTOR}, worker_pid = NULL,"
                " worker_start = NULL, worker_host = NULL, child_pid = NULL,"
                " child_start = NULL, claimed_at = NULL WHERE run_id = ? AND state = 'running'",
                (new_id, run_id, run_id),
            )
        return self.get(new_id) if done.rowcount == 1 else None

    def renew(self, run_id: str, seconds: float) -> Entry | None:
        """The row of `run_id` if it is still running, else None.

        Nothing to renew: a SQLite claim lasts as long as its worker's pid.
        """
        found = self._select("SELECT * FROM queue WHERE run_id = ? AND state = 'running'", run_id)
        return found[0] if found else None

    def expired(self, owner: Owner) -> list[Entry]:
        """No claim here expires (dead workers are found by pid: `recovery.orphaned`)."""
        return []

    def notifications(self) -> None:
        """None: SQLite has no NOTIFY; the hook wakes workers over `quire.service.wake`."""
        return None

    def cancel(self, run_id: str, by: str | None = None) -> Entry:
        """Cancel a row: a queued one is done (`cancelled`) at once; a running one is
        flagged (asked by `by`), and the caller stops its child. Returns the row as it was
        before."""
        with self._write("cancel a run in") as db:
            row = db.execute(
                "SELECT * FROM queue WHERE run_id = ? AND state != 'done'", (run_id,)
            ).fetchone()
            if row is None:
                raise QueueEntryNotFound(f"run {run_id} is no longer queued or running")
            if row["state"] == QUEUED:
                db.execute(
                    "UPDATE queue SET state = 'done', outcome = 'cancelled', reason = 'cancelled',"
                    " message = 'cancelled before it started', finished_at = ? WHERE seq = ?",
                    (utc_text(), row["seq"]),
                )
            else:
                db.execute(
                    "UPDATE queue SET cancel = 1, cancel_by = ? WHERE seq = ?", (by, row["seq"])
                )
        return _entry(row)

    # --- the worker registry (quire.service.registry) ----------------------------------------

    def heartbeat(self, worker: WorkerInfo) -> None:
        """Register `worker`, or refresh its row: seen now, running `worker.running`."""
        with self._write("record a worker in") as db:
            db.execute(
                "INSERT INTO workers (id, name, host, pid, pid_start, started_at, seen_at,"
                " concurrency, running, ttl_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at,"
                " running = excluded.running, concurrency = excluded.concurrency,"
                " ttl_s = excluded.ttl_s",
                (
                    worker.id,
                    worker.name,
                    worker.host,
                    worker.pid,
                    worker.start,
                    utc_text(worker.started_at),
                    utc_text(),
                    worker.concurrency,
                    worker.running_text(),
                    worker.ttl_s,
                ),
            )

    def unregister(self, worker_id: str) -> None:
        """Delete a worker's row (it stops cleanly)."""
        with self._write("remove a worker from") as db:
            db.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

    def workers(self) -> list[WorkerInfo]:
        """The live workers, by name: on this host, those whose process lives; another
        host's by their heartbeat."""
        from quire.service.registry import local_live

        return [w for w in self._all_workers() if local_live(w, datetime.now(UTC))]

    def forget_workers(self, after_s: float) -> int:
        """Delete the rows of dead workers not seen for `after_s` seconds; how many went."""
        from quire.service.registry import local_live

        now = datetime.now(UTC)
        gone = [
            w.id
            for w in self._all_workers()
            if not local_live(w, now)
            and w.seen_at is not None
            and (now - w.seen_at).total_seconds() > after_s
        ]
        with self._write("remove dead workers from") as db:
            for worker_id in gone:
                db.execute("DELETE FROM workers WHERE id = ?", (worker_id,))
        return len(gone)

    def _all_workers(self) -> list[WorkerInfo]:
        from quire.service.registry import worker_from_row

        with self._translated("read"):
            rows = self._db.execute("SELECT * FROM workers ORDER BY name, started_at").fetchall()
        return [worker_from_row(dict(row)) for row in rows]

    def prune(self, keep: int = 1000) -> int:
        """Forget all but the newest `keep` done rows; returns how many went."""
        with self._write("prune") as db:
            gone = db.execute(
                "DELETE FROM queue WHERE state = 'done' AND seq NOT IN"
                " (SELECT seq FROM queue WHERE state = 'done' ORDER BY seq DESC LIMIT ?)",
                (keep,),
            )
        return gone.rowcount


def pick_active(active: Sequence[Entry], prefix: str) -> Entry:
    """The row of `active` whose run id is `prefix` or, alone, starts with it; raises
    `QueueEntryNotFound` for none or several."""
    matches = [e for e in active if e.run_id.startswith(prefix)]
    exact = [e for e in matches if e.run_id == prefix]
    if exact or len(matches) == 1:
        return (exact or matches)[0]
    if not matches:
        raise QueueEntryNotFound(
            f"no queued or running run {prefix!r} (see `quire ci queue`; finished runs "
            "are in `quire ci runs`)"
        )
    ids = ", ".join(e.run_id for e in matches[:5])
    raise QueueEntryNotFound(f"run prefix {prefix!r} is ambiguous: {ids}")


def corrupt_message(path: str, detail: str) -> str:
    """What to do about a damaged queue database."""
    return (
        f"the queue database {path} is damaged ({detail}). Stop every `quire ci worker`, "
        f"move it aside (mv {path} {path}.broken) and start them again: a new, empty queue "
        "is made. Runs still queued in the old file are not run; push again, or run one "
        "with `quire ci run SHA --repo REPO`"
    )


def replaced_message(path: str, what: str) -> str:
    """What to do about a queue file replaced or truncated under the workers."""
    return (
        f"the queue file {path} was replaced or truncated while workers had it open "
        f"({what}): runs queued since are not seen by those workers. Restart the workers "
        "(`quire ci worker`; each stops by itself, exit 3, when it notices)"
    )


def _refuse_truncated(path: str) -> None:
    """Raise `QueueReplaced` if `path` is empty while its write-ahead log is not.

    SQLite writes its header to the file before it makes a WAL, so this is a
    file truncated under open connections; SQLite itself would only answer
    "database is locked" (the workers hold the WAL), after its whole timeout.
    """
    try:
        if os.stat(path).st_size != 0 or os.stat(path + "-wal").st_size == 0:
            return
    except FileNotFoundError:
        return
    raise QueueReplaced(
        replaced_message(path, f"it is empty, its write-ahead log {path}-wal is not")
    )


def _create_private(path: str) -> None:
    """Create the database file 0600 if it is missing (an existing file keeps its mode).

    SQLite would make it 0644, and makes the -wal and -shm files with the
    database's own mode: created first, all three stay private. An existing
    file is never opened here: closing a descriptor of it would drop this
    process's SQLite locks on it.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        return


def open_queue(state: StrPath, *, lease_s: float | None = None) -> RunQueue:
    """The queue of state directory `state`: the PostgreSQL queue when a database is
    configured (`quire.service.queues.database_url`), else the SQLite file in `state`,
    created if missing. `lease_s`: how long this process's claims last unless renewed
    (PostgreSQL only). Raises `QueueUnavailable`, `QueueCorrupt`."""
    url = database_url()
    if url is None:
        return Queue(queue_path(state))
    return _pgqueue(url)(url, lease_s=DEFAULT_LEASE_S if lease_s is None else lease_s)


def _pgqueue(url: str) -> type[PgQueue]:
    """The PostgreSQL queue's class (psycopg is imported only when a database is set)."""
    import sys

    try:
        from quire.service.pgqueue import PgQueue
    except ModuleNotFoundError as exc:
        if exc.name != "psycopg":
            raise
        if not sys.flags.no_site:
            raise QueueUnavailable(_no_psycopg(url)) from exc
        # The hook runs `python -S`: site-packages (psycopg) come in now, with a database only.
        import site

        site.main()
        try:
            from quire.service.pgqueue import PgQueue
        except ModuleNotFoundError as again:
            raise QueueUnavailable(_no_psycopg(url)) from again
    return PgQueue


def _no_psycopg(url: str) -> str:
    from quire.service.queues import no_psycopg

    return no_psycopg(url)
