"""What of a run's directory has changed since it was last shipped elsewhere (the run index
on PostgreSQL): the publisher's side of a mirror, as plain file changes.

    FileChange   one change of one file: `whole` (the file is now `data`, first chunk of
                 it), `append` (`data` goes at byte `at`), or `delete`
    Mark         what was shipped of a file: its size, and for a whole file its digest
    scan()       the changes of one run directory against its marks, and the new marks

Every file of a run's directory is shipped (records, logs, artifacts, delivery
records: whatever a run keeps there) except the dot-names (temporary files
of atomic writes), names that are not UTF-8 (the index keeps paths as text),
`runner.yml` and `processes.yml`, which name pids on the worker's host and
mean nothing elsewhere, and each job's `output.txt`, the output its
log.jsonl holds again (readers decode the log). JSON Lines logs only grow,
so only their new bytes go (`append` at the old size); a log that shrank
(it was replaced) goes whole again. Any other file goes whole when its
content changed (a digest, looked at only when its size, mtime or inode
changed), in chunks of `CHUNK_BYTES` (the first `whole`, the rest
`append`). One scan reads at most `SCAN_BYTES`; the rest goes in the next
ones.
Symbolic links are not followed: nothing outside the run's directory goes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel

from quire.ci.store.logs import PLAIN_OUTPUT
from quire.ci.vocabulary import RunState

CHUNK_BYTES = 1024 * 1024
# The most data one scan of one run reads and ships (see scan()).
SCAN_BYTES = 16 * CHUNK_BYTES
# Files of a run's directory that only mean something on the machine that ran it.
LOCAL_ONLY = frozenset({"runner.yml", "processes.yml"})
# Written into a mirrored run from its index row; never shipped from a run directory.
WORKER_FILE = "worker.yml"
APPENDED = ".jsonl"


class FileKind(StrEnum):
    whole = "whole"
    append = "append"
    delete = "delete"


class FileChange(BaseModel):
    """One change of one file of one run (a row of `run_file` on PostgreSQL)."""

    run_id: str
    path: str  # relative to the run's directory, with `/`
    kind: FileKind
    at: int = 0  # append: the byte offset `data` starts at
    data: bytes = b""
    digest: str | None = None  # whole, not a log: sha256 of the whole file (for resuming)
    seq: int = 0  # its place in the database's one sequence of changes (0: not shipped)

    @property
    def end(self) -> int:
        return self.at + len(self.data)


class RunRow(BaseModel):
    """A run in the index (a row of `run_index` on PostgreSQL)."""

    run_id: str
    repo: str  # the run store's name (quire.paths.repo_id) on the worker
    git_dir: str
    worker: str  # the worker's --name
    state_dir: str  # the worker's state directory, on its machine
    state: str  # a RunState value, or PRUNED
    seq: int = 0


PRUNED = "pruned"
STATES = frozenset(state.value for state in RunState)


@dataclass(frozen=True)
class Mark:
    """What was shipped of one file: `size` bytes; `digest` of a whole (non-log) file;
    `stamp` (mtime, size, inode) it had then, None when unknown (resumed from the database)."""

    size: int
    digest: str | None = None
    stamp: tuple[int, int, int] | None = None


Marks = dict[str, Mark]


def shipped_path(rel: str) -> bool:
    """Whether a file at `rel` (relative to a run's directory) is shipped at all."""
    parts = rel.split("/")
    if any(not part or part.startswith(".") or part == ".." for part in parts):
        return False
    if _undecodable(rel):
        return False  # the index keeps paths as text: such a name could never be stored
    if parts[0] == "jobs" and parts[-1] == PLAIN_OUTPUT:
        return False  # the log's output again: readers decode the log instead
    return rel not in LOCAL_ONLY and rel != WORKER_FILE


def _undecodable(rel: str) -> bool:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:  # a name of bytes that are not UTF-8 (surrogateescape)
        return True
    return False


def _files(root: Path) -> list[tuple[str, os.stat_result]]:
    found: list[tuple[str, os.stat_result]] = []
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue  # gone (the run moved) or unreadable: the next scan sees it
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                rel = Path(entry.path).relative_to(root).as_posix()
                if shipped_path(rel):
                    try:
                        found.append((rel, entry.stat(follow_symlinks=False)))
                    except OSError:
                        continue
    return sorted(found)


def _read(path: Path, start: int, size: int) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            handle.seek(start)
            return handle.read(size)
    except OSError:
        return None


def _chunks(
    run_id: str, rel: str, data: bytes, *, start: int, whole: bool, digest: str | None = None
) -> list[FileChange]:
    changes = []
    for offset in range(0, max(len(data), 1), CHUNK_BYTES):
        piece = data[offset : offset + CHUNK_BYTES]
        first = whole and offset == 0
        changes.append(
            FileChange(
                run_id=run_id,
                path=rel,
                kind=FileKind.whole if first else FileKind.append,
                at=start + offset,
                data=piece,
                digest=digest if first else None,
            )
        )
    return changes


def scan(run_id: str, root: Path, marks: Marks) -> tuple[list[FileChange], Marks]:
    """The changes of the run directory `root` since `marks`, and the marks once they are
    shipped (`marks` itself is left as it is: a batch that fails to ship is sent again).

    At most `SCAN_BYTES` of data: what is beyond (a log that grew by a gigabyte while
    the database was away, a large file) is left for the next scans, which go on from
    the marks. `more(changes)` says whether that may be the case."""
    changes: list[FileChange] = []
    after: Marks = {}
    budget = SCAN_BYTES
    for rel, st in _files(root):
        old = marks.get(rel)
        path = root / rel
        found = (_log if rel.endswith(APPENDED) else _file)(run_id, rel, path, st, old, budget)
        if found is None:  # unreadable, or no room left in this scan: as it was
            if old is not None:
                after[rel] = old
            continue
        mark, shipped = found
        after[rel] = mark
        changes += shipped
        budget -= sum(len(change.data) for change in shipped)
    # Deletions first: a file that became a directory (or back) is gone before its
    # successor is written in its place.
    deleted = [
        FileChange(run_id=run_id, path=rel, kind=FileKind.delete)
        for rel in marks
        if rel not in after
    ]
    return deleted + changes, after


def more(changes: list[FileChange]) -> bool:
    """Whether a scan that found `changes` may have left some for the next (it was full)."""
    return sum(len(change.data) for change in changes) >= SCAN_BYTES


def _log(
    run_id: str, rel: str, path: Path, st: os.stat_result, old: Mark | None, budget: int
) -> tuple[Mark, list[FileChange]] | None:
    """A JSON Lines log: its new bytes at the old size, or whole if new or it shrank."""
    if old is not None and old.digest is None and st.st_size == old.size:
        return old, []
    grown = old is not None and old.digest is None and st.st_size > old.size
    start = old.size if grown and old is not None else 0
    if budget <= 0 and st.st_size > start:
        return None
    data = _read(path, start, min(st.st_size - start, budget))
    if data is None:
        return None
    return Mark(start + len(data)), _chunks(run_id, rel, data, start=start, whole=not grown)


def _file(
    run_id: str, rel: str, path: Path, st: os.stat_result, old: Mark | None, budget: int
) -> tuple[Mark, list[FileChange]] | None:
    """Any other file: whole when its content changed; a file larger than the scan's room
    goes on at its shipped size in the next scans (its digest and stamp unchanged)."""
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    if old is not None and old.stamp == stamp and old.size >= st.st_size:
        return old, []
    if old is not None and old.stamp == stamp:
        digest, size = old.digest, st.st_size  # part shipped, unchanged since: go on
    else:
        hashed = _digest(path)
        if hashed is None:
            return None
        digest, size = hashed
    resume = old is not None and old.digest == digest
    start = old.size if resume and old is not None else 0
    if resume and start >= size:
        return Mark(start, digest, stamp), []
    if budget <= 0:
        return None
    data = _read(path, start, min(size - start, budget))
    if data is None:
        return None
    chunks = _chunks(run_id, rel, data, start=start, whole=not resume, digest=digest)
    return Mark(start + len(data), digest, stamp), chunks


def _digest(path: Path) -> tuple[str, int] | None:
    """The sha256 of the file at `path` and its size, read a chunk at a time."""
    digest, size = hashlib.sha256(), 0
    try:
        with open(path, "rb") as handle:
            while block := handle.read(CHUNK_BYTES):
                digest.update(block)
                size += len(block)
    except OSError:
        return None
    return digest.hexdigest(), size


class Shipped(NamedTuple):
    """What one shipped change left of a file (its data need not be fetched to resume)."""

    path: str
    kind: FileKind
    end: int  # at + the length of its data
    digest: str | None


def marks_of(shipped: Iterable[Shipped]) -> Marks:
    """The marks a run's shipped changes (in order) leave: how a publisher resumes from
    what the database holds after it lost its connection or started again."""
    marks: Marks = {}
    for change in shipped:
        if change.kind == FileKind.delete:
            marks.pop(change.path, None)
        elif change.kind == FileKind.whole:
            marks[change.path] = Mark(change.end, change.digest)
        else:
            old = marks.get(change.path)
            marks[change.path] = Mark(change.end, None if old is None else old.digest)
    return marks
