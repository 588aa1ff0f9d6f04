"""CI notes: appended line by line, a hand-written note kept, concurrent writers lose nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from quire.service.notes import NOTES_REF, CiNote, append_note, read_notes
from quire.tools import git as git_tool
from tests.helpers import GIT_ENV, git, make_repo


def bare_repo(tmp_path: Path) -> tuple[Path, str]:
    sha = make_repo(tmp_path / "p", {"a": "1"}, bare_clone=True)
    return tmp_path / "p.git", sha


def note(run_id: str, state: str = "complete", **extra: object) -> CiNote:
    return CiNote(
        run_id=run_id,
        state=state,
        ref="refs/heads/main",
        finished_at=datetime(2026, 11, 24, tzinfo=UTC),
        **extra,  # type: ignore[arg-type]
    )


def test_each_run_appends_one_json_line(tmp_path: Path) -> None:
    bare, sha = bare_repo(tmp_path)
    append_note(bare, sha, note("r1", "failed", reason="jobs-failed", failed_jobs=["lint"]))
    append_note(bare, sha, note("r2"))
    assert [(n.run_id, n.state) for n in read_notes(bare, sha)] == [
        ("r1", "failed"),
        ("r2", "complete"),
    ]
    shown = git(bare, "log", "--notes=quire", "-1", "--format=%N", sha)
    assert shown.splitlines()[0].startswith('{"v":1,"run_id":"r1"')
    assert '"failed_jobs":["lint"]' in shown


def test_a_note_written_by_hand_is_kept(tmp_path: Path) -> None:
    bare, sha = bare_repo(tmp_path)
    git(bare, "notes", "--ref=quire", "add", "-m", "checked by hand", sha)
    append_note(bare, sha, note("r1"))
    text = git(bare, "notes", "--ref=quire", "show", sha)
    assert text.splitlines()[0] == "checked by hand"
    assert [n.run_id for n in read_notes(bare, sha)] == ["r1"]


def test_notes_of_other_commits_stay(tmp_path: Path) -> None:
    bare, first = bare_repo(tmp_path)
    work = tmp_path / "p"
    git(work, "commit", "-q", "--allow-empty", "-m", "second")
    git(work, "push", "-q", str(bare), "HEAD:main")
    second = git(work, "rev-parse", "HEAD")
    append_note(bare, first, note("r1"))
    append_note(bare, second, note("r2"))
    assert [n.run_id for n in read_notes(bare, first)] == ["r1"]
    assert [n.run_id for n in read_notes(bare, second)] == ["r2"]


def test_the_notes_ref_moves_only_from_the_value_it_was_read_at(tmp_path: Path) -> None:
    bare, sha = bare_repo(tmp_path)
    append_note(bare, sha, note("r1"))
    old = git_tool.ref_target(bare, NOTES_REF)
    assert old is not None
    tree = git_tool.tree_with(bare, old, sha, git_tool.write_blob(bare, b"x\n"))
    stale_parent = git_tool.commit_tree(bare, tree, old, "a racing writer")
    append_note(bare, sha, note("r2"))  # the ref moves on
    assert not git_tool.update_ref(bare, NOTES_REF, stale_parent, old, "stale")
    assert [n.run_id for n in read_notes(bare, sha)] == ["r1", "r2"]


WRITER = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from quire.service.notes import CiNote, append_note
bare, sha, who = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
for i in range(8):
    note = CiNote(run_id=f"{who}-{i}", state="complete", ref="refs/heads/main",
                  finished_at=datetime.now(UTC))
    append_note(bare, sha, note)
"""


def test_concurrent_writers_lose_no_line(tmp_path: Path) -> None:
    bare, sha = bare_repo(tmp_path)
    env = {**os.environ, **GIT_ENV}
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(bare), sha, who], env=env)
        for who in ("a", "b", "c")
    ]
    assert [w.wait(timeout=60) for w in writers] == [0, 0, 0]
    ids = sorted(n.run_id for n in read_notes(bare, sha))
    assert ids == sorted(f"{who}-{i}" for who in "abc" for i in range(8))
