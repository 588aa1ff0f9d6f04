"""The hook with a PostgreSQL queue: through libpq itself (quire.service.pglite), never
psycopg, with PgQueue's behaviour and words; psycopg's way where no libpq can be loaded.

A real server of this module's own (tests/integration/postgres.py) and real pushes to a
bare repository with the installed hook.
"""

from __future__ import annotations

import io
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from quire.service import hook, pglite
from quire.service.queue import Owner, Push
from quire.service.queues import server_name
from tests.helpers import GIT_ENV, commit, git, make_repo
from tests.integration import postgres

pytestmark = pytest.mark.integration


@pytest.fixture
def no_container_left_behind() -> None:
    """No runs, no containers, no engine (overrides the suite's check)."""


@pytest.fixture(scope="module")
def server() -> Iterator[postgres.Server]:
    try:
        started = postgres.start()
    except postgres.Unavailable as exc:
        if postgres.required():
            pytest.fail(f"QUIRE_REQUIRE_POSTGRES=1 but no PostgreSQL can be started: {exc}")
        pytest.skip(str(exc))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def database(server: postgres.Server, monkeypatch: pytest.MonkeyPatch) -> str:
    from quire.service.pgschema import migrate

    url = server.new_database()
    migrate(url)
    monkeypatch.setenv("QUIRE_DATABASE_URL", url)
    return url


def pushable(tmp_path: Path) -> tuple[Path, Path]:
    work = tmp_path / "work"
    make_repo(work, {"a": "0"})
    bare = tmp_path / "proj.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    from quire.service.install import install

    install(bare, [], tmp_path / "state")
    git(work, "remote", "add", "origin", str(bare))
    return bare, work


