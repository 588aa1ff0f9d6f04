"""The PostgreSQL queue's schema and connections: `migrate()` (`quire ci db migrate`).

    schema_version (version integer PRIMARY KEY, applied_at timestamptz)
    queue          see quire.service.pgqueue
    run_index, run_file, sequence run_change   see quire.service.pgindex (version 2)
    web_users, web_tokens, web_sessions   (version 2) see quire.web.pgaccounts
    schedule_claims  the scheduled times taken (version 2; quire.service.schedule)
    workers        the worker registry (version 2; quire.service.registry, PgQueue.heartbeat)

Each version's statements are applied in one transaction, under an
advisory lock, so two machines migrating at once apply them once. A
database with a newer version than this quire knows is refused
(`QueueCorrupt`); one that cannot be reached is `QueueUnavailable`,
naming the server, never its password.
"""

from __future__ import annotations

from quire.service.errors import QueueCorrupt, QueueUnavailable
from quire.service.queues import no_psycopg, server_name

# psycopg is imported where it is used: the hook reads SCHEMA_VERSION and MIGRATIONS
# without it (quire.service.pglite), and typing costs it milliseconds too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    import psycopg

    # An explicit alias: without psycopg installed (nox's typecheck session) it is Any.
    Connection: TypeAlias = "psycopg.Connection[dict[str, Any]]"

CONNECT_TIMEOUT_S = 10

# Each version's statements, applied in order, each version in one transaction.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE queue (
    seq bigserial PRIMARY KEY,
    run_id text NOT NULL UNIQUE,
    git_dir text NOT NULL,
    ref text NOT NULL,
    sha text NOT NULL,
    pushed_at text NOT NULL,
    state text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done')),
    attempt integer NOT NULL DEFAULT 1,
    retry_of text,
    executor text,
    worker_pid integer,
    worker_start bigint,
    worker_host text,
    child_pid integer,
    child_start bigint,
    claimed_at text,
    finished_at text,
    cancel boolean NOT NULL DEFAULT false,
    outcome text,
    reason text,
    message text,
    lease_until timestamptz,
    lease_s double precision
)""",
        "CREATE UNIQUE INDEX one_running_per_ref ON queue (git_dir, ref) WHERE state = 'running'",
        "CREATE INDEX by_state ON queue (state, seq)",
    ),
    (
        # Where workers fetch a queued run's pushed object (NULL: file:// of git_dir).
        "ALTER TABLE queue ADD COLUMN url text",
        # The run index (quire.service.pgindex): every run's files, as they change. One
        # sequence numbers every change, in commit order (publishers take one lock).
        "CREATE SEQUENCE run_change",
        """CREATE TABLE run_index (
    run_id text PRIMARY KEY,
    repo text NOT NULL,
    git_dir text NOT NULL,
    worker text NOT NULL,
    state_dir text NOT NULL,
    state text NOT NULL,
    seq bigint NOT NULL
)""",
        "CREATE INDEX run_index_by_seq ON run_index (seq)",
        """CREATE TABLE run_file (
    seq bigint PRIMARY KEY,
    run_id text NOT NULL REFERENCES run_index (run_id) ON DELETE CASCADE,
    path text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('whole', 'append', 'delete')),
    at bigint NOT NULL DEFAULT 0,
    data bytea NOT NULL DEFAULT '',
    digest text
)""",
        "CREATE INDEX run_file_by_run ON run_file (run_id, seq)",
        # How a run was started (a Trigger's JSON); NULL: a push.
        "ALTER TABLE queue ADD COLUMN trigger_json text",
        # Who asked a running run to stop: its worker records it, on whatever machine.
        "ALTER TABLE queue ADD COLUMN cancel_by text",
        # Each scheduled time of each schedule taken once, whichever worker sees it first;
        # run_id NULL: seen, nothing queued (a schedule first seen, a ref that is gone).
        """CREATE TABLE schedule_claims (
    git_dir text NOT NULL,
    cron text NOT NULL,
    ref text NOT NULL,
    due_at text NOT NULL,
    run_id text,
    PRIMARY KEY (git_dir, cron, ref, due_at)
)""",
        # The web page's accounts (quire.web.pgaccounts), as in the SQLite accounts file.
        "CREATE TABLE web_users (name text PRIMARY KEY,"
        " role text NOT NULL CHECK (role IN ('viewer', 'operator')),"
        " password_hash text NOT NULL, created_at text NOT NULL)",
        "CREATE TABLE web_tokens (id text PRIMARY KEY, username text NOT NULL,"
        " token_hash text NOT NULL, created_at text NOT NULL)",
        "CREATE TABLE web_sessions (id_hash text PRIMARY KEY, username text NOT NULL,"
        " csrf text NOT NULL, created_at double precision NOT NULL,"
        " expires_at double precision NOT NULL)",
        # The worker registry (quire.service.registry): a row per worker, its heartbeat
        # (seen_at) by the database's clock; live while seen within ttl_s (its lease).
        """CREATE TABLE workers (
    id text PRIMARY KEY,
    name text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    pid_start bigint,
    started_at timestamptz NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now(),
    concurrency integer NOT NULL,
    running text NOT NULL DEFAULT '',
    ttl_s double precision NOT NULL
)""",
    ),
)
# A worker's row counts while its heartbeat is this recent (the hook counts with it too).
LIVE_WORKERS = "seen_at > now() - make_interval(secs => ttl_s)"
SCHEMA_VERSION = len(MIGRATIONS)
# Serializes concurrent `migrate()` calls (two workers starting at once); any constant works.
_MIGRATE_LOCK = 0x71756972
# NOTIFYed when runs are queued (again); idle workers LISTEN on it.
CHANNEL = "quire_queue"


def connect(url: str, *, autocommit: bool = False) -> Connection:
    """A connection to `url`; raises `QueueUnavailable` naming the server."""
    import psycopg
    from psycopg.rows import dict_row

    try:
        return psycopg.connect(
            url, autocommit=autocommit, row_factory=dict_row, connect_timeout=CONNECT_TIMEOUT_S
        )
    except psycopg.Error as exc:
        raise QueueUnavailable(unavailable(url, "connect to", exc)) from exc


class Reconnecting:
    """One autocommit connection to `url`, made at first use and made again after it broke
    (the server restarted, the network went): the queue, the run index's writer and the
    accounts each hold one."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._db: Connection | None = None

    def get(self) -> Connection:
        """The connection, a new one if there was none or it broke; raises
        `QueueUnavailable` naming the server."""
        if self._db is None or self._db.closed or self._db.broken:
            self.close()
            self._db = connect(self.url, autocommit=True)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def unavailable(url: str, doing: str, exc: BaseException) -> str:
    """What went wrong, naming the server; the password is cut out if the driver quoted it."""
    import psycopg

    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except psycopg.Error:
        password = None
    if password:
        detail = detail.replace(str(password), "***")
    return f"cannot {doing} the queue database {server_name(url)}: {detail}"


