"""What of a run's directory has changed since it was last shipped elsewhere (the run index
on PostgreSQL): the publisher's side of a mirror, as plain file changes.

    FileChange   one change of one file: `whole` (the file is now `data`, first chunk of
                 it), `append` (`data` goes at byte `at`), or `delete`
    Mark         what was shipped of a file: its size, and for a whole file its digest
    scan()       the changes of one run directory against its marks, and the new marks

Every file of a run's directory is shipped (records, logs, artifacts, delivery
records: whatever a run keeps there) except the dot-names (temporary files
of atomic writes), `runner.yml` and `processes.yml`, which name pids on
the worker's host and mean nothing elsewhere, and each job's `output.txt`,
the output its log.jsonl holds again (readers decode the log). JSON Lines logs only grow, so
only their new bytes go (`append` at the old size); a log that shrank (it
was replaced) goes whole again. Any other file goes whole when its content
changed (a digest, looked at only when its size, mtime or inode changed),
in chunks of `CHUNK_BYTES` (the first `whole`, the rest `append`).
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
    if parts[0] == "jobs" and parts[-1] == PLAIN_OUTPUT:
        return False  # the log's output again: readers decode the log instead
    return rel not in LOCAL_ONLY and rel != WORKER_FILE


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
    shipped (`marks` itself is left as it is: a batch that fails to ship is sent again)."""
    changes: list[FileChange] = []
    after: Marks = {}
    for rel, st in _files(root):
        old = marks.get(rel)
        path = root / rel
        if rel.endswith(APPENDED):
            if old is not None and old.digest is None and st.st_size == old.size:
                after[rel] = old
                continue
            if old is not None and old.digest is None and st.st_size > old.size:
                data = _read(path, old.size, st.st_size - old.size)
                if data is None:
                    after[rel] = old
                    continue
                changes += _chunks(run_id, rel, data, start=old.size, whole=False)
                after[rel] = Mark(old.size + len(data))
                continue
            data = _read(path, 0, st.st_size)  # new, or it shrank: whole again
            if data is None:
                continue
            changes += _chunks(run_id, rel, data, start=0, whole=True)
            after[rel] = Mark(len(data))
            continue
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if old is not None and old.stamp == stamp:
            after[rel] = old
            continue
        data = _read(path, 0, st.st_size + CHUNK_BYTES)
        if data is None:
            continue
        digest = hashlib.sha256(data).hexdigest()
        if old is not None and old.digest == digest:
            after[rel] = Mark(old.size, digest, stamp)
            continue
        changes += _chunks(run_id, rel, data, start=0, whole=True, digest=digest)
        after[rel] = Mark(len(data), digest, stamp)
    for rel in marks:
        if rel not in after:
            changes.append(FileChange(run_id=run_id, path=rel, kind=FileKind.delete))
    return changes, after


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