def push(work: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "push", "origin", "HEAD:main"],
        cwd=work,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_push_is_queued_through_libpq_without_psycopg_and_wakes_a_listener(
    tmp_path: Path, database: str
) -> None:
    from quire.service.pgqueue import PgQueue

    assert pglite.load() is not None, "no libpq here: the fast path is untested"
    bare, work = pushable(tmp_path)
    hook_file = bare / "hooks" / "post-receive"
    probe = "; print(*sorted(sys.modules), file=sys.stderr)"
    hook_file.write_text(hook_file.read_text().replace("sys.exit(main())", "main()" + probe))
    url = "ssh://git@githost/proj.git"
    config = Path(os.environ["QUIRE_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'[repositories.proj]\nurl = "{url}"\n')
    sha = commit(work, {"a": "1"})
    with PgQueue(database) as queue, queue.notifications() as listening:
        queue.heartbeat(a_worker())  # a worker is live (on another machine, say)
        done = push(work)
        assert done.returncode == 0, done.stderr
        assert listening.wait(30), "the hook's NOTIFY never came"
        (row,) = queue.active()
        assert f"quire: queued run {row.run_id} for refs/heads/main ({sha[:12]})" in done.stderr
        assert (row.git_dir, row.ref, row.sha, row.url) == (str(bare), "refs/heads/main", sha, url)
        claimed = queue.claim(Owner(1, 1, "w"))
        assert claimed is not None and claimed.run_id == row.run_id
    modules = next(line for line in done.stderr.splitlines() if "quire.service.hook" in line)
    loaded = set(modules.split())
    assert "quire.service.pglite" in loaded
    assert not {"psycopg", "pydantic", "quire.service.pgqueue"} & loaded
    assert "no worker is running" not in done.stderr  # the registry has a live worker


def a_worker(ttl_s: float = 30.0) -> Any:
    from datetime import UTC, datetime

    from quire.service.registry import WorkerInfo, new_worker_id

    return WorkerInfo(
        id=new_worker_id(),
        name="build-9",
        host="elsewhere",
        pid=4242,
        started_at=datetime.now(UTC),
        concurrency=1,
        ttl_s=ttl_s,
    )


def test_a_push_with_no_live_worker_warns_the_pusher(tmp_path: Path, database: str) -> None:
    from quire.service.pgqueue import PgQueue

    bare, work = pushable(tmp_path)
    hook_file = bare / "hooks" / "post-receive"
    probe = "; print(*sorted(sys.modules), file=sys.stderr)"
    hook_file.write_text(hook_file.read_text().replace("sys.exit(main())", "main()" + probe))
    commit(work, {"a": "1"})
    done = push(work)
    assert done.returncode == 0, done.stderr
    modules = next(line for line in done.stderr.splitlines() if "quire.service.hook" in line)
    assert not {"psycopg", "urllib.parse", "re"} & set(modules.split())  # still cheap
    warning = (
        "quire: no worker is running (none seen by the queue database within its lease)"
        ": the run waits in the queue (`quire ci worker`)"
    )
    assert warning in done.stderr
    with PgQueue(database) as queue:
        assert len(queue.active()) == 1  # queued all the same
        queue.heartbeat(a_worker(ttl_s=0.2))  # a worker seen once, then gone (kill -9)
        deadline = time.monotonic() + 60
        while queue.workers():
            assert time.monotonic() < deadline, "its heartbeat never expired"
            time.sleep(0.05)
    commit(work, {"a": "2"})
    again = push(work)
    assert warning in again.stderr  # its heartbeat expired: it does not count


def test_without_libpq_a_push_with_no_live_worker_warns_too(
    database: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from quire.service.pgqueue import PgQueue

    monkeypatch.setattr(pglite, "_candidates", lambda: [str(tmp_path / "no-libpq.so")])
    out = io.StringIO()
    hook.queue_pushes(str(tmp_path), "/srv/p.git", [("b" * 40, "refs/heads/x")], out)
    assert "quire: no worker is running (none seen by the queue database" in out.getvalue()
    with PgQueue(database) as queue:
        queue.heartbeat(a_worker())
    out = io.StringIO()
    hook.queue_pushes(str(tmp_path), "/srv/p.git", [("c" * 40, "refs/heads/y")], out)
    assert "quire: queued run" in out.getvalue()
    assert "no worker is running" not in out.getvalue()


def test_a_database_to_migrate_or_from_a_newer_quire_is_said_and_nothing_is_queued(
    server: postgres.Server,
) -> None:
    import psycopg

    from quire.service.errors import QueueCorrupt, QueueUnavailable
    from quire.service.pgschema import MIGRATIONS, SCHEMA_VERSION, migrate

    one = [Push("/srv/p.git", "refs/heads/main", "a" * 40, "2026-12-04T10:00:00.000000Z")]
    empty = server.new_database()
    with pytest.raises(QueueUnavailable, match=r"schema version 0, .*quire ci db migrate"):
        pglite.enqueue(empty, one)
    older = server.new_database()  # what the version before this one made
    with psycopg.connect(older, autocommit=True) as db:
        db.execute("CREATE TABLE schema_version (version integer PRIMARY KEY, applied_at text)")
        for statement in MIGRATIONS[0]:
            db.execute(statement)
        db.execute("INSERT INTO schema_version (version) VALUES (1)")
    with pytest.raises(QueueUnavailable, match=r"schema version 1, .*quire ci db migrate"):
        pglite.enqueue(older, one)
    newer = server.new_database()
    migrate(newer)
    with psycopg.connect(newer, autocommit=True) as db:
        db.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(QueueCorrupt, match="upgrade quire"):
        pglite.enqueue(newer, one)
    with psycopg.connect(newer, autocommit=True) as db:
        assert db.execute("SELECT count(*) FROM queue").fetchone() == (0,)


def test_an_unreachable_server_warns_the_pusher_without_the_password(
    tmp_path: Path, server: postgres.Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = f"postgresql://quire:s3cret-pw@127.0.0.1:{postgres._free_port()}/ci"
    monkeypatch.setenv("QUIRE_DATABASE_URL", gone)
    _bare, work = pushable(tmp_path)
    commit(work, {"a": "1"})
    done = push(work)
    assert done.returncode == 0
    assert "quire: warning: no CI run queued for refs/heads/main" in done.stderr
    assert f"cannot connect to the queue database {server_name(gone)}" in done.stderr
    assert "s3cret" not in done.stderr


def test_without_libpq_the_hook_queues_through_psycopg(
    database: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from quire.service.pgqueue import PgQueue

    monkeypatch.setattr(pglite, "_candidates", lambda: [str(tmp_path / "no-libpq.so")])
    assert pglite.load() is None
    out = io.StringIO()
    assert hook.queue_pushes(str(tmp_path), "/srv/p.git", [("b" * 40, "refs/heads/x")], out) == 1
    with PgQueue(database) as queue:
        (row,) = queue.active()
    assert f"quire: queued run {row.run_id} for refs/heads/x" in out.getvalue()


def test_several_refs_of_one_push_are_queued_in_their_order_in_one_transaction(
    database: str,
) -> None:
    from quire.service.pgqueue import PgQueue

    pushes = [
        Push("/srv/p.git", f"refs/heads/b{i}", f"{i}" * 40, "2026-12-04T10:00:00.000000Z")
        for i in range(3)
    ]
    pushes[1].url = "ssh://githost/p.git"
    with PgQueue(database) as queue, queue.notifications() as listening:
        queue.heartbeat(a_worker())
        queued = pglite.enqueue(database, pushes)
        assert listening.wait(30)
        rows = queue.active()
    assert queued == ([(row.run_id, row.ref, row.sha) for row in rows], 1)  # one live worker
    assert [row.ref for row in rows] == ["refs/heads/b0", "refs/heads/b1", "refs/heads/b2"]
    assert [row.url for row in rows] == [None, "ssh://githost/p.git", None]
    assert len({row.run_id for row in rows}) == 3
