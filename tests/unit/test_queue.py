"""The SQLite run queue: order, one run per ref, claims never shared, retries, faults."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from quire.ci.store.runs import new_run_id as store_run_id
from quire.errors import ExitCode
from quire.service.errors import QueueCorrupt, QueueEntryNotFound, QueueReplaced, QueueUnavailable
from quire.service.queue import Owner, Push, Queue, new_run_id, queue_path

ME = Owner(pid=100, start=1, host="here")


def push(ref: str = "refs/heads/main", sha: str = "a" * 40, git_dir: str = "/srv/p.git") -> Push:
    return Push(git_dir, ref, sha, "2026-11-24T10:00:00.000000Z")


@pytest.fixture
def queue(tmp_path: Path) -> Queue:
    return Queue(queue_path(tmp_path / "state"))


def test_run_ids_have_the_run_store_format() -> None:
    shape = re.compile(r"^\d{8}-\d{6}-\d{6}-[0-9a-f]{6}$")
    assert shape.match(new_run_id())
    assert shape.match(store_run_id())


def test_claims_go_oldest_first(queue: Queue) -> None:
    first, second = queue.enqueue([push("refs/heads/a"), push("refs/heads/b")])
    claimed = queue.claim(ME)
    assert claimed is not None and claimed.run_id == first.run_id
    assert claimed.state == "running" and claimed.worker_pid == ME.pid
    again = queue.claim(ME)
    assert again is not None and again.run_id == second.run_id
    assert queue.claim(ME) is None


def test_a_ref_with_a_running_run_waits_while_other_refs_go(queue: Queue) -> None:
    main1, main2, other = queue.enqueue(
        [push("refs/heads/main"), push("refs/heads/main", "b" * 40), push("refs/heads/x")]
    )
    assert queue.claim(ME).run_id == main1.run_id  # type: ignore[union-attr]
    assert queue.claim(ME).run_id == other.run_id  # type: ignore[union-attr]
    assert queue.claim(ME) is None  # main2 waits for main1
    assert queue.finish(main1.run_id, "complete", None, None)
    assert queue.claim(ME).run_id == main2.run_id  # type: ignore[union-attr]


def test_the_same_ref_of_another_repository_runs_at_the_same_time(queue: Queue) -> None:
    queue.enqueue([push(git_dir="/srv/a.git"), push(git_dir="/srv/b.git")])
    assert queue.claim(ME) is not None
    assert queue.claim(ME) is not None


def test_concurrent_claimers_never_share_a_run(tmp_path: Path) -> None:
    path = Path(queue_path(tmp_path / "state"))
    with Queue(path) as q:
        entries = q.enqueue([push(f"refs/heads/b{i}") for i in range(60)])
    claimed: list[str] = []
    lock = threading.Lock()

    def claimer(pid: int) -> None:
        with Queue(path) as own:
            while (entry := own.claim(Owner(pid, None, "here"))) is not None:
                with lock:
                    claimed.append(entry.run_id)

    threads = [threading.Thread(target=claimer, args=(pid,)) for pid in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(e.run_id for e in entries)


def test_requeue_keeps_the_place_with_a_new_run_id(queue: Queue) -> None:
    first, _second = queue.enqueue([push("refs/heads/a"), push("refs/heads/b")])
    queue.claim(ME)
    again = queue.requeue(first.run_id)
    assert again is not None
    assert again.run_id != first.run_id
    assert (again.retry_of, again.attempt, again.state) == (first.run_id, 2, "queued")
    assert queue.claim(ME).run_id == again.run_id  # type: ignore[union-attr]
    assert queue.requeue(first.run_id) is None  # the old id is gone: nobody requeues it twice


def test_finish_only_moves_a_running_row_once(queue: Queue) -> None:
    (entry,) = queue.enqueue([push()])
    assert not queue.finish(entry.run_id, "complete", None, None)  # still queued
    queue.claim(ME)
    assert queue.finish(entry.run_id, "failed", "jobs-failed", "failed: lint")
    assert not queue.finish(entry.run_id, "complete", None, None)
    done = queue.get(entry.run_id)
    assert (done.state, done.outcome, done.reason) == ("done", "failed", "jobs-failed")


def test_cancel_removes_a_queued_run_and_flags_a_running_one(queue: Queue) -> None:
    running, waiting = queue.enqueue([push("refs/heads/a"), push("refs/heads/b")])
    queue.claim(ME)
    assert queue.cancel(queue.find_active(waiting.run_id[:-2]).run_id).state == "queued"
    assert queue.get(waiting.run_id).outcome == "cancelled"
    assert queue.claim(ME) is None
    assert queue.cancel(running.run_id).state == "running"
    assert queue.get(running.run_id).cancel
    assert queue.started(running.run_id, "host", 4242, None)  # the worker learns of it


def test_find_active_rejects_unknown_and_finished_runs(queue: Queue) -> None:
    (entry,) = queue.enqueue([push()])
    queue.claim(ME)
    queue.finish(entry.run_id, "complete", None, None)
    with pytest.raises(QueueEntryNotFound, match="no queued or running run"):
        queue.find_active(entry.run_id)


def test_a_file_that_is_not_a_database_is_reported_corrupt(tmp_path: Path) -> None:
    path = Path(queue_path(tmp_path))
    path.write_bytes(b"this is not sqlite at all, " * 100)
    with pytest.raises(QueueCorrupt, match="move it aside"):
        Queue(path)


def test_a_damaged_database_fails_its_check(tmp_path: Path) -> None:
    path = Path(queue_path(tmp_path))
    with Queue(path) as q:
        q.enqueue([push(f"refs/heads/b{i}") for i in range(200)])
        q._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        root = q._db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'queue'").fetchone()
        size = q._db.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(path.read_bytes())
    offset = (root[0] - 1) * size
    data[offset : offset + 64] = b"\xff" * 64  # scribble over the table's root page header
    path.write_bytes(bytes(data))
    with pytest.raises(QueueCorrupt), Queue(path) as q:
        q.check()
        q.active()


def test_a_queue_from_a_newer_quire_is_refused(tmp_path: Path) -> None:
    path = Path(queue_path(tmp_path))
    with Queue(path) as q:
        q._db.execute("PRAGMA user_version = 99")
    with pytest.raises(QueueCorrupt, match="upgrade quire"):
        Queue(path)


def test_a_version_1_queue_gains_the_url_column_and_keeps_its_rows(tmp_path: Path) -> None:
    import sqlite3

    from quire.service.queue import _MIGRATIONS, SCHEMA_VERSION

    path = Path(queue_path(tmp_path))
    with sqlite3.connect(path) as db:  # the file quire's first version made
        for statement in _MIGRATIONS[0]:
            db.execute(statement)
        db.execute(
            "INSERT INTO queue (run_id, git_dir, ref, sha, pushed_at) VALUES"
            " ('r1', '/srv/p.git', 'refs/heads/main', 'aaaa', 'now')"
        )
        db.execute("PRAGMA user_version = 1")
    db.close()
    with Queue(path) as q:
        assert q._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert q.workers() == []  # version 3: the worker registry's table, empty
        old = q.get("r1")
        assert (old.url, old.fetch_url) == (None, "file:///srv/p.git")
        (new,) = q.enqueue([Push("/srv/p.git", "refs/heads/x", "b" * 40, "now", "ssh://h/p.git")])
        assert q.get(new.run_id).url == "ssh://h/p.git"
    with Queue(path) as q:  # opened again: nothing to migrate, nothing lost
        assert [e.run_id for e in q.active()] == ["r1", new.run_id]


def test_a_full_disk_is_unavailable_not_corrupt(queue: Queue) -> None:
    pages = queue._db.execute("PRAGMA page_count").fetchone()[0]
    queue._db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(QueueUnavailable, match="full"):
        queue.enqueue([push(f"refs/heads/b{i}", "c" * 40) for i in range(500)])
    assert queue.active() == []  # the failed transaction left nothing half-queued


def test_prune_keeps_the_newest_finished_rows(queue: Queue) -> None:
    entries = queue.enqueue([push(f"refs/heads/b{i}") for i in range(5)])
    for _ in entries:
        claimed = queue.claim(ME)
        assert claimed is not None
        queue.finish(claimed.run_id, "complete", None, None)
    assert queue.prune(keep=2) == 3
    assert [e.run_id for e in queue.recent(10)] == [e.run_id for e in entries[:-3:-1]]


# --- the file itself: private, and noticed when it is replaced under an open connection ---------


def test_the_queue_files_are_created_private(tmp_path: Path) -> None:
    path = Path(queue_path(tmp_path / "state"))
    old = os.umask(0o022)  # the usual umask, under which SQLite alone makes them 0644
    try:
        with Queue(path) as q:
            q.enqueue([push()])  # a write: the -wal and -shm files exist now
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
    finally:
        os.umask(old)
    assert modes == {
        "queue.sqlite3": 0o600,
        "queue.sqlite3-wal": 0o600,
        "queue.sqlite3-shm": 0o600,
    }


def test_an_existing_queue_file_keeps_its_mode(tmp_path: Path) -> None:
    path = Path(queue_path(tmp_path))
    Queue(path).close()
    path.chmod(0o640)  # a deliberate choice (a group of operators) is not undone
    Queue(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_verify_accepts_the_file_it_opened_after_writes_and_checkpoints(queue: Queue) -> None:
    queue.enqueue([push(f"refs/heads/b{i}") for i in range(50)])
    queue._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    queue.verify()


READ_AND_CLOSE = """
import sys
from quire.service.queue import Push, Queue
with Queue(sys.argv[1]) as q:
    if sys.argv[2] == "write":
        q.enqueue([Push("/srv/p.git", "refs/heads/other", "b" * 40, "2026-11-24T10:00:00Z")])
    print(len(q.active()))
