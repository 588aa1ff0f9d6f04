"""The SQLite runs index: current after moves, no listing of unchanged directories, rebuildable."""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from quire.ci.store.records import RunTimes, write_record
from quire.ci.store.runs import RunState
from quire.web import index as index_module
from quire.web.index import RunIndex, default_index_path
from quire.web.lookup import StoreView
from tests.unit.test_web_support import T0, Store, run_id


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state")


def open_index(store: Store, path: Path | None = None) -> RunIndex:
    return RunIndex(StoreView(store.state / "runs"), path or default_index_path(store.state))


def ids(index: RunIndex, **filters: object) -> list[str]:
    index.sync()
    return [run.id for run in index.page(**filters, per_page=1000).runs]  # type: ignore[arg-type]


def age(directory: Path, seconds: float = 3600) -> int:
    """Set `directory`'s mtime `seconds` in the past; returns it (ns)."""
    past = time.time() - seconds
    os.utime(directory, (past, past))
    return directory.stat().st_mtime_ns


def test_sync_indexes_every_run_of_every_repository(store: Store) -> None:
    store.add(1, repo="a")
    store.add(2, repo="b", state="failed")
    store.add(3, repo="a", state="active")
    index = open_index(store)
    assert ids(index) == [run_id(3), run_id(2), run_id(1)]
    assert ids(index, repo="a") == [run_id(3), run_id(1)]
    assert ids(index, state=RunState.failed) == [run_id(2)]
    page = index.page(repo="b")
    assert page.runs[0].repo == "b" and page.runs[0].reason == "jobs-failed"


def test_an_unchanged_state_directory_is_not_listed_again(store: Store) -> None:
    store.add(1)
    complete = store.state / "runs" / "proj" / "complete"
    old = age(complete)
    index = open_index(store)
    assert ids(index) == [run_id(1)]
    # A run slipped in without the directory's mtime changing: a sync that
    # trusts the mtime (as it should) does not list the directory to find it.
    shutil.copytree(complete / run_id(1), complete / run_id(2))
    os.utime(complete, ns=(old, old))
    assert ids(index) == [run_id(1)]
    os.utime(complete)  # now it changed
    assert ids(index) == [run_id(2), run_id(1)]


def test_a_recently_changed_directory_is_listed_again(store: Store) -> None:
    store.add(1)
    complete = store.state / "runs" / "proj" / "complete"
    index = open_index(store)
    assert ids(index) == [run_id(1)]
    stamp = complete.stat().st_mtime_ns
    shutil.copytree(complete / run_id(1), complete / run_id(2))
    os.utime(complete, ns=(stamp, stamp))  # same mtime, but within the racy window
    assert ids(index) == [run_id(2), run_id(1)]


def test_a_run_that_moves_from_active_to_failed_changes_state(store: Store) -> None:
    path = store.add(1, state="active")
    index = open_index(store)
    assert ids(index, state=RunState.active) == [run_id(1)]
    failed = path.parent.parent / "failed"
    failed.mkdir()
    path.rename(failed / path.name)
    assert ids(index, state=RunState.active) == []
    assert ids(index, state=RunState.failed) == [run_id(1)]


def test_an_active_run_is_read_again_on_every_sync(store: Store) -> None:
    path = store.add(1, state="active")
    index = open_index(store)
    index.sync()
    assert index.page().runs[0].finished_at is None
    write_record(path / "times.yml", RunTimes(started_at=T0, finished_at=T0))
    index.sync()
    assert index.page().runs[0].finished_at == T0


def test_a_finished_run_with_incomplete_records_is_read_again(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = store.add(1)
    (path / "times.yml").unlink()
    index = open_index(store)
    index.sync()
    assert index.page().runs[0].started_at is None
    write_record(path / "times.yml", RunTimes(started_at=T0, finished_at=T0))
    monkeypatch.setattr(index_module, "RECHECK_S", -1.0)
    index.sync()
    assert index.page().runs[0].started_at == T0


def test_a_removed_repository_leaves_the_index(store: Store) -> None:
    store.add(1, repo="gone")
    store.add(2, repo="kept")
    index = open_index(store)
    assert len(ids(index)) == 2
    shutil.rmtree(store.state / "runs" / "gone")
    assert ids(index) == [run_id(2)]


def test_the_index_is_a_file_beside_the_records_that_survives_restarts(store: Store) -> None:
    store.add(1)
    complete = store.state / "runs" / "proj" / "complete"
    age(complete)
    first = open_index(store)
    first.sync()
    first.close()
    assert default_index_path(store.state).is_file()
    (complete / run_id(1) / "meta.yml").write_text("garbage: [")  # not read again...
    second = open_index(store)
    assert ids(second)[0] == run_id(1)
    assert second.page().runs[0].problem is None  # ...because the cache was trusted


def test_rebuild_reads_every_run_again(store: Store) -> None:
    store.add(1)
    age(store.state / "runs" / "proj" / "complete")
    index = open_index(store)
    index.sync()
    meta = store.state / "runs" / "proj" / "complete" / run_id(1) / "meta.yml"
    meta.write_text("garbage: [")
    index.sync()
    assert index.page().runs[0].problem is None
    index.rebuild()
    index.sync()
    assert index.page().runs[0].problem is not None


def test_an_index_of_another_schema_is_rebuilt(store: Store) -> None:
    store.add(1)
    path = default_index_path(store.state)
    open_index(store).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = 'old' WHERE key = 'schema'")
        db.execute("INSERT INTO runs VALUES ('proj', 'x', 'complete', 1, 0, '{bad json')")
    db.close()
    assert ids(open_index(store)) == [run_id(1)]


def test_an_unwritable_index_location_falls_back_to_memory(store: Store) -> None:
    store.add(1)
    blocker = store.state / "not-a-dir"
    blocker.write_text("")
    index = open_index(store, blocker / "index.sqlite3")
    assert ids(index) == [run_id(1)]


def _modes(path: Path) -> dict[str, int]:
    names = (path.name, f"{path.name}-wal", f"{path.name}-shm")
    return {name: path.with_name(name).stat().st_mode & 0o777 for name in names}


def test_the_index_and_its_wal_and_shm_are_readable_by_their_owner_only(store: Store) -> None:
    store.add(1)
    old = os.umask(0o022)  # the usual umask, which leaves what SQLite creates 0644
    index = open_index(store)
    try:
        assert ids(index) == [run_id(1)]  # a write: the -wal and -shm exist now
        assert _modes(default_index_path(store.state)) == dict.fromkeys(
            ("index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm"), 0o600
        )
    finally:
        index.close()
        os.umask(old)


def test_an_index_made_readable_by_others_is_made_private_again(store: Store) -> None:
    store.add(1)
    path = default_index_path(store.state)
    open_index(store).close()
    # Another connection keeps the -wal and -shm in place while the index opens.
    other = sqlite3.connect(path)
    try:
        other.execute("SELECT COUNT(*) FROM runs").fetchone()
        for name in _modes(path):
            path.with_name(name).chmod(0o644)
        index = open_index(store)
        assert _modes(path) == dict.fromkeys(_modes(path), 0o600)
        assert ids(index) == [run_id(1)]
        index.close()
    finally:
        other.close()
