"""The web page's accounts: users with a role, their API tokens and login sessions.

    $QUIRE_STATE_DIR/accounts.sqlite3    (0600, whatever the umask), or, with a
    PostgreSQL queue (QUIRE_DATABASE_URL, [server] database), that database:

    web_users    (name PRIMARY KEY, role, password_hash, created_at)
    web_tokens   (id PRIMARY KEY, username, token_hash, created_at)
    web_sessions (id_hash PRIMARY KEY, username, csrf, created_at, expires_at)

Passwords are kept only as argon2 hashes (argon2-cffi's defaults). API
tokens (`quire_<id>_<secret>`, 256 random bits) and session cookies are
kept only as SHA-256 hashes: they are random, not chosen by people, so a
fast hash is as safe as argon2 for them and lets every request check one
in microseconds. A token is shown once, when it is made. Removing a user
removes their tokens and sessions with them.

`AccountStore` is what the CLI and the web ask of accounts; `SqlAccounts`
answers it in SQL once; `SqliteAccounts` keeps them in the state directory,
`quire.web.pgaccounts.PgAccounts` in PostgreSQL, so every machine that
serves the page knows the same users.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel

from quire.errors import ConfigError, EnvironmentProblem, UsageError

ACCOUNTS_FILE = "accounts.sqlite3"
Role = Literal["viewer", "operator"]
ROLES: tuple[Role, ...] = ("viewer", "operator")
SESSION_S = 14 * 24 * 3600  # a login lasts two weeks, or until logout
TOKEN_PREFIX = "quire_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}\Z")
_TOKEN = re.compile(r"quire_([0-9a-f]{8})_[A-Za-z0-9_-]{43}\Z")

# The same tables as version 2 of the PostgreSQL schema (quire.service.pgschema).
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS web_users (name TEXT PRIMARY KEY, role TEXT NOT NULL,"
    " password_hash TEXT NOT NULL, created_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS web_tokens (id TEXT PRIMARY KEY, username TEXT NOT NULL,"
    " token_hash TEXT NOT NULL, created_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS web_sessions (id_hash TEXT PRIMARY KEY, username TEXT NOT NULL,"
    " csrf TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL)",
)


class AccountsUnavailable(EnvironmentProblem):
    """The accounts file cannot be read or written (permissions, a full disk, damage)."""


class Account(BaseModel):
    """A user of the web page."""

    name: str
    role: Role
    created_at: datetime

    @property
    def operator(self) -> bool:
        return self.role == "operator"


class TokenInfo(BaseModel):
    """An API token as `quire ci token list` shows it (never the token itself)."""

    id: str
    user: str
    created_at: datetime


class Session(BaseModel):
    """A logged-in browser: who, and the CSRF token its forms must send back."""

    user: Account
    csrf: str
    expires_at: float


class AccountStore(Protocol):
    """What the CLI and the web ask of accounts, wherever they are kept."""

    def has_users(self) -> bool: ...
    def add_user(self, name: str, role: Role, password: str) -> Account: ...
    def users(self) -> list[Account]: ...
    def remove_user(self, name: str) -> bool: ...
    def check_password(self, name: str, password: str) -> Account | None: ...
    def create_token(self, name: str) -> str: ...
    def tokens(self) -> list[TokenInfo]: ...
    def revoke_token(self, token_id: str) -> bool: ...
    def check_token(self, token: str) -> Account | None: ...
    def open_session(self, name: str) -> str: ...
    def session(self, cookie: str) -> Session | None: ...
    def close_session(self, cookie: str) -> None: ...
    def close(self) -> None: ...


def check_name(name: str) -> str:
    """`name` if it can be a user name; raises `UsageError`."""
    if not _NAME.match(name):
        raise UsageError(
            f"user name {name!r}: use letters, digits and . _ @ - (at most 64, starting with a "
            "letter or digit)"
        )
    return name


def check_role(role: str) -> Role:
    for known in ROLES:
        if role == known:
            return known
    raise UsageError(f"role {role!r}: use viewer or operator")


def token_id_of(token: str) -> str:
    """The id of an API token (`quire_<id>_<secret>`); anything else is taken as an id."""
    found = _TOKEN.match(token)
    return found[1] if found else token


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class SqlAccounts:
    """The `AccountStore` protocol in SQL, written once for SQLite and PostgreSQL: the
    stores below only run statements (`?` placeholders) and translate their errors.

    `hasher`: argon2's parameters (tests use cheap ones); `clock`: seconds since
    the epoch, for sessions' expiry.
    """

    where = "?"  # for messages: the file or the server

    def __init__(
        self, *, hasher: PasswordHasher | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.hasher = hasher or PasswordHasher()
        self.clock = clock
        # Checked against when the user does not exist, so both cases cost the same
        # (made on first use: starting the server should not pay argon2 for nothing).
        self._dummy: str | None = None

    def _all(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """The rows of one query."""
        raise NotImplementedError

    def _run(self, *statements: tuple[str, tuple[Any, ...]]) -> list[int]:
        """Run `statements` in one transaction; their row counts."""
        raise NotImplementedError

    def _change(self, sql: str, *params: Any) -> int:
        return self._run((sql, params))[0]

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> SqlAccounts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- users ---

    def has_users(self) -> bool:
        return bool(self._all("SELECT 1 FROM web_users LIMIT 1"))

    def add_user(self, name: str, role: Role, password: str) -> Account:
        """A new user; raises `UsageError` if the name is taken or the password empty."""
        check_name(name)
        if not password:
            raise UsageError("the password is empty")
        added = self._change(
            "INSERT INTO web_users (name, role, password_hash, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO NOTHING",
            name,
            role,
            self.hasher.hash(password),
            _now_text(),
        )
        if not added:
            raise UsageError(
                f"user {name!r} exists already (remove it first: quire ci user remove {name})"
            )
        return self._user(name)  # type: ignore[return-value]

    def _user(self, name: str) -> Account | None:
        found = self._all("SELECT name, role, created_at FROM web_users WHERE name = ?", name)
        if not found:
            return None
        name, role, created = found[0]
        return Account(name=name, role=role, created_at=created)

    def users(self) -> list[Account]:
        rows = self._all("SELECT name, role, created_at FROM web_users ORDER BY name")
        return [Account(name=n, role=r, created_at=c) for n, r, c in rows]

    def remove_user(self, name: str) -> bool:
        gone, _, _ = self._run(
            ("DELETE FROM web_users WHERE name = ?", (name,)),
            ("DELETE FROM web_tokens WHERE username = ?", (name,)),
            ("DELETE FROM web_sessions WHERE username = ?", (name,)),
        )
        return bool(gone)

    def check_password(self, name: str, password: str) -> Account | None:
        """The user, if `password` is theirs; None otherwise (the same work either way)."""
        found = self._all("SELECT password_hash FROM web_users WHERE name = ?", name)
        if found:
            hashed: str = found[0][0]
        else:
            if self._dummy is None:
                self._dummy = self.hasher.hash(secrets.token_urlsafe(16))
            hashed = self._dummy
        try:
            self.hasher.verify(hashed, password)
        except (VerificationError, InvalidHashError):
            return None
        return self._user(name) if found else None

    # --- tokens ---

    def create_token(self, name: str) -> str:
        """A new API token of user `name`, returned once; raises `UsageError`."""
        if self._user(name) is None:
            raise UsageError(f"no user {name!r} (add one: quire ci user add {name})")
        token_id = secrets.token_hex(4)
        token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        self._change(
            "INSERT INTO web_tokens (id, username, token_hash, created_at) VALUES (?, ?, ?, ?)",
            token_id,
            name,
            digest(token),
            _now_text(),
        )
        return token

    def tokens(self) -> list[TokenInfo]:
        rows = self._all(
            "SELECT id, username, created_at FROM web_tokens ORDER BY username, created_at"
        )
        return [TokenInfo(id=i, user=u, created_at=c) for i, u, c in rows]

    def revoke_token(self, token_id: str) -> bool:
        """Revoke the token of this id (or this token); whether there was one."""
        return bool(self._change("DELETE FROM web_tokens WHERE id = ?", token_id_of(token_id)))

    def check_token(self, token: str) -> Account | None:
        found = _TOKEN.match(token)
        if not found:
            return None
        rows = self._all("SELECT username, token_hash FROM web_tokens WHERE id = ?", found[1])
        if not rows or not hmac.compare_digest(rows[0][1], digest(token)):
            return None
        return self._user(rows[0][0])

    # --- sessions ---

    def open_session(self, name: str) -> str:
        """A new session of `name`; returns the cookie's value (kept only hashed)."""
        cookie = secrets.token_urlsafe(32)
        now = self.clock()
        self._run(
            ("DELETE FROM web_sessions WHERE expires_at < ?", (now,)),
            (
                "INSERT INTO web_sessions (id_hash, username, csrf, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (digest(cookie), name, secrets.token_urlsafe(32), now, now + SESSION_S),
            ),
        )
        return cookie

    def session(self, cookie: str) -> Session | None:
        rows = self._all(
            "SELECT username, csrf, expires_at FROM web_sessions"
            " WHERE id_hash = ? AND expires_at > ?",
            digest(cookie),
            self.clock(),
        )
        if not rows:
            return None
        user = self._user(rows[0][0])
        if user is None:
            return None
        return Session(user=user, csrf=rows[0][1], expires_at=rows[0][2])

    def close_session(self, cookie: str) -> None:
        self._change("DELETE FROM web_sessions WHERE id_hash = ?", digest(cookie))


