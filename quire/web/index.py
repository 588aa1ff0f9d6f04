"""The runs index: one SQLite row per run, so a page of the runs list is one query.

    $QUIRE_STATE_DIR/web/index.sqlite3    (WAL mode; -wal and -shm beside it)

It is a cache of the records, never a record itself: delete the file (or
start `quire ci serve --rebuild-index`) and it is rebuilt from the run
directories. Each row holds a run's `IndexedRun` (a pydantic model: the
`quire ci runs --json` summary plus its repository) as JSON. A row whose
JSON no longer fits the model, or an index written by another version of
the schema, is rebuilt rather than trusted.

Keeping it current costs a few `stat`s per request, not a scan of every
run: a finished run's directory only changes state by a rename, which
changes the mtime of the state directories it leaves and enters. So a
sync lists a state directory only when its mtime differs from the one it
saw last, and re-reads the records of active runs (few, and changing) on
every sync. A directory changed in the last two seconds is listed again
next time, because two renames within the file system's timestamp
granularity leave the same mtime.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from quire.ci.store.runs import FINISHED, RunDir, RunState
from quire.ci.store.views import RunSummary, summarize
from quire.web.lookup import STATES, StoreView, valid_name

SCHEMA_VERSION = 1
# Seconds within which a directory's mtime cannot be trusted to change again.
RACY_S = 2.0
# How often a finished run whose records were incomplete is read again.
RECHECK_S = 2.0


class IndexedRun(RunSummary):
    """A run in the index: its `quire ci runs --json` summary and its repository."""

    repo: str


def _schema_key() -> str:
    fields = ",".join(sorted(IndexedRun.model_fields))
    return f"{SCHEMA_VERSION}:{hashlib.sha256(fields.encode()).hexdigest()[:16]}"


@dataclass
class RunPage:
    """One page of the runs list."""

    runs: list[IndexedRun]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


class RunIndex:
    """The SQLite index of every run under one `runs/` directory."""

    def __init__(self, view: StoreView, path: Path | None) -> None:
        self.view = view
        self.path = path
        self._lock = threading.Lock()
        self._db = self._open(path)
        self._prepare()

    @staticmethod
    def _open(path: Path | None) -> sqlite3.Connection:
        # One connection shared by the server's threads, serialized by _lock.
        if path is not None:
            try:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                _private(path)
                db = sqlite3.connect(path, check_same_thread=False, timeout=5)
                db.execute("PRAGMA journal_mode=WAL")
                return db
            except (OSError, sqlite3.Error):
                pass  # a read-only state dir: keep the index in memory
        return sqlite3.connect(":memory:", check_same_thread=False)

    def _prepare(self) -> None:
        with self._lock, self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None or row[0] != _schema_key():
                self._reset()

    def _reset(self) -> None:
        self._db.execute("DROP TABLE IF EXISTS runs")
        self._db.execute("DROP TABLE IF EXISTS dirs")
        self._db.execute(
            "CREATE TABLE runs (repo TEXT NOT NULL, run_id TEXT NOT NULL, state TEXT NOT NULL,"
            " settled INTEGER NOT NULL, checked REAL NOT NULL, summary TEXT NOT NULL,"
            " PRIMARY KEY (repo, run_id)) WITHOUT ROWID"
        )
        self._db.execute("CREATE INDEX runs_newest ON runs (run_id)")
        self._db.execute("CREATE INDEX runs_state ON runs (state, run_id)")
        self._db.execute("CREATE TABLE dirs (path TEXT PRIMARY KEY, mtime_ns INTEGER NOT NULL)")
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)", (_schema_key(),)
        )

    def rebuild(self) -> None:
        """Forget everything; the next sync reads every run again."""
        with self._lock, self._db:
            self._reset()

    def sync(self) -> None:
        """Bring the index up to date with the store (see the module docstring)."""
        with self._lock, self._db:
            now = time.time()
            repos = self.view.repos()
            for (gone,) in self._db.execute("SELECT DISTINCT repo FROM runs").fetchall():
                if gone not in repos:
                    self._db.execute("DELETE FROM runs WHERE repo = ?", (gone,))
            for repo in repos:
                for state in STATES:
                    self._sync_dir(repo, state, now)
            self._recheck(now)

    def _sync_dir(self, repo: str, state: RunState, now: float) -> None:
        directory = self.view.runs_root / repo / state.value
        key = f"{repo}/{state.value}"
        try:
            mtime_ns: int | None = directory.stat().st_mtime_ns
        except OSError:
            mtime_ns = None
        live = state == RunState.active
        seen = self._db.execute("SELECT mtime_ns FROM dirs WHERE path = ?", (key,)).fetchone()
        if not live and mtime_ns is not None and seen is not None and seen[0] == mtime_ns:
            return
        names = set(_run_names(directory))
        indexed = {
            run_id
            for (run_id,) in self._db.execute(
                "SELECT run_id FROM runs WHERE repo = ? AND state = ?", (repo, state.value)
            )
        }
        for run_id in indexed - names:
            self._db.execute(
                "DELETE FROM runs WHERE repo = ? AND run_id = ? AND state = ?",
                (repo, run_id, state.value),
            )
        store = self.view.store(repo) if names else None
        for run_id in names:
            if store is not None and (live or run_id not in indexed):
                self._put(RunDir(store, run_id, state), now)
        if mtime_ns is not None and now - mtime_ns / 1e9 > RACY_S:
            self._db.execute("INSERT OR REPLACE INTO dirs VALUES (?, ?)", (key, mtime_ns))
        else:
            self._db.execute("DELETE FROM dirs WHERE path = ?", (key,))

    def _put(self, run: RunDir, now: float) -> None:
        if not self.view.confined(run):  # its page is a 404: it is not listed either
            self._db.execute(
                "DELETE FROM runs WHERE repo = ? AND run_id = ?", (run.store.repo, run.run_id)
            )
            return
        summary = summarize(run)
        row = IndexedRun(**summary.model_dump(), repo=run.store.repo)
        finished = run.state in FINISHED
        settled = finished and summary.finished_at is not None and summary.problem is None
        self._db.execute(
            "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?)",
            (row.repo, row.id, run.state.value, int(settled), now, row.model_dump_json()),
        )

    def _recheck(self, now: float) -> None:
        """Read again finished runs whose records were incomplete when last read."""
        stale = self._db.execute(
            "SELECT repo, run_id, state FROM runs WHERE settled = 0 AND state != ? AND checked < ?",
            (RunState.active.value, now - RECHECK_S),
        ).fetchall()
        for repo, run_id, state in stale:
            store = self.view.store(repo)
            run = RunDir(store, run_id, RunState(state))
            if run.path.is_dir():
                self._put(run, now)

    def page(
        self,
        *,
        repo: str | None = None,
        state: RunState | None = None,
        page: int = 1,
        per_page: int = 50,
    ) -> RunPage:
        """Runs newest first, filtered by repository and state; `page` counts from 1."""
        where, args = [], []
        if repo is not None:
            where.append("repo = ?")
            args.append(repo)
        if state is not None:
            where.append("state = ?")
            args.append(state.value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM runs{clause}", args).fetchone()[0]
            rows = self._db.execute(
                f"SELECT summary FROM runs{clause} ORDER BY run_id DESC, repo LIMIT ? OFFSET ?",
                [*args, per_page, (page - 1) * per_page],
            ).fetchall()
        runs = []
        for (text,) in rows:
            try:
                runs.append(IndexedRun.model_validate_json(text))
            except ValidationError:
                continue  # written by another version; the next rebuild replaces it
        return RunPage(runs=runs, total=total, page=page, per_page=per_page)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _private(path: Path) -> None:
    """Create the index file readable by its owner only, and take that mode back from an
    index (and its -wal and -shm) made before: it holds every run's summary.

    SQLite gives the -wal and -shm files it creates the mode of the database
    file, so creating that one 0600 is enough for all three.
    """
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        try:
            fd = os.open(path.with_name(name), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            continue
        try:
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)


def _run_names(directory: Path) -> list[str]:
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    return [e.name for e in entries if valid_name(e.name) and e.is_dir()]


def default_index_path(state: Path) -> Path:
    """Where the index of the store under `state` lives."""
    return state / "web" / "index.sqlite3"
