"""One contract, two queues: every test runs on the SQLite queue and on a real PostgreSQL.

The PostgreSQL server is started by this module in a temp directory
(tests/integration/postgres.py) and stopped at its end; each test gets a
new database. Without PostgreSQL the `postgres` half is skipped with the
reason, unless QUIRE_REQUIRE_POSTGRES=1 makes that a failure. Needs no
container engine.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from quire.service import recovery
from quire.service.errors import QueueCorrupt, QueueEntryNotFound, QueueUnavailable
from quire.service.queue import Entry, Owner, Push, Queue, open_queue, queue_path

if TYPE_CHECKING:
    from quire.service.queues import RunQueue  # the hook's cheap TYPE_CHECKING: types only
from tests.integration import postgres

pytestmark = pytest.mark.integration

HOST = "here"
A = Owner(pid=1001, start=1, host=HOST)
B = Owner(pid=1002, start=2, host=HOST)
SHORT_LEASE_S = 0.5


def push(ref: str = "refs/heads/main", sha: str = "a" * 40, git_dir: str = "/srv/p.git") -> Push:
    return Push(git_dir, ref, sha, "2026-11-24T10:00:00.000000Z")


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def no_container_left_behind() -> None:
    """The queue alone: no runs, no containers, no engine (overrides the suite's check)."""


@pytest.fixture(scope="module")
def server() -> Iterator[postgres.Server | None]:
    try:
        started = postgres.start()
    except postgres.Unavailable as exc:
        if postgres.required():
            pytest.fail(f"QUIRE_REQUIRE_POSTGRES=1 but no PostgreSQL can be started: {exc}")
        yield None
        return
    try:
        yield started
    finally:
        started.stop()


Opener = Callable[..., "RunQueue"]


@pytest.fixture(params=["sqlite", "postgres"])
def connect(
    request: pytest.FixtureRequest, tmp_path: Path, server: postgres.Server | None
) -> Iterator[Opener]:
    """Opens connections to one new, empty queue: `connect(lease_s=...)`."""
    opened: list[RunQueue] = []
    if request.param == "sqlite":
        path = queue_path(tmp_path / "state")

        def open_one(lease_s: float = 30.0) -> RunQueue:
            opened.append(Queue(path))
            return opened[-1]
    else:
        if server is None:
            pytest.skip("no PostgreSQL server could be started (apt-get install postgresql)")
        from quire.service.pgqueue import PgQueue
        from quire.service.pgschema import migrate

        url = server.new_database()
        migrate(url)

        def open_one(lease_s: float = 30.0) -> RunQueue:
            opened.append(PgQueue(url, lease_s=lease_s))
            return opened[-1]

    yield open_one
    for queue in opened:
        # A claimer thread closed its own SQLite connection (only its thread may).
        with contextlib.suppress(sqlite3.ProgrammingError):
            queue.close()


@pytest.fixture
def queue(connect: Opener) -> RunQueue:
    return connect()


class NoRecords(recovery.Records):
    """A run store that has no record of any run (the worker that ran it was elsewhere)."""

    def find(self, entry: Entry) -> None:
        return None

    def reconcile(self, entry: Entry) -> None:
        return None


def claimed(queue: RunQueue, owner: Owner = A) -> Entry:
    entry = queue.claim(owner)
    assert entry is not None
    return entry


# --- where workers fetch ----------------------------------------------------------------------


def test_a_run_carries_the_url_it_was_queued_with_or_none(queue: RunQueue) -> None:
    url = "ssh://git@githost/p.git"
    by_url, by_path = queue.enqueue(
        [
            Push("/srv/p.git", "refs/heads/a", "a" * 40, "2026-11-24T10:00:00.000000Z", url),
            push("refs/heads/b"),
        ]
    )
    assert (by_url.url, by_url.fetch_url) == (url, url)
    assert (by_path.url, by_path.fetch_url) == (None, "file:///srv/p.git")
    got = claimed(queue)
    assert (got.run_id, got.url) == (by_url.run_id, url)
    again = queue.requeue(got.run_id)
    assert again is not None and again.url == url  # a lost run is fetched from there again
    assert queue.get(by_path.run_id).url is None


# --- order and exclusion ----------------------------------------------------------------------


def test_claims_go_oldest_first_and_name_their_owner(queue: RunQueue) -> None:
    first, second = queue.enqueue([push("refs/heads/a"), push("refs/heads/b")])
    got = claimed(queue)
    assert (got.run_id, got.state, got.worker_pid, got.worker_host) == (
        first.run_id,
        "running",
        A.pid,
        HOST,
    )
    assert claimed(queue).run_id == second.run_id
    assert queue.claim(A) is None
    assert [e.run_id for e in queue.active()] == [first.run_id, second.run_id]


def test_concurrent_claimers_never_share_a_run(connect: Opener) -> None:
    entries = connect().enqueue([push(f"refs/heads/b{i}") for i in range(40)])
    taken: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def claimer(pid: int) -> None:
        with connect() as own:
            start.wait()
            while (entry := own.claim(Owner(pid, None, HOST))) is not None:
                with lock:
                    taken.append(entry.run_id)

    threads = [threading.Thread(target=claimer, args=(pid,)) for pid in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(taken) == sorted(e.run_id for e in entries)


def test_a_trigger_is_kept_and_a_push_has_none(queue: RunQueue) -> None:
    from quire.ci.store.records import Trigger

    (pushed,) = queue.enqueue([push("refs/heads/a")])
    asked = Trigger(kind="manual", by="alice")
    (manual,) = queue.enqueue([push("refs/heads/b")], asked)
    assert pushed.trigger_json is None
    assert Trigger.model_validate_json(manual.trigger_json or "") == asked
    assert queue.get(manual.run_id).trigger_json == manual.trigger_json


def test_concurrent_schedulers_queue_a_scheduled_time_once(connect: Opener) -> None:
    from quire.ci.store.records import Trigger

    key = ("/srv/p.git", "0 3 * * *", "refs/heads/main")
    assert connect().last_scheduled(*key) is None
    trigger = Trigger(kind="schedule", schedule="0 3 * * *")
    made: list[Entry] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def scheduler() -> None:
        with connect() as own:
            start.wait()
            for due in ("2026-01-05T03:00:00Z", "2026-01-06T03:00:00Z"):
                taken, entry = own.claim_schedule(*key, due, push(), trigger)
                assert taken == (entry is not None)
                if entry is not None:
                    with lock:
                        made.append(entry)

    threads = [threading.Thread(target=scheduler) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(made) == 2 and len(connect().active()) == 2
    assert connect().last_scheduled(*key) == "2026-01-06T03:00:00Z"
    # A time taken without a run (a new schedule's first sight) counts as taken too.
    assert connect().claim_schedule(*key, "2026-01-07T03:00:00Z") == (True, None)
    assert connect().claim_schedule(*key, "2026-01-07T03:00:00Z", push(), trigger) == (False, None)


def test_one_run_per_repository_and_ref_at_a_time(queue: RunQueue) -> None:
    main1, main2, other = queue.enqueue([push(), push(sha="b" * 40), push("refs/heads/x")])
    assert claimed(queue).run_id == main1.run_id
    assert claimed(queue).run_id == other.run_id  # main2 waits for main1
    assert queue.claim(A) is None
    assert queue.finish(main1.run_id, "complete", None, None)
    assert claimed(queue).run_id == main2.run_id


def test_concurrent_claimers_start_one_run_of_a_ref(connect: Opener) -> None:
    connect().enqueue([push(sha=f"{i:040x}") for i in range(8)])
    taken: list[str] = []
    start = threading.Barrier(4)

    def claimer(pid: int) -> None:
        with connect() as own:
            start.wait()
            for _ in range(5):
                entry = own.claim(Owner(pid, None, HOST))
                if entry is not None:
                    taken.append(entry.run_id)

    threads = [threading.Thread(target=claimer, args=(pid,)) for pid in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(taken) == 1
    assert [e.run_id for e in connect().running()] == taken


def test_the_same_ref_of_another_repository_runs_at_the_same_time(queue: RunQueue) -> None:
    queue.enqueue([push(git_dir="/srv/a.git"), push(git_dir="/srv/b.git")])
    assert queue.claim(A) is not None
    assert queue.claim(A) is not None


# --- finishing, cancelling, pruning ------------------------------------------------------------


def test_finish_moves_a_running_row_once(queue: RunQueue) -> None:
    (entry,) = queue.enqueue([push()])
    assert not queue.finish(entry.run_id, "complete", None, None)  # not running yet
    claimed(queue)
    assert queue.finish(entry.run_id, "failed", "jobs-failed", "lint failed")
    assert not queue.finish(entry.run_id, "complete", None, None)
    done = queue.get(entry.run_id)
    assert (done.state, done.outcome, done.reason, done.message) == (
        "done",
        "failed",
        "jobs-failed",
        "lint failed",
    )
    assert [e.run_id for e in queue.recent(5)] == [entry.run_id]


def test_cancel_ends_a_queued_run_and_flags_a_running_one(queue: RunQueue) -> None:
    running, waiting = queue.enqueue([push("refs/heads/a"), push("refs/heads/b")])
    claimed(queue)
    assert queue.cancel(waiting.run_id).state == "queued"
    gone = queue.get(waiting.run_id)
    assert (gone.state, gone.outcome) == ("done", "cancelled")
    assert queue.cancel(running.run_id).state == "running"
    flagged = queue.get(running.run_id)
    assert (flagged.state, flagged.cancel) == ("running", True)
    renewed = queue.renew(running.run_id, 30)  # how a worker elsewhere learns of it
    assert renewed is not None and renewed.cancel
    assert queue.started(running.run_id, "host", 4242, None)
    with pytest.raises(QueueEntryNotFound):
        queue.cancel(waiting.run_id)


def test_find_active_takes_a_unique_prefix_only(queue: RunQueue) -> None:
    (entry,) = queue.enqueue([push()])
    assert queue.find_active(entry.run_id[:-2]).run_id == entry.run_id
    with pytest.raises(QueueEntryNotFound):
        queue.find_active("19990101")


def test_prune_keeps_the_newest_finished_rows(queue: RunQueue) -> None:
    entries = queue.enqueue([push(f"refs/heads/b{i}") for i in range(5)])
    for entry in entries:
        claimed(queue)
        queue.finish(entry.run_id, "complete", None, None)
    assert queue.prune(keep=2) == 3
    assert [e.run_id for e in queue.recent(10)] == [e.run_id for e in entries[:2:-1]]


def test_release_puts_a_claim_back_at_its_place(queue: RunQueue) -> None:
    first, _ = queue.enqueue([push("refs/heads/a"), push("refs/heads/b")])
    claimed(queue)
    queue.release(first.run_id)
    assert claimed(queue).run_id == first.run_id


def test_a_rows_trigger_and_executor_are_kept_and_a_push_has_neither(queue: RunQueue) -> None:
    from quire.ci.store.records import Trigger

    rerun = Trigger(kind="rerun", by="olive", rerun_of="r0")
    (pushed,) = queue.enqueue([push("refs/heads/a")])
    (again,) = queue.enqueue([push("refs/heads/b")], rerun, "docker")
    assert (pushed.trigger_json, pushed.executor) == (None, None)
    assert again.trigger_json is not None and again.executor == "docker"
    assert Trigger.model_validate_json(again.trigger_json) == rerun
    first, second = claimed(queue), claimed(queue)
    for entry in (first, second):
        queue.started(entry.run_id, entry.executor or "host", 1, None)
    queue.release(first.run_id)
    requeued = queue.requeue(second.run_id)
    assert requeued is not None
    assert (requeued.trigger_json, requeued.executor) == (again.trigger_json, "docker")
    assert queue.get(first.run_id).executor is None  # a push's is chosen at its next claim


# --- a lost worker -----------------------------------------------------------------------------


def dead_owner() -> Owner:
    """A worker on this host that has exited (its pid is free)."""
    ended = subprocess.Popen(["true"])
    ended.wait()
    return Owner(ended.pid, None, HOST)


def lose(connect: Opener, queue: RunQueue) -> Owner:
    """Claim the oldest row for a worker that then vanishes; returns that worker."""
    gone = dead_owner()
    short = connect(lease_s=SHORT_LEASE_S)
    assert short.claim(gone) is not None
    return gone


def test_a_lost_workers_run_is_found_by_a_live_one(connect: Opener) -> None:
    queue = connect()
    (entry,) = queue.enqueue([push()])
    gone = lose(connect, queue)
    found: list[Entry] = []
    wait_until(lambda: found.extend(recovery.lost_runs(queue, B)) or found, "the run to be lost")
    assert [(e.run_id, e.worker_pid) for e in found] == [(entry.run_id, gone.pid)]


def test_a_lost_run_is_queued_again_once_then_abandoned(connect: Opener) -> None:
    queue = connect()
    (entry,) = queue.enqueue([push()])
    notes: list[tuple[str, str | None]] = []

    def note(lost: Entry, result: recovery.Outcome) -> None:
        notes.append((lost.run_id, result.reason))

    def lose_and_recover() -> None:
        lose(connect, queue)
        wait_until(
            lambda: recovery.recover(queue, B, note, NoRecords()), "the lost run to be recovered"
        )

    lose_and_recover()
    again = queue.active()[0]
    assert (again.state, again.attempt, again.retry_of, again.seq) == (
        "queued",
        2,
        entry.run_id,
        entry.seq,
    )
    lose_and_recover()
    done = queue.get(again.run_id)
    assert (done.state, done.outcome, done.reason) == ("done", "failed", "abandoned")
    assert notes == [(entry.run_id, "orphaned"), (again.run_id, "abandoned")]
    assert queue.active() == []


def test_a_renewed_lease_is_not_taken_over(connect: Opener, queue: RunQueue) -> None:
    if not queue.leases:
        pytest.skip("SQLite claims last as long as their worker's pid: nothing expires")
    kept, control = queue.enqueue([push("refs/heads/a"), push("refs/heads/b")])
    mine = connect(lease_s=SHORT_LEASE_S)
    claimed(mine)
    claimed(mine)
    assert mine.renew(kept.run_id, 3600) is not None
    taken: list[Entry] = []
    wait_until(lambda: taken.extend(queue.expired(B)) or taken, "the unrenewed lease to expire")
    assert [e.run_id for e in taken] == [control.run_id]
    assert mine.renew(control.run_id, 30) is None  # taken over: the old owner must stop it
    assert mine.renew(kept.run_id, 30) is not None


def test_a_lease_taken_over_is_handed_to_one_worker_only(connect: Opener, queue: RunQueue) -> None:
    if not queue.leases:
        pytest.skip("SQLite claims last as long as their worker's pid: nothing expires")
    queue.enqueue([push()])
    lose(connect, queue)
    first: list[Entry] = []
    wait_until(lambda: first.extend(queue.expired(B)) or first, "the lease to expire")
    assert connect().expired(A) == []  # B holds it now, with a fresh lease


# --- wake-ups ----------------------------------------------------------------------------------


def test_enqueue_wakes_a_waiting_listener(connect: Opener, queue: RunQueue) -> None:
    notifications = queue.notifications()
    if notifications is None:
        pytest.skip("SQLite has no NOTIFY: the hook wakes workers over quire.service.wake")
    with notifications:
        assert notifications.drain() == 0
        woken: list[bool] = []
        wait = notifications.wait  # type: ignore[attr-defined]  # PgQueue's, beyond the protocol
        waiter = threading.Thread(target=lambda: woken.append(wait(30)))
        waiter.start()
        connect().enqueue([push()])
        waiter.join(60)
        assert woken == [True]


# --- the worker registry ------------------------------------------------------------------------


def registered(pid: int, *, name: str = "build-1", ttl_s: float = 30.0, **fields: Any) -> Any:
    from datetime import UTC, datetime

    from quire.ci.store.liveness import process_start_ticks
    from quire.service.registry import WorkerInfo, new_worker_id

    return WorkerInfo(
        id=new_worker_id(),
        name=name,
        host=socket.gethostname(),
        pid=pid,
        start=process_start_ticks(pid),
        started_at=datetime.now(UTC),
        concurrency=2,
        ttl_s=ttl_s,
        **fields,
    )


def test_a_worker_registers_refreshes_and_unregisters(connect: Opener, queue: RunQueue) -> None:
    me = registered(os.getpid(), name="build-1")
    queue.heartbeat(me)
    (seen,) = connect().workers()  # from another connection (another machine)
    assert (seen.id, seen.name, seen.host, seen.pid, seen.start) == (
        me.id,
        "build-1",
        socket.gethostname(),
        os.getpid(),
        me.start,
    )
    assert (seen.concurrency, seen.running, seen.ttl_s) == (2, (), 30.0)
    assert seen.started_at == me.started_at and seen.seen_at is not None
    queue.heartbeat(me.model_copy(update={"running": ("r1", "r2")}))
    (again,) = queue.workers()
    assert again.running == ("r1", "r2")
    assert again.seen_at is not None and again.seen_at >= seen.seen_at
    assert again.started_at == me.started_at  # a heartbeat keeps when it started
    other = registered(os.getpid(), name="build-0")
    queue.heartbeat(other)
    assert [w.name for w in queue.workers()] == ["build-0", "build-1"]  # by name
    queue.unregister(me.id)
    assert [w.id for w in connect().workers()] == [other.id]


def test_a_killed_workers_row_stops_counting_and_is_forgotten_later(queue: RunQueue) -> None:
    victim = subprocess.Popen(["sleep", "600"])
    try:
        dead = registered(victim.pid, name="victim", ttl_s=SHORT_LEASE_S)
        live = registered(os.getpid(), name="live")
        queue.heartbeat(dead)
        queue.heartbeat(live)
        assert {w.name for w in queue.workers()} == {"victim", "live"}
        assert queue.forget_workers(0.0) == 0  # both live: nothing to forget
    finally:
        victim.kill()
        victim.wait()
    # SQLite: its process is gone; PostgreSQL: its heartbeat expires after its ttl.
    wait_until(lambda: [w.name for w in queue.workers()] == ["live"], "the dead worker to go")
    assert queue.forget_workers(3600.0) == 0  # dead, but seen too recently to forget
    assert queue.forget_workers(0.0) == 1
    assert queue.forget_workers(0.0) == 0
    assert [w.name for w in queue.workers()] == ["live"]


# --- PostgreSQL only: schema, errors, configuration --------------------------------------------


@pytest.fixture
def pg(server: postgres.Server | None) -> postgres.Server:
    if server is None:
        pytest.skip("no PostgreSQL server could be started (apt-get install postgresql)")
    return server


def test_migrate_creates_the_schema_once(pg: postgres.Server) -> None:
    from quire.service.pgqueue import PgQueue
    from quire.service.pgschema import SCHEMA_VERSION, migrate

    url = pg.new_database()
    with pytest.raises(QueueUnavailable, match="quire ci db migrate"):
        PgQueue(url)
    assert migrate(url) == (0, SCHEMA_VERSION)
    assert migrate(url) == (SCHEMA_VERSION, SCHEMA_VERSION)
    with PgQueue(url) as queue:
        queue.check()


def test_migrate_brings_a_version_1_database_to_this_quire_keeping_its_rows(
    pg: postgres.Server,
) -> None:
    import psycopg

    from quire.service.pgqueue import PgQueue
    from quire.service.pgschema import MIGRATIONS, SCHEMA_VERSION, migrate

    url = pg.new_database()
    with psycopg.connect(url, autocommit=True) as db:  # what quire's first version made
        db.execute("CREATE TABLE schema_version (version integer PRIMARY KEY, applied_at text)")
        for statement in MIGRATIONS[0]:
            db.execute(statement)
        db.execute("INSERT INTO schema_version (version) VALUES (1)")
        db.execute(
            "INSERT INTO queue (run_id, git_dir, ref, sha, pushed_at) VALUES"
            " ('r1', '/srv/p.git', 'refs/heads/main', 'aaaa', 'now')"
        )
    with pytest.raises(QueueUnavailable, match="quire ci db migrate"):
        PgQueue(url)
    assert migrate(url) == (1, SCHEMA_VERSION)
    with PgQueue(url) as queue:
        old = queue.get("r1")
        assert (old.git_dir, old.url, old.fetch_url) == ("/srv/p.git", None, "file:///srv/p.git")
        assert old.trigger_json is None  # a push


def test_a_schema_from_a_newer_quire_is_refused(pg: postgres.Server) -> None:
    import psycopg

    from quire.service.pgqueue import PgQueue
    from quire.service.pgschema import SCHEMA_VERSION, migrate

    url = pg.new_database()
    migrate(url)
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(QueueCorrupt, match="upgrade quire"):
        PgQueue(url)


def test_an_unreachable_server_is_unavailable_and_its_password_never_shown(
    pg: postgres.Server,
) -> None:
    from quire.service.pgqueue import PgQueue

    url = f"postgresql://quire:s3cret-pw@127.0.0.1:{pg.port + 1}/quire"
    with pytest.raises(QueueUnavailable) as caught:
        PgQueue(url)
    assert "127.0.0.1" in str(caught.value) and "s3cret-pw" not in str(caught.value)
    assert caught.value.exit_code == 3


def test_open_queue_uses_postgresql_when_a_database_is_configured(
    pg: postgres.Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quire.service.pgqueue import PgQueue
    from quire.service.pgschema import migrate

    url = pg.new_database()
    migrate(url)
    state = tmp_path / "state"
    with open_queue(state) as queue:
        assert isinstance(queue, Queue)
    config = tmp_path / "config.toml"
    config.write_text(f'[server]\ndatabase = "{url}"\n')
    monkeypatch.setenv("QUIRE_CONFIG", str(config))
    with open_queue(state, lease_s=7) as queue:
        assert isinstance(queue, PgQueue) and queue.lease_s == 7
    monkeypatch.setenv("QUIRE_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("QUIRE_DATABASE_URL", url)
    elsewhere = tmp_path / "elsewhere"
    with open_queue(elsewhere) as queue:
        assert isinstance(queue, PgQueue)
    assert not Path(queue_path(elsewhere)).exists()


def test_leases_that_ran_out_while_the_database_was_down_get_a_lease_to_be_renewed(
    pg: postgres.Server,
) -> None:
    import datetime

    import psycopg

    from quire.service.pgqueue import PgQueue
    from quire.service.pgschema import migrate

    lease_s = 3.0
    own = postgres.start()  # restarted below: not the module's server
    try:
        url = own.new_database()
        migrate(url)
        with PgQueue(url, lease_s=lease_s) as holder:
            holder.enqueue([push()])
            held = claimed(holder)
        with psycopg.connect(url) as db:
            row = db.execute("SELECT lease_until FROM queue").fetchone()
        assert row is not None
        until: datetime.datetime = row[0]
        own.halt()
        wait_until(lambda: datetime.datetime.now(datetime.UTC) > until, "the lease to run out", 30)
        own.start()
        with PgQueue(url) as rescuer:
            assert rescuer.expired(B) == []  # its worker gets a lease's time to renew it
            taken: list[Entry] = []
            wait_until(lambda: taken.extend(rescuer.expired(B)) or taken, "the grace to end")
        assert [e.run_id for e in taken] == [held.run_id]
    finally:
        own.stop()
