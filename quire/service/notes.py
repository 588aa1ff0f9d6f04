"""CI status where the code lives: one JSON line per finished run in `refs/notes/quire`.

    git log --notes=quire          shows, under each commit, a line per run:
    {"v":1,"run_id":"2026...","state":"failed","reason":"jobs-failed","failed_jobs":["lint"],...}

A note is only ever appended to (several runs of one commit keep every
line; the newest line is the current status), and the notes ref moves by
compare-and-swap (`git update-ref refs/notes/quire NEW OLD`): when another
run moved it in between, the append is redone on top of the new value, so
concurrent runs never lose each other's lines.
"""

from __future__ import annotations

import random
import time
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from quire.errors import ToolFailed
from quire.tools import git

NOTES_REF = "refs/notes/quire"
ATTEMPTS = 20


class CiNote(BaseModel):
    """One line of a commit's quire note (format version `v`)."""

    model_config = ConfigDict(extra="ignore", defer_build=True)
    v: int = 1
    run_id: str
    state: str  # complete | failed | cancelled
    reason: str | None = None  # jobs-failed, error, interrupted, orphaned, no-pipeline, ...
    ref: str
    executor: str | None = None
    attempt: int = 1
    duration_s: float | None = None
    failed_jobs: list[str] = Field(default_factory=list)
    finished_at: datetime
    message: str | None = None
    cancelled_by: str | None = None  # state `cancelled`: who asked

    def line(self) -> bytes:
        """The note line: compact JSON and a newline."""
        return self.model_dump_json().encode() + b"\n"


def append_note(git_dir: Path, commit: str, note: CiNote, *, ref: str = NOTES_REF) -> None:
    """Append `note` to the note on `commit` under `ref`; raises `ToolFailed` when git
    fails or the ref keeps moving under us (ATTEMPTS tries)."""
    for attempt in range(ATTEMPTS):
        if _try_append(git_dir, commit, note.line(), ref):
            return
        # Lost the race to another run: back off a little, at random, and redo it.
        time.sleep(random.uniform(0, 0.01 * (attempt + 1)))
    raise ToolFailed(f"could not update {ref} in {git_dir}: it kept changing ({ATTEMPTS} tries)")


def _try_append(git_dir: Path, commit: str, line: bytes, ref: str) -> bool:
    old = git.ref_target(git_dir, ref)
    found = git.note_entry(git_dir, old, commit) if old else None
    path, existing = (found[0], git.read_blob(git_dir, found[1])) if found else (commit, b"")
    if existing and not existing.endswith(b"\n"):
        existing += b"\n"  # a note someone wrote by hand: keep it, on its own line
    blob = git.write_blob(git_dir, existing + line)
    tree = git.tree_with(git_dir, old, path, blob)
    new = git.commit_tree(git_dir, tree, old, f"quire: CI result for {commit[:12]}")
    return git.update_ref(git_dir, ref, new, old, f"quire: note on {commit[:12]}")


def read_notes(git_dir: Path, commit: str, *, ref: str = NOTES_REF) -> list[CiNote]:
    """Every quire line of `commit`'s note, oldest first (lines that are not ours skipped)."""
    head = git.ref_target(git_dir, ref)
    found = git.note_entry(git_dir, head, commit) if head else None
    if found is None:
        return []
    notes = []
    for text in git.read_blob(git_dir, found[1]).decode(errors="replace").splitlines():
        try:
            notes.append(CiNote.model_validate_json(text))
        except ValueError:
            continue
    return notes
