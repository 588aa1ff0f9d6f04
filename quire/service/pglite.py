"""The hook's way into the PostgreSQL queue: libpq itself, through ctypes, not psycopg.

Importing psycopg costs a push ~0.1 s; loading libpq costs a few
milliseconds. The hook needs one transaction: check the schema version,
insert the pushes, NOTIFY the workers, count the live workers (the worker
registry, so the pusher hears when none is running). Everything else goes through
`quire.service.pgqueue`.

libpq is the system's (`libpq.so.5`, Debian's libpq5) or else the copy
psycopg's binary wheel carries in this interpreter's site-packages. Without
either, `enqueue` returns None and the hook takes psycopg's way. libpq does
what psycopg would: the URL, TLS, passwords and `~/.pgpass` are its own.
Messages are PgQueue's: the server named, never its password.

Standard library only (ctypes); no typing at run time.
"""

from __future__ import annotations

import ctypes
import os
import sys

from quire.service.errors import QueueCorrupt, QueueUnavailable
from quire.service.pgschema import CHANNEL, CONNECT_TIMEOUT_S, LIVE_WORKERS, SCHEMA_VERSION
from quire.service.queue import new_run_id
from quire.service.queues import server_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from quire.service.queue import Push

CONNECTION_OK = 0
PGRES_COMMAND_OK, PGRES_TUPLES_OK = 1, 2
_SYSTEM = "libpq.so.5"
_WHEEL = "psycopg_binary.libs"


class LibPq:
    """The few libpq functions the hook calls, with their C types."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        p, s, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        self.connect = self._fn(lib.PQconnectdbParams, p, ctypes.POINTER(s), ctypes.POINTER(s), i)
        self.status = self._fn(lib.PQstatus, i, p)
        self.error = self._fn(lib.PQerrorMessage, s, p)
        self.finish = self._fn(lib.PQfinish, None, p)
        self.exec_params = self._fn(lib.PQexecParams, p, p, s, i, p, ctypes.POINTER(s), p, p, i)
        self.result_status = self._fn(lib.PQresultStatus, i, p)
        self.result_error = self._fn(lib.PQresultErrorMessage, s, p)
        self.ntuples = self._fn(lib.PQntuples, i, p)
        self.nfields = self._fn(lib.PQnfields, i, p)
        self.value = self._fn(lib.PQgetvalue, s, p, i, i)
        self.is_null = self._fn(lib.PQgetisnull, i, p, i, i)
        self.clear = self._fn(lib.PQclear, None, p)

    @staticmethod
    def _fn(fn: Any, restype: object, *argtypes: object) -> Any:
        fn.restype = restype
        fn.argtypes = argtypes
        return fn


def load() -> LibPq | None:
    """libpq, or None if neither the system's nor psycopg's copy can be loaded here."""
    for path in _candidates():
        try:
            return LibPq(ctypes.CDLL(path))
        except (OSError, AttributeError):
            continue
    return None


def _candidates() -> list[str]:
    found = [_SYSTEM]
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    # The hook runs `python -I -S`: site-packages are not on sys.path, but are still there.
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        libs = os.path.join(prefix, "lib", version, "site-packages", _WHEEL)
        try:
            names = sorted(os.listdir(libs))
        except OSError:
            continue
        found += [os.path.join(libs, n) for n in names if n.startswith("libpq")]
    return found


class _Connection:
    """One libpq connection; `query` returns rows of text (None for NULL)."""

    def __init__(self, pq: LibPq, url: str) -> None:
        self.pq, self.url = pq, url
        keys = (ctypes.c_char_p * 4)(b"dbname", b"connect_timeout", b"client_encoding", None)
        timeout = str(CONNECT_TIMEOUT_S).encode()
        values = (ctypes.c_char_p * 4)(url.encode(), timeout, b"UTF8", None)
        self.conn = pq.connect(keys, values, 1)  # 1: dbname may be a URL, as psycopg takes it
        if not self.conn:
            raise QueueUnavailable(unavailable(url, "connect to", "out of memory"))
        if pq.status(self.conn) != CONNECTION_OK:
            detail = (pq.error(self.conn) or b"").decode(errors="replace")
            pq.finish(self.conn)
            raise QueueUnavailable(unavailable(url, "connect to", detail))

    def query(self, doing: str, sql: str, *params: str | None) -> list[list[str | None]]:
        values = (ctypes.c_char_p * max(1, len(params)))(
            *[None if p is None else p.encode("utf-8", "surrogateescape") for p in params]
        )
        result = self.pq.exec_params(
            self.conn, sql.encode(), len(params), None, values, None, None, 0
        )
        try:
            status = self.pq.result_status(result) if result else -1
            if status not in (PGRES_COMMAND_OK, PGRES_TUPLES_OK):
                source = self.pq.result_error(result) if result else self.pq.error(self.conn)
                raise QueueUnavailable(
                    unavailable(self.url, doing, (source or b"").decode(errors="replace"))
                )
            rows = []
            for row in range(self.pq.ntuples(result)):
                rows.append(
                    [
                        None
                        if self.pq.is_null(result, row, col)
                        else (self.pq.value(result, row, col) or b"").decode()
                        for col in range(self.pq.nfields(result))
                    ]
                )
            return rows
        finally:
            if result:
                self.pq.clear(result)

    def close(self) -> None:
        self.pq.finish(self.conn)


def enqueue(url: str, pushes: Sequence[Push]) -> tuple[list[tuple[str, str, str]], int] | None:
    """Queue one run per push in one transaction and wake the workers, as
    `PgQueue.enqueue` does; returns (run id, ref, sha) of each, and how many workers are
    live (`PgQueue.workers()`, counted in the same statement). None when no libpq can be
    loaded here. Raises `QueueUnavailable` and `QueueCorrupt` with PgQueue's words."""
    pq = load()
    if pq is None:
        return None
    db = _Connection(pq, url)
    try:
        _check_version(db, url)
        params: list[str | None] = []
        for push in pushes:
            params += [new_run_id(), push.git_dir, push.ref, push.sha, push.pushed_at, push.url]
        # One statement, so one transaction and one round trip: the rows, the NOTIFY
        # delivered at its commit (one, however many rows: the server folds them), and
        # the live workers of the registry.
        rows = db.query("queue a run in", _insert(len(pushes)), *params)
        live = int(rows[0][4] or 0) if rows else 0
        return [(row[0] or "", row[1] or "", row[2] or "") for row in rows], live
    finally:
        db.close()