"""


def test_verify_and_opening_keep_this_process_locks_so_other_processes_see_its_writes(
    tmp_path: Path,
) -> None:
    # Closing any descriptor of the database drops this process's SQLite locks: another
    # process closing last would then checkpoint and delete the WAL still in use here.
    path = Path(queue_path(tmp_path / "state"))

    def other(mode: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", READ_AND_CLOSE, str(path), mode],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(done.stdout)

    with Queue(path) as q:
        q.enqueue([push()])
        q.verify()
        Queue(path).close()  # another connection of this process opens the file too
        assert other("write") == 2  # and it closes: it must not think it is the last
        claimed = q.claim(ME)
        assert claimed is not None
        q.finish(claimed.run_id, "complete", None, None)
        assert other("read") == 1  # the finish, written here after, is seen there
        q.verify()


def replace_by_another_queue(path: Path) -> None:
    other = path.with_name("other.sqlite3")
    Queue(other).close()
    os.replace(other, path)


def truncate(path: Path) -> None:
    os.truncate(path, 0)


def delete_all(path: Path) -> None:
    for name in ("", "-wal", "-shm"):
        Path(f"{path}{name}").unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (replace_by_another_queue, "another file took its place"),
        (truncate, "truncated to 0 bytes"),
        (delete_all, "it was deleted"),
    ],
)
def test_verify_notices_the_file_replaced_under_an_open_queue(
    tmp_path: Path, damage: Callable[[Path], None], what: str
) -> None:
    path = Path(queue_path(tmp_path / "state"))
    with Queue(path) as q:
        q.enqueue([push()])
        damage(path)
        q.active()  # SQLite itself goes on as if nothing happened
        with pytest.raises(QueueReplaced, match="replaced or truncated") as raised:
            q.verify()
    assert str(path) in str(raised.value) and what in str(raised.value)
    assert raised.value.exit_code == ExitCode.environment  # `quire ci worker` exits 3


def test_opening_a_queue_truncated_under_its_workers_names_the_problem(tmp_path: Path) -> None:
    path = Path(queue_path(tmp_path / "state"))
    with Queue(path) as worker:
        worker.enqueue([push()])
        truncate(path)
        # SQLite alone says "database is locked", after its whole timeout.
        with pytest.raises(QueueReplaced, match="truncated while workers had it open") as raised:
            Queue(path, timeout=30)
    assert "-wal is not" in str(raised.value) and "locked" not in str(raised.value)
