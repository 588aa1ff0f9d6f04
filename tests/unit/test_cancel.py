"""`quire ci cancel` of a queued run: recorded as cancelled (who, when) like any run, with
its note; real git, a real queue file, typer's CliRunner."""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from quire.ci.store.runs import RunState, store_for
from quire.cli.app import app
from quire.paths import state_dir
from quire.service.notes import read_notes
from quire.service.queue import Push, open_queue
from tests.helpers import make_repo

CI = 'from quire.ci import job\n\n@job(inputs=["quire/push"])\ndef a(rt):\n    pass\n'


def test_a_cancelled_queued_run_is_recorded_shown_and_noted_as_cancelled(tmp_path: Path) -> None:
    sha = make_repo(tmp_path / "proj", {".quire/ci.py": CI}, bare_clone=True)
    bare = tmp_path / "proj.git"
    pushed_at = datetime.now(UTC).isoformat()
    with open_queue(state_dir()) as queue:
        (entry,) = queue.enqueue([Push(str(bare), "refs/heads/main", sha, pushed_at)])

    done = CliRunner().invoke(app, ["ci", "cancel", entry.run_id[:-2]])
    assert done.exit_code == 0, done.output
    assert f"cancelled queued run {entry.run_id}" in done.stdout
    with open_queue(state_dir()) as queue:
        assert queue.get(entry.run_id).outcome == "cancelled"

    (run,) = store_for(bare).runs()
    assert (run.run_id, run.state) == (entry.run_id, RunState.cancelled)
    me = getpass.getuser()
    listed = CliRunner().invoke(app, ["ci", "runs", "--repo", str(bare)])
    assert f"cancelled by {me}" in listed.stdout
    shown = CliRunner().invoke(app, ["ci", "show", "--repo", str(bare)])
    assert f"state     cancelled by {me} at " in shown.stdout
    as_json = json.loads(
        CliRunner().invoke(app, ["ci", "show", "--json", "--repo", str(bare)]).stdout
    )
    assert (as_json["state"], as_json["cancelled_by"]) == ("cancelled", me)
    assert as_json["cancelled_at"] is not None and as_json["exit_code"] == 130

    (note,) = read_notes(bare, sha)
    assert (note.run_id, note.state, note.cancelled_by) == (entry.run_id, "cancelled", me)


def test_cancelling_a_run_no_longer_queued_changes_nothing(tmp_path: Path) -> None:
    sha = make_repo(tmp_path / "proj", {".quire/ci.py": CI}, bare_clone=True)
    bare = tmp_path / "proj.git"
    with open_queue(state_dir()) as queue:
        (entry,) = queue.enqueue([Push(str(bare), "refs/heads/main", sha, "2026-12-04T00:00:00Z")])
    assert CliRunner().invoke(app, ["ci", "cancel", entry.run_id]).exit_code == 0
    again = CliRunner().invoke(app, ["ci", "cancel", entry.run_id])
    assert again.exit_code == 2
    assert len(list(store_for(bare).runs())) == 1
    assert len(read_notes(bare, sha)) == 1


def test_a_run_cancelled_before_its_record_existed_gets_one_from_the_worker(
    tmp_path: Path,
) -> None:
    """The child was stopped while `quire ci run` was starting: the worker records it."""
    from quire.service import outcome as outcomes
    from quire.service.recovery import Records

    sha = make_repo(tmp_path / "proj", {".quire/ci.py": CI}, bare_clone=True)
    bare = tmp_path / "proj.git"
    with open_queue(state_dir()) as queue:
        (entry,) = queue.enqueue([Push(str(bare), "refs/heads/main", sha, "2026-12-04T00:00:00Z")])
    outcomes.store_of(entry).request_cancel(entry.run_id, "alice")
    ended = outcomes.without_record(entry, 130, "", cancelled=True, duration_s=0.2)

    result = Records().record_cancelled(entry, ended)

    assert (result.outcome, result.cancelled_by, result.recorded) == ("cancelled", "alice", True)
    (run,) = store_for(bare).runs()
    assert (run.run_id, run.state) == (entry.run_id, RunState.cancelled)
    recorded = run.result()
    assert recorded is not None and recorded.cancelled_by == "alice"
    # Nobody asked: nothing is made up.
    with open_queue(state_dir()) as queue:
        (other,) = queue.enqueue([Push(str(bare), "refs/heads/b", sha, "2026-12-04T00:00:00Z")])
    plain = outcomes.without_record(other, 130, "", cancelled=True, duration_s=0.1)
    assert Records().record_cancelled(other, plain) == plain
    assert len(list(store_for(bare).runs())) == 1