def _insert(count: int) -> str:
    marks = ", ".join(
        "(" + ", ".join(f"${row * 6 + col}" for col in range(1, 7)) + ")" for row in range(count)
    )
    return (
        "WITH queued AS (INSERT INTO queue (run_id, git_dir, ref, sha, pushed_at, url)"
        f" VALUES {marks} RETURNING seq, run_id, ref, sha),"
        f" live AS (SELECT count(*) AS n FROM workers WHERE {LIVE_WORKERS})"
        f" SELECT run_id, ref, sha, pg_notify('{CHANNEL}', ''), live.n FROM queued, live"
        " ORDER BY seq"
    )


def _check_version(db: _Connection, url: str) -> None:
    """PgQueue's checks: a schema older than this quire's is to migrate, a newer one
    refused."""
    try:
        (found,) = db.query("read", "SELECT coalesce(max(version), 0) FROM schema_version")
    except QueueUnavailable:
        # No table (a database never migrated) is version 0; any other failure is said.
        (missing,) = db.query("read", "SELECT to_regclass('schema_version') IS NULL")
        if missing[0] != "t":
            raise
        found = ["0"]
    version = int(found[0] or 0)
    if version > SCHEMA_VERSION:
        raise QueueCorrupt(
            f"the queue database {server_name(url)} has schema version {version}, newer "
            f"than this quire understands ({SCHEMA_VERSION}): upgrade quire"
        )
    if version < SCHEMA_VERSION:
        raise QueueUnavailable(
            f"the queue database {server_name(url)} has schema version {version}, this "
            f"quire needs {SCHEMA_VERSION}: run `quire ci db migrate`"
        )


def unavailable(url: str, doing: str, detail: str) -> str:
    """PgQueue's message (`pgschema.unavailable`): the first line of libpq's, the
    password cut out should libpq quote it."""
    lines = detail.strip().splitlines()
    first = lines[0] if lines else "no detail"
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    for secret in (password, unquote(password or "")):
        if secret:
            first = first.replace(secret, "***")
    return f"cannot {doing} the queue database {server_name(url)}: {first}"
