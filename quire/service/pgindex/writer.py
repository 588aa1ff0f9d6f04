"""The run index's writes on PostgreSQL: ship a batch, what was shipped of a run (to resume),
a lost run marked failed, pruned runs removed.

One connection (autocommit, each write its own transaction). A server that
cannot be reached or a connection that broke is `QueueUnavailable` naming
the server; the next call connects again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psycopg
import yaml

from quire.ci.store.records import RecordUnreadable, RunTimes, dump_yaml
from quire.ci.store.shipping import (
    PRUNED,
    FileChange,
    FileKind,
    Marks,
    RunRow,
    Shipped,
    marks_of,
)
from quire.ci.vocabulary import EndReason, JobState, JobStatus, RunResult, RunState
from quire.service.errors import QueueUnavailable
from quire.service.pgschema import Reconnecting, unavailable

if TYPE_CHECKING:
    from quire.service.pgschema import Connection

CHANNEL = "quire_runs"
# Serializes publishing batches, so `run_change` numbers are committed in order.
PUBLISH_LOCK = 0x71756973
IN_FLIGHT = (RunState.pending.value, RunState.active.value)
LOST_JOB_ERROR = "orphaned: its worker was lost"


class IndexWriter:
    """Writes to the run index at `url` (the `IndexWrites` protocol of publisher.py)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection = Reconnecting(url)

    def close(self) -> None:
        self._connection.close()

    def _conn(self) -> Connection:
        return self._connection.get()

    @contextmanager
    def _write(self, doing: str) -> Iterator[Connection]:
        try:
            db = self._conn()
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (PUBLISH_LOCK,))
                yield db
                db.execute(f"NOTIFY {CHANNEL}")
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise QueueUnavailable(unavailable(self.url, doing, exc)) from exc

    def ship(self, rows: Sequence[RunRow], changes: Sequence[FileChange]) -> None:
        """Store `rows` (inserted or updated) and `changes`, in one transaction; each row's
        seq ends above its changes', so a reader applies a run's files before its state."""
        with self._write("publish runs to") as db:
            for row in rows:
                db.execute(
                    "INSERT INTO run_index (run_id, repo, git_dir, worker, state_dir, state, seq)"
                    " VALUES (%s, %s, %s, %s, %s, %s, nextval('run_change'))"
                    " ON CONFLICT (run_id) DO UPDATE SET state = EXCLUDED.state,"
                    " worker = EXCLUDED.worker, state_dir = EXCLUDED.state_dir,"
                    " seq = EXCLUDED.seq",
                    (row.run_id, row.repo, row.git_dir, row.worker, row.state_dir, row.state),
                )
            _insert(db, changes)
            _bump(db, [row.run_id for row in rows])

    def marks(self, run_id: str) -> Marks:
        """What the index holds of run `run_id`'s files (empty if it is not there)."""
        try:
            found = (
                self._conn()
                .execute(
                    "SELECT path, kind, at + length(data) AS upto, digest FROM run_file"
                    " WHERE run_id = %s ORDER BY seq",
                    (run_id,),
                )
                .fetchall()
            )
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise QueueUnavailable(unavailable(self.url, "read the run index of", exc)) from exc
        return marks_of(
            Shipped(r["path"], FileKind(r["kind"]), int(r["upto"]), r["digest"]) for r in found
        )

    def state(self, run_id: str) -> str | None:
        """The run's state in the index, None if it is not there."""
        try:
            row = (
                self._conn()
                .execute("SELECT state FROM run_index WHERE run_id = %s", (run_id,))
                .fetchone()
            )
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise QueueUnavailable(unavailable(self.url, "read the run index of", exc)) from exc
        return None if row is None else str(row["state"])

    def lost(self, run_id: str, message: str) -> bool:
        """Mark run `run_id` failed (`orphaned`, with `message`) if the index still has it
        pending or active: its worker was lost and will never finish it. Returns whether it
        did."""
        with self._write("mark a lost run in") as db:
            row = db.execute(
                "SELECT state FROM run_index WHERE run_id = %s FOR UPDATE", (run_id,)
            ).fetchone()
            if row is None or row["state"] not in IN_FLIGHT:
                return False
            result = RunResult(reason=EndReason.orphaned, error=message, exit_code=1)
            changes = [_whole(run_id, "result.yml", dump_yaml(result.model_dump(mode="json")))]
            times = _ended_times(db, run_id)
            if times is not None:
                changes.append(_whole(run_id, "times.yml", times))
            changes += _ended_jobs(db, run_id)
            _insert(db, changes)
            db.execute(
                "UPDATE run_index SET state = %s WHERE run_id = %s",
                (RunState.failed.value, run_id),
            )
            _bump(db, [run_id])
        return True

    def prune(self, run_ids: Sequence[str], state_dir: str) -> int:
        """Remove the files of runs pruned from `state_dir` and mark their rows pruned, so
        readers remove their copies; returns how many rows that was."""
        if not run_ids:
            return 0
        with self._write("prune the run index of") as db:
            gone = db.execute(
                "UPDATE run_index SET state = %s, seq = nextval('run_change')"
                " WHERE run_id = ANY(%s) AND state_dir = %s AND state != %s RETURNING run_id",
                (PRUNED, list(run_ids), state_dir, PRUNED),
            ).fetchall()
            db.execute(
                "DELETE FROM run_file WHERE run_id = ANY(%s)", ([r["run_id"] for r in gone],)
            )
        return len(gone)


