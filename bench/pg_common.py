"""A throwaway PostgreSQL for the benchmarks (not a benchmark itself): the tests' own
server (tests/integration/postgres.py: Debian's initdb/pg_ctl in a temp directory on
127.0.0.1, fsync off), a new database migrated to quire's schema, and workers that stand
for separate machines (each its own state and cache directories and --name)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import _common as c

sys.path.insert(0, str(c.ROOT))  # tests.integration.postgres


@contextmanager
def server() -> Iterator[object]:
    """A running server (`.new_database()` gives a URL); stopped and removed at the end."""
    from tests.integration import postgres

    try:
        started = postgres.start()
    except postgres.Unavailable as exc:
        raise SystemExit(f"no PostgreSQL for this benchmark: {exc}") from exc
    try:
        yield started
    finally:
        started.stop()


def database(pg: object, version: int | None = None) -> str:
    """A new database of `pg`, migrated (`quire.service.pgschema.migrate`), or only up to
    schema `version` (for an older quire)."""
    from quire.service.pgschema import MIGRATIONS, migrate

    url: str = pg.new_database()  # type: ignore[attr-defined]
    if version is None:
        migrate(url)
        return url
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE TABLE schema_version (version integer PRIMARY KEY, applied_at text)")
        for number, statements in enumerate(MIGRATIONS[:version], start=1):
            for statement in statements:
                db.execute(statement)
            db.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))
    return url


@contextmanager
def machine_worker(sc: c.Scratch, url: str, name: str, *args: str) -> Iterator[Path]:
    """`quire ci worker --name NAME` on the database `url`, with its own state and cache
    directories under the scratch dir (another machine); yields its state directory.
    Stopped by pid at the end."""
    home = sc.root / f"machine-{name}"
    env = {
        **c.quire_env(sc),
        "QUIRE_DATABASE_URL": url,
        "QUIRE_STATE_DIR": str(home / "state"),
        "QUIRE_CACHE_DIR": str(home / "cache"),
    }
    home.mkdir(exist_ok=True)
    log_path = home / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [c.QUIRE, "ci", "worker", "--name", name, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            deadline = time.monotonic() + 60
            while b"started" not in log_path.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(log_path.read_text())
                time.sleep(0.01)
            yield home / "state"
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