def schema_version(db: Connection) -> int:
    """The version applied to the database behind `db` (0: none)."""
    found = db.execute("SELECT to_regclass('schema_version') AS t").fetchone()
    if found is None or found["t"] is None:
        return 0
    row = db.execute("SELECT max(version) AS v FROM schema_version").fetchone()
    return int(row["v"] or 0) if row else 0


def require_psycopg(url: str) -> None:
    """Raises `QueueUnavailable` saying what to install when psycopg is missing."""
    try:
        import psycopg  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "psycopg":
            raise
        raise QueueUnavailable(no_psycopg(url)) from exc


def migrate(url: str) -> tuple[int, int]:
    """Bring the database at `url` to this quire's schema; returns (before, after).

    Raises `QueueUnavailable` (unreachable, or no psycopg) and `QueueCorrupt` (newer schema).
    """
    require_psycopg(url)
    import psycopg

    with connect(url) as db:
        try:
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
                db.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                before = schema_version(db)
                refuse_newer(url, before)
                for version in range(before + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[version - 1]:
                        db.execute(statement)
                    db.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
        except psycopg.OperationalError as exc:
            raise QueueUnavailable(unavailable(url, "migrate", exc)) from exc
    return before, SCHEMA_VERSION


def too_old(url: str, version: int) -> QueueUnavailable:
    """The error for a database behind this quire's schema (never migrated, or older)."""
    return QueueUnavailable(
        f"the queue database {server_name(url)} has schema version {version}, this quire "
        f"needs {SCHEMA_VERSION}: run `quire ci db migrate`"
    )


def refuse_newer(url: str, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise QueueCorrupt(
            f"the queue database {server_name(url)} has schema version {version}, newer than "
            f"this quire understands ({SCHEMA_VERSION}): upgrade quire"
        )