def _insert(db: Connection, changes: Sequence[FileChange]) -> None:
    if not changes:
        return
    with db.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO run_file (seq, run_id, path, kind, at, data, digest)"
            " VALUES (nextval('run_change'), %s, %s, %s, %s, %s, %s)",
            [(c.run_id, c.path, c.kind.value, c.at, c.data, c.digest) for c in changes],
        )


def _bump(db: Connection, run_ids: Sequence[str]) -> None:
    if run_ids:
        db.execute(
            "UPDATE run_index SET seq = nextval('run_change') WHERE run_id = ANY(%s)",
            (list(run_ids),),
        )


def _whole(run_id: str, path: str, text: str) -> FileChange:
    return FileChange(run_id=run_id, path=path, kind=FileKind.whole, data=text.encode())


def _latest_records(db: Connection, run_id: str, pattern: str) -> list[tuple[str, bytes]]:
    """The newest whole copy of each of the run's files whose path is LIKE `pattern`."""
    rows = db.execute(
        "SELECT DISTINCT ON (path) path, data FROM run_file"
        " WHERE run_id = %s AND path LIKE %s AND kind = 'whole' ORDER BY path, seq DESC",
        (run_id, pattern),
    ).fetchall()
    return [(str(row["path"]), bytes(row["data"])) for row in rows]


def _ended_jobs(db: Connection, run_id: str) -> list[FileChange]:
    """The state.yml of each job the lost worker left running or pending, failed as
    reconcile fails an orphaned run's jobs."""
    changes = []
    for path, data in _latest_records(db, run_id, "jobs/%/state.yml"):
        try:
            job = JobState.model_validate(yaml.safe_load(data.decode()))
        except (ValueError, yaml.YAMLError):
            continue
        if job.status not in (JobStatus.running, JobStatus.pending):
            continue
        job.status, job.error = JobStatus.failed, LOST_JOB_ERROR
        job.finished_at = job.finished_at or datetime.now(UTC)
        changes.append(_whole(run_id, path, dump_yaml(job.model_dump(mode="json"))))
    return changes


def _ended_times(db: Connection, run_id: str) -> str | None:
    """The run's times.yml as the index has it, with `finished_at` now (None if it has none)."""
    found = _latest_records(db, run_id, "times.yml")
    if not found:
        return None
    try:
        times = RunTimes.model_validate(yaml.safe_load(found[0][1].decode()))
    except (ValueError, yaml.YAMLError, RecordUnreadable):
        return None
    if times.finished_at is None:
        times.finished_at = datetime.now(UTC)
    return dump_yaml(times.model_dump(mode="json"))