class SqliteAccounts(SqlAccounts):
    """Accounts in `$QUIRE_STATE_DIR/accounts.sqlite3` (0600)."""

    def __init__(
        self,
        path: Path,
        *,
        hasher: PasswordHasher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(hasher=hasher, clock=clock)
        self.path = path
        self.where = str(path)
        # One connection shared by the server's threads: one statement at a time.
        self._lock = threading.RLock()
        with self._translated("open"):
            path.parent.mkdir(parents=True, exist_ok=True)
            _create_private(path)
            os.chmod(path, 0o600)
            self._db = sqlite3.connect(
                path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            for statement in _SCHEMA:
                self._db.execute(statement)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _translated(self, doing: str) -> Iterator[None]:
        try:
            with self._lock:
                yield
        except (sqlite3.Error, OSError) as exc:
            raise AccountsUnavailable(
                f"cannot {doing} the accounts file {self.path}: {exc} (check its permissions "
                "and the free disk space)"
            ) from exc

    def _all(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self._translated("read"):
            return list(self._db.execute(sql, params).fetchall())

    def _run(self, *statements: tuple[str, tuple[Any, ...]]) -> list[int]:
        with self._translated("write"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                counts = [self._db.execute(sql, params).rowcount for sql, params in statements]
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return counts


def _create_private(path: Path) -> None:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        return


def open_accounts(state: Path, *, hasher: PasswordHasher | None = None) -> AccountStore:
    """The accounts: in the PostgreSQL database when one is configured (as for the queue:
    `quire.service.queues.database_url`), else in state directory `state`. Raises
    `AccountsUnavailable`."""
    from quire.service.queues import database_url

    url = database_url()
    if url is not None:
        from quire.web.pgaccounts import PgAccounts

        return PgAccounts(url, hasher=hasher)
    if not state.is_dir() and state.exists():
        raise ConfigError(f"the state directory {state} is not a directory")
    return SqliteAccounts(state / ACCOUNTS_FILE, hasher=hasher)
