"""A reader's side of the run index: the mirror under its own state directory kept current.

    sync(url, mirror)       apply every change after the mirror's last one; returns how many
    Follower(url, mirror)   a thread that syncs at each NOTIFY (or every `POLL_S` without one)
    lease_alive(url, run)   whether a mirrored run's worker still holds its queue row's lease
    MirrorRuns              the runs a reader's commands see: the mirror, synced first

A sync reads the index rows and the file changes after the last applied
change in one REPEATABLE READ transaction (one snapshot: a run's changes
never arrive without its row), in pages of at most `PAGE` changes and `PAGE_BYTES` of
their data (one change more if that one alone is larger): a large log is never
held in memory whole, whatever was shipped while the reader was away.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from quire.ci.store.mirror import Mirror
from quire.ci.store.runs import FINISHED, RunDir, RunStore
from quire.ci.store.shipping import FileChange, FileKind, RunRow
from quire.errors import RunNotFound
from quire.service.errors import QueueUnavailable
from quire.service.pgindex.writer import CHANNEL
from quire.service.pgschema import connect, schema_version, too_old, unavailable

if TYPE_CHECKING:
    from quire.service.pgschema import Connection

log = logging.getLogger("quire.mirror")

PAGE = 2000
PAGE_BYTES = 16 * 1024 * 1024
POLL_S = 2.0


def sync(url: str, mirror: Mirror, db: Connection | None = None) -> int:
    """Bring `mirror` up to the index at `url`; returns how many changes it applied.
    Raises `QueueUnavailable`."""
    own = db is None
    try:
        conn = db or connect(url, autocommit=True)
        try:
            with mirror.lock():
                try:
                    return _sync(conn, mirror)
                except psycopg.errors.UndefinedTable:
                    # Found only now, not checked first: a sync runs at every notification.
                    raise too_old(url, schema_version(conn)) from None
        finally:
            if own:
                conn.close()
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise QueueUnavailable(unavailable(url, "read the run index of", exc)) from exc


def _sync(db: Connection, mirror: Mirror) -> int:
    applied = 0
    while True:
        since = mirror.seq()
        db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            # The sizes first, so the data fetched is a page's, not every change's.
            sizes = db.execute(
                "SELECT seq, length(data) AS size FROM run_file WHERE seq > %s ORDER BY seq"
                " LIMIT %s",
                (since, PAGE),
            ).fetchall()
            take = _page([int(found["size"]) for found in sizes])
            full = take < len(sizes) or len(sizes) == PAGE
            files = (
                db.execute(
                    "SELECT seq, run_id, path, kind, at, data, digest FROM run_file"
                    " WHERE seq > %s AND seq <= %s ORDER BY seq",
                    (since, sizes[take - 1]["seq"]),
                ).fetchall()
                if take
                else []
            )
            upto_row = db.execute("SELECT max(seq) AS s FROM run_index").fetchone()
            newest = int(upto_row["s"] or 0) if upto_row else 0
            # A full page may stop inside the changes: only rows up to its end come now.
            upto = int(files[-1]["seq"]) if full else newest
            # Rows changed within the page, and the rows of runs whose files it holds (on
            # a full page, a run's row may have changed again after it).
            rows = db.execute(
                "SELECT run_id, repo, git_dir, worker, state_dir, state, seq FROM run_index"
                " WHERE (seq > %s AND seq <= %s) OR run_id = ANY(%s) ORDER BY seq",
                (since, upto, list({f["run_id"] for f in files})),
            ).fetchall()
        finally:
            db.execute("COMMIT")
        if not files and not rows:
            return applied
        mirror.apply([_row(r) for r in rows], [_change(f) for f in files], max(upto, since))
        applied += len(files) + len(rows)
        if not full:
            return applied


def _page(sizes: list[int]) -> int:
    """How many of the next changes (of these data sizes) make one page: up to `PAGE_BYTES`,
    and at least one."""
    total = 0
    for count, size in enumerate(sizes):
        total += size
        if total > PAGE_BYTES and count > 0:
            return count
    return len(sizes)


def _row(found: dict[str, Any]) -> RunRow:
    return RunRow.model_validate(found)


def _change(found: dict[str, Any]) -> FileChange:
    return FileChange(
        seq=found["seq"],
        run_id=found["run_id"],
        path=found["path"],
        kind=FileKind(found["kind"]),
        at=found["at"],
        data=bytes(found["data"]),
        digest=found["digest"],
    )


def lease_alive(url: str, run_id: str) -> bool:
    """Whether run `run_id` still runs on a worker that holds its lease (by the database's
    clock). False when its row is done, queued again under another id, or its lease ran out.
    Raises `QueueUnavailable`."""
    try:
        with connect(url) as db:
            row = db.execute(
                "SELECT state = 'running' AND lease_until > now() AS held FROM queue"
                " WHERE run_id = %s",
                (run_id,),
            ).fetchone()
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise QueueUnavailable(unavailable(url, "read the queue of", exc)) from exc
    return bool(row and row["held"])


class Follower:
    """Keeps a mirror current in a thread: LISTEN on the index's channel, sync at each
    notification, and every `poll_s` without one (a lost connection is opened again)."""

    def __init__(self, url: str, mirror: Mirror, *, poll_s: float = POLL_S) -> None:
        self.url = url
        self.mirror = mirror
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Follower:
        self._thread = threading.Thread(target=self._loop, name="quire-mirror", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        listen: Connection | None = None
        while not self._stop.is_set():
            try:
                if listen is None or listen.broken or listen.closed:
                    listen = connect(self.url, autocommit=True)
                    listen.execute(f"LISTEN {CHANNEL}")
                sync(self.url, self.mirror)
                # Woken by a notification, or after poll_s; a stop wakes it within a tick.
                for _ in listen.notifies(timeout=self.poll_s, stop_after=1):
                    pass
            except (QueueUnavailable, psycopg.Error) as exc:
                log.error("cannot follow the run index: %s", exc)
                if listen is not None:
                    listen.close()
                    listen = None
                self._stop.wait(self.poll_s)
            except Exception:  # a bug must not end the server: log and go on
                log.exception("the run index follower failed; going on")
                self._stop.wait(self.poll_s)
        if listen is not None:
            listen.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_s + 1)
            self._thread = None

    def __enter__(self) -> Follower:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class MirrorRuns:
    """The runs of every worker, as a reader's commands see them: `mirror`, synced from `url`
    first. A run id is found in any repository."""

    def __init__(self, url: str, state: Path) -> None:
        self.url = url
        self.mirror = Mirror(state / "mirror")
        sync(url, self.mirror)

    def store(self, repo: str) -> RunStore:
        return self.mirror.store(repo)

    def stores(self) -> list[RunStore]:
        return self.mirror.stores()

    def find(self, ref: str) -> tuple[RunStore, RunDir]:
        """The run `ref` names (a run id or a unique prefix), in whichever repository;
        raises `RunNotFound`."""
        found: list[tuple[RunStore, RunDir]] = []
        for store in self.stores():
            found += [(store, run) for run in store.runs() if run.run_id.startswith(ref)]
        exact = [pair for pair in found if pair[1].run_id == ref]
        if exact or len(found) == 1:
            return (exact or found)[0]
        if not found:
            raise RunNotFound(f"no run {ref!r} in the run index ({self.mirror.root})")
        ids = ", ".join(run.run_id for _, run in found[:5])
        raise RunNotFound(f"run prefix {ref!r} is ambiguous: {ids}")

    def alive(self, run: RunDir) -> bool:
        """Whether a mirrored run still has its worker: synced first (a run that just ended
        is seen ended), then its queue row's lease. Never a pid: it runs elsewhere."""
        sync(self.url, self.mirror)
        if not run.path.is_dir() or run.state in FINISHED:
            return True  # it moved: the follower finds it where it went
        return lease_alive(self.url, run.run_id)

    def follower(self) -> Follower:
        return Follower(self.url, self.mirror, poll_s=0.5)
