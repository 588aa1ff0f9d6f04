"""A throwaway PostgreSQL server for the tests that need one (no fixtures here).

`start()` runs Debian's `initdb` and `pg_ctl` into a fresh temp directory,
trusting local connections, listening on 127.0.0.1 on a free port (no unix
socket), and returns a `Server` whose `stop()` ends it and removes the
directory. As root, the server runs as the `postgres` user (PostgreSQL
refuses root). Without a usable PostgreSQL, `start()` raises `Unavailable`
with the reason; callers skip on it unless QUIRE_REQUIRE_POSTGRES=1.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass

REQUIRE_ENV = "QUIRE_REQUIRE_POSTGRES"


class Unavailable(Exception):
    """No PostgreSQL server can be started here (the message says why)."""


@dataclass
class Server:
    bin_dir: str
    root: str
    port: int
    as_user: list[str]

    @property
    def data(self) -> str:
        return os.path.join(self.root, "data")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A new empty database's URL."""
        import psycopg

        name = f"quire_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def start(self) -> None:
        """Start the server (again); raises `Unavailable`."""
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''"
        options += " -c fsync=off"  # a test server: nothing to keep after a crash
        logged = ["-l", os.path.join(self.root, "log"), "-o", options]
        pg_ctl = [*self.as_user, f"{self.bin_dir}/pg_ctl"]
        _run([*pg_ctl, "start", "-D", self.data, "-w", "-t", "60", *logged])

    def halt(self) -> None:
        """Stop the server, keeping its data (`start()` brings it back)."""
        pg_ctl = [*self.as_user, f"{self.bin_dir}/pg_ctl"]
        subprocess.run(
            [*pg_ctl, "stop", "-D", self.data, "-m", "fast"],
            capture_output=True,
            timeout=60,
            check=False,
        )

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        self.halt()
        shutil.rmtree(self.root, ignore_errors=True)


def required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def start() -> Server:
    """A running server; raises `Unavailable`."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise Unavailable("no PostgreSQL installed (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise Unavailable("psycopg is not installed (pip install 'quire[postgres]')") from exc
    bin_dir = os.path.dirname(found[-1])
    # Directly under /tmp: the postgres user cannot enter pytest's root-only temp dirs.
    root = tempfile.mkdtemp(prefix="quire-pg-")
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise Unavailable("running as root and there is no postgres user") from exc
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    server = Server(bin_dir, root, _free_port(), as_user)
    try:
        init = ["-D", server.data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"]
        _run([*as_user, f"{bin_dir}/initdb", *init])
        server.start()
    except Unavailable:
        server.stop()
        raise
    return server


def _run(argv: list[str]) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        raise Unavailable(f"{' '.join(argv)} failed: {(done.stderr or done.stdout)[-500:]}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
