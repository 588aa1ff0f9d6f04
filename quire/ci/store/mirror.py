"""A mirror of the runs published to the run index, laid out exactly like a state directory,
so that every reader of the run store (`runs`, `show`, `logs`, the web pages) reads it
unchanged.

    $QUIRE_STATE_DIR/mirror/
      runs/<repo>/<state>/<run-id>/...   as a run store (quire.ci.store.runs), plus
                                         worker.yml (WorkerInfo) from the index row
      runs/<repo>/.incoming/<run-id>/    a run whose files are still arriving
      sync.yml                           SyncMark: the last change applied
      .lock                              one syncing process at a time

`apply(rows, changes)` takes a batch of index rows and file changes (in the
order of the database's one sequence) and writes them: the files first, then
each run moved to its state directory (one rename, as a run's own directory
moves), so a reader that sees a run finished sees its logs whole (a row
newer than the batch's last change waits for the batch that reaches it). A row
whose state is `pruned` removes its run. Appends are idempotent: a chunk
already there (a sync that was cut off and done again) is not written twice.

The mirror lives apart from the machine's own `runs/`: `quire ci reconcile`
and `prune` never see it, and nothing judges a mirrored run's runner by
its pid (it runs on another machine; its lease says whether it lives).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from quire.ci.store.records import (
    Record,
    RecordUnreadable,
    WorkerInfo,
    read_record,
    write_record,
)
from quire.ci.store.runs import RunDir, RunState, RunStore, private_dir
from quire.ci.store.shipping import (
    PRUNED,
    STATES,
    WORKER_FILE,
    FileChange,
    FileKind,
    RunRow,
    shipped_path,
)

log = logging.getLogger("quire.mirror")

INCOMING = ".incoming"
# What a repository or run name in the index must look like to become a directory here.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\Z")


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name)) and ".." not in name


class SyncMark(Record):
    """sync.yml: the last change of the run index applied to this mirror."""

    seq: int = 0


class Mirror:
    """The mirror under `root` (`$QUIRE_STATE_DIR/mirror`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs_root = root / "runs"

    def seq(self) -> int:
        """The last change applied (0: none yet)."""
        try:
            return read_record(self.root / "sync.yml", SyncMark).seq
        except RecordUnreadable:
            return 0

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held while syncing: `quire ci serve` and a `quire ci logs` on one machine share
        the mirror."""
        private_dir(self.root)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def store(self, repo: str) -> RunStore:
        return RunStore(repo, root=self.runs_root / repo, cache=self.root / "workspaces" / repo)

    def stores(self) -> list[RunStore]:
        """Every repository's store in the mirror, by name."""
        try:
            names = sorted(p.name for p in self.runs_root.iterdir() if p.is_dir())
        except OSError:
            return []
        return [self.store(name) for name in names if not name.startswith(".")]

    def locate(self, repo: str, run_id: str) -> Path | None:
        """Where the run is now: in a state directory, or still incoming; None if absent."""
        root = self.runs_root / repo
        for place in (*STATES, INCOMING):
            path = root / place / run_id
            if path.is_dir():
                return path
        return None

    def apply(self, rows: list[RunRow], changes: list[FileChange], seq: int) -> None:
        """Apply a batch: every change of a run named in `rows` or already here, then each
        row's state; `seq` is the last change the batch covers (kept in sync.yml)."""
        private_dir(self.root)
        refused = [row for row in rows if not (valid_name(row.repo) and valid_name(row.run_id))]
        for row in refused:
            log.warning("refused a run index row naming %r of %r", row.run_id, row.repo)
        rows = [row for row in rows if row not in refused]
        repos = {row.run_id: row.repo for row in rows}
        for row in rows:
            if row.state != PRUNED and self.locate(row.repo, row.run_id) is None:
                self._arrive(row)
        for change in sorted(changes, key=lambda c: c.seq):
            if not valid_name(change.run_id):  # it would lead outside, like such a row
                log.warning("refused a run index change naming run %r", change.run_id)
                continue
            repo = repos.get(change.run_id) or self._repo_of(change.run_id)
            where = None if repo is None else self.locate(repo, change.run_id)
            if where is None:
                log.warning("run %s: a change of %s for a run not here", change.run_id, change.path)
                continue
            self._write(where, change)
        for row in sorted(rows, key=lambda r: r.seq):
            # A row newer than the batch came with it for its run's files (a sync's page
            # ended inside them): placed once the changes before it are here too.
            if row.seq <= seq:
                self._place(row)
        write_record(self.root / "sync.yml", SyncMark(seq=seq), durable=False)

    def _repo_of(self, run_id: str) -> str | None:
        for store in self.stores():
            if self.locate(store.repo, run_id) is not None:
                return store.repo
        return None

    def _arrive(self, row: RunRow) -> None:
        path = self.runs_root / row.repo / INCOMING / row.run_id
        private_dir(path / "jobs")
        write_record(path / WORKER_FILE, WorkerInfo(name=row.worker, state_dir=row.state_dir))

    def _place(self, row: RunRow) -> None:
        where = self.locate(row.repo, row.run_id)
        if where is None:
            return
        if row.state == PRUNED:
            shutil.rmtree(where, ignore_errors=True)
            return
        if row.state not in STATES:
            log.warning("run %s: unknown state %r in the run index", row.run_id, row.state)
            return
        current = where.parent.name
        if current != INCOMING:
            try:
                worker = read_record(where / WORKER_FILE, WorkerInfo)
            except RecordUnreadable:
                worker = None
            if worker is None or worker.name != row.worker:
                write_record(
                    where / WORKER_FILE, WorkerInfo(name=row.worker, state_dir=row.state_dir)
                )
        if current == row.state:
            return
        store = self.store(row.repo)
        target = store.root / row.state / row.run_id
        private_dir(target.parent)
        os.rename(where, target)
        store.update_latest(RunDir(store, row.run_id, RunState(row.state)))

    def _write(self, run_path: Path, change: FileChange) -> None:
        if not shipped_path(change.path):
            log.warning("run %s: refused a change of %r", change.run_id, change.path)
            return
        path = run_path / change.path
        if change.kind == FileKind.delete:
            _remove(path)
            return
        _make_room(run_path, path)
        private_dir(path.parent)
        if change.kind == FileKind.whole:
            _replace(path, change.data)
            return
        _append(path, change)


def _remove(path: Path) -> None:
    """`path` is gone, whatever it was (a file, or a directory a file of the run became)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
        return
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        path.unlink()


def _make_room(run_path: Path, path: Path) -> None:
    """Nothing stands in the way of the file `path`: a file where one of its directories
    goes, or a directory where it goes (on the worker, a file became a directory or back;
    the deletion may come after), is removed. Else the mirror would fail on it at every
    sync, for good."""
    here = run_path
    for part in path.relative_to(run_path).parts[:-1]:
        here = here / part
        if here.is_symlink() or (here.exists() and not here.is_dir()):
            here.unlink()
            break  # nothing is below a file
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)


def _replace(path: Path, data: bytes) -> None:
    """`path` is `data` now; readers see the old file or the new one, whole."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _append(path: Path, change: FileChange) -> None:
    """Write `change.data` at `change.at`, in place (a reader holding the file open sees it
    grow); the part already there is skipped."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "ab", buffering=0) as handle:
        size = os.fstat(fd).st_size
        if change.at > size:
            log.warning(
                "run %s: %s is %d bytes, a chunk starts at %d: not written",
                change.run_id,
                change.path,
                size,
                change.at,
            )
            return
        rest = change.data[size - change.at :]
        if rest:
            handle.write(rest)
