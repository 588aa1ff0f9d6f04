"""The run queue's one interface, and which implementation a state directory uses.

    RunQueue            what hooks, workers, `queue` and `cancel` may ask of a queue
    database_url()      QUIRE_DATABASE_URL, else `[server] database` in the config file
    repository_url()    `[repositories.NAME] url` of a pushed repository, if any
    server_name(url)    the server a URL names, for messages (never its password)
    no_psycopg(url)     the message for a database configured without the postgres extra

Two implementations: `quire.service.queue.Queue` (SQLite in the state
directory, the default: pid-based ownership, `leases = False`) and
`quire.service.pgqueue.PgQueue` (PostgreSQL, shared by workers on many
machines: claims carry a lease, `leases = True`). tests/integration/
test_queue_contract.py runs the same tests against both.

Standard library only, and cheap: the post-receive hook imports this on
every push to learn whether a database is configured.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing itself costs the hook milliseconds
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Protocol

    from quire.service.queue import Entry, HasJson, Owner, Push
    from quire.service.registry import WorkerInfo

    class Notifications(Protocol):
        """Wake-ups from the database (LISTEN/NOTIFY): `fileno()` for a selector."""

        @property
        def broken(self) -> bool: ...
        def fileno(self) -> int: ...
        def drain(self) -> int: ...
        def close(self) -> None: ...

    class RunQueue(Protocol):
        """One queue of runs, whatever keeps it."""

        path: str  # where it is, for people: a file, or `postgresql://host:port/db`
        leases: bool  # True: a claim expires unless renewed (recovery by lease, not pid)

        def __enter__(self) -> RunQueue: ...
        def __exit__(self, *exc: object) -> None: ...
        def close(self) -> None: ...
        def check(self) -> None: ...
        def verify(self) -> None: ...
        def enqueue(
            self,
            pushes: Sequence[Push],
            trigger: HasJson | None = None,
            executor: str | None = None,
        ) -> list[Entry]: ...
        def last_scheduled(self, git_dir: str, cron: str, ref: str) -> str | None: ...
        def claim_schedule(
            self,
            git_dir: str,
            cron: str,
            ref: str,
            due_at: str,
            push: Push | None = None,
            trigger: HasJson | None = None,
        ) -> tuple[bool, Entry | None]: ...
        def claim(self, owner: Owner) -> Entry | None: ...
        def renew(self, run_id: str, seconds: float) -> Entry | None: ...
        def expired(self, owner: Owner) -> list[Entry]: ...
        def started(self, run_id: str, executor: str, pid: int, start: int | None) -> bool: ...
        def release(self, run_id: str) -> None: ...
        def finish(
            self, run_id: str, outcome: str, reason: str | None, message: str | None
        ) -> bool: ...
        def requeue(self, run_id: str) -> Entry | None: ...
        def cancel(self, run_id: str, by: str | None = None) -> Entry: ...
        def running(self) -> list[Entry]: ...
        def active(self) -> list[Entry]: ...
        def recent(self, limit: int) -> list[Entry]: ...
        def get(self, run_id: str) -> Entry: ...
        def find_active(self, prefix: str) -> Entry: ...
        def prune(self, keep: int = 1000) -> int: ...
        def notifications(self) -> Notifications | None: ...
        # The worker registry (quire.service.registry): `quire ci workers`, the hook's
        # "no worker is running", the web page's.
        def heartbeat(self, worker: WorkerInfo) -> None: ...
        def unregister(self, worker_id: str) -> None: ...
        def workers(self) -> list[WorkerInfo]: ...
        def forget_workers(self, after_s: float) -> int: ...


DATABASE_ENV = "QUIRE_DATABASE_URL"
DEFAULT_LEASE_S = 30.0


def database_url() -> str | None:
    """The PostgreSQL URL to keep the queue in, or None for the SQLite queue.

    QUIRE_DATABASE_URL wins; else `[server] database` in the config file
    (read with tomllib alone: the hook cannot afford pydantic; the full
    model in quire.config validates the same key for everything else).
    """
    url = os.environ.get(DATABASE_ENV)
    if url:
        return url
    server = _config_table("server")
    database = server.get("database") if server else None
    return database if isinstance(database, str) and database else None


def repository_url(git_dir: str) -> str | None:
    """`[repositories.NAME] url` for the repository at `git_dir` (by its store name
    `proj-1a2b3c4d` or its folder name `proj`, as `quire.config` matches), else None:
    workers fetch it by its path, as a file:// URL."""
    repositories = _config_table("repositories")
    if not repositories:
        return None
    from quire.service.queue import repository_name

    store_name = repository_name(git_dir)
    folder = store_name.rsplit("-", 1)[0]
    for name in (store_name, folder):
        found = repositories.get(name)
        url = found.get("url") if isinstance(found, dict) else None
        if isinstance(url, str) and url:
            return url
    return None


def _config_table(name: str) -> dict[str, object] | None:
    """Table `name` of the config file; None when the file is missing, unreadable or
    malformed (quire.config says so to every command but the hook)."""
    try:
        with open(_config_path(), "rb") as file:
            text = file.read()
    except OSError:
        return None  # no config file (the common case), or unreadable
    if f"[{name}".encode() not in text:
        return None  # most config files have neither: skip parsing them
    import tomllib

    try:
        found = tomllib.loads(text.decode("utf-8")).get(name)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    return found if isinstance(found, dict) else None


def _config_path() -> str:
    # quire.paths.config_file() without platformdirs (the same path on Linux).
    override = os.environ.get("QUIRE_CONFIG")
    if override:
        return override
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "quire", "config.toml")


def no_psycopg(url: str) -> str:
    """What to do when a database is configured but psycopg is missing."""
    return (
        f"a database is configured ({server_name(url)}) but psycopg is not installed here: "
        "install quire with its postgres extra (`pipx install './quire[postgres]'` from a "
        "checkout; docs/scale-out.md)"
    )


def server_name(url: str) -> str:
    """`postgresql://user@host:port/db` for `url`, its password left out."""
    from urllib.parse import parse_qs, urlsplit

    try:
        parts = urlsplit(url)
        # postgresql:///db?host=/run/postgresql: a unix socket directory.
        host = parts.hostname or parse_qs(parts.query).get("host", ["localhost"])[0]
        port = f":{parts.port}" if parts.port else ""
        user = f"{parts.username}@" if parts.username else ""
    except ValueError:
        return "the configured PostgreSQL server"
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"
