"""The web page's accounts in the PostgreSQL database that holds the queue.

Tables `web_users`, `web_tokens`, `web_sessions` (version 2 of
`quire.service.pgschema.MIGRATIONS`; `quire ci db migrate` makes them), the
same as the SQLite file's, so every machine that serves the page knows the
same users, tokens and sessions. Errors name the server, never its password.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from argon2 import PasswordHasher
from psycopg.rows import tuple_row

from quire.service.errors import QueueUnavailable
from quire.service.pgschema import (
    SCHEMA_VERSION,
    Reconnecting,
    schema_version,
    unavailable,
)
from quire.service.queues import server_name
from quire.web.accounts import AccountsUnavailable, SqlAccounts

if TYPE_CHECKING:
    from quire.service.pgschema import Connection


class PgAccounts(SqlAccounts):
    """Accounts in the database at `url` (the `AccountStore` protocol)."""

    def __init__(
        self,
        url: str,
        *,
        hasher: PasswordHasher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(hasher=hasher, clock=clock)
        self.url = url
        self.where = server_name(url)
        self._lock = threading.RLock()
        self._connection = Reconnecting(url)
        with self._translated("open"):
            version = schema_version(self._conn())
        if version < SCHEMA_VERSION:
            self.close()
            raise AccountsUnavailable(
                f"the database {self.where} has schema version {version}, the accounts need "
                f"{SCHEMA_VERSION}: run `quire ci db migrate`"
            )

    def close(self) -> None:
        self._connection.close()

    def _conn(self) -> Connection:
        return self._connection.get()

    @contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        try:
            with self._lock:
                yield
        except QueueUnavailable as exc:
            raise AccountsUnavailable(str(exc)) from exc
        except psycopg.Error as exc:
            raise AccountsUnavailable(
                unavailable(self.url, f"{doing} the accounts in", exc)
            ) from exc

    def _all(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self._translated("read"):
            cursor = self._conn().cursor(row_factory=tuple_row)
            return list(cursor.execute(sql.replace("?", "%s"), params).fetchall())

    def _run(self, *statements: tuple[str, tuple[Any, ...]]) -> list[int]:
        with self._translated("write"):
            db = self._conn()
            with db.transaction():
                return [
                    int(db.execute(sql.replace("?", "%s"), params).rowcount)
                    for sql, params in statements
                ]
