"""How a run was started (records.Trigger): carried by the queue row, passed by the worker
to its child `quire ci run`, kept in meta.yml, shown by `runs` and `show`."""

from __future__ import annotations

import re
import sqlite3
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from quire.ci.store.records import RunMeta, Trigger, read_record
from quire.ci.store.runs import store_for
from quire.cli.app import app
from quire.service.queue import SCHEMA_VERSION, Owner, Push, Queue, queue_path
from quire.service.worker import child_argv
from tests.helpers import make_repo

ME = Owner(pid=100, start=1, host="here")
RERUN = Trigger(kind="rerun", by="alice", rerun_of="20261124-100000-000000-abcdef")
runner = CliRunner()


def push(ref: str = "refs/heads/main") -> Push:
    return Push("/srv/p.git", ref, "a" * 40, "2026-11-24T10:00:00.000000Z")


def test_a_pushs_row_has_no_trigger_and_a_reruns_row_keeps_its_trigger(tmp_path: Path) -> None:
    with Queue(queue_path(tmp_path)) as queue:
        (pushed,) = queue.enqueue([push()])
        (rerun,) = queue.enqueue([push("refs/heads/x")], RERUN, "docker")
    assert pushed.trigger_json is None and pushed.executor is None
    assert rerun.trigger_json is not None
    assert Trigger.model_validate_json(rerun.trigger_json) == RERUN
    assert rerun.executor == "docker"


def test_a_reruns_executor_survives_release_and_requeue_a_pushs_does_not(tmp_path: Path) -> None:
    with Queue(queue_path(tmp_path)) as queue:
        queue.enqueue([push("refs/heads/a")])
        queue.enqueue([push("refs/heads/b")], RERUN, "docker")
        for claimed in (queue.claim(ME), queue.claim(ME)):
            assert claimed is not None
            # As the worker does: a row's own executor first, else its choice.
            queue.started(claimed.run_id, claimed.executor or "host", 1, None)
        first, second = queue.running()
        queue.release(first.run_id)
        again = queue.requeue(second.run_id)
        assert again is not None and again.executor == "docker"
        assert again.trigger_json == second.trigger_json
        assert queue.get(first.run_id).executor is None


def test_a_version_1_queue_gains_the_trigger_column_and_keeps_its_rows(tmp_path: Path) -> None:
    path = queue_path(tmp_path)
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE queue (seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL UNIQUE,"
        " git_dir TEXT NOT NULL, ref TEXT NOT NULL, sha TEXT NOT NULL, pushed_at TEXT NOT NULL,"
        " state TEXT NOT NULL DEFAULT 'queued', attempt INTEGER NOT NULL DEFAULT 1,"
        " retry_of TEXT, executor TEXT, worker_pid INTEGER, worker_start INTEGER,"
        " worker_host TEXT, child_pid INTEGER, child_start INTEGER, claimed_at TEXT,"
        " finished_at TEXT, cancel INTEGER NOT NULL DEFAULT 0, outcome TEXT, reason TEXT,"
        " message TEXT)"
    )
    old.execute(
        "INSERT INTO queue (run_id, git_dir, ref, sha, pushed_at) VALUES"
        " ('r1', '/srv/p.git', 'refs/heads/main', 'abc', '2026-11-24T10:00:00Z')"
    )
    old.execute("PRAGMA user_version = 1")
    old.commit()
    old.close()
    with Queue(path) as queue:
        assert queue.get("r1").trigger_json is None
        (new,) = queue.enqueue([push()], RERUN)
        assert new.trigger_json is not None
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3


def test_the_worker_passes_the_trigger_to_its_child(tmp_path: Path) -> None:
    with Queue(queue_path(tmp_path)) as queue:
        (pushed,) = queue.enqueue([push()])
        (rerun,) = queue.enqueue([push("refs/heads/x")], RERUN)
    assert "--trigger" not in child_argv(pushed, "host")
    argv = child_argv(rerun, "host")
    assert argv[argv.index("--trigger") + 1] == rerun.trigger_json
    assert argv[:3] == [sys.executable, "-m", "quire"]


def test_a_run_records_its_trigger_and_runs_and_show_say_who_asked(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    make_repo(
        repo,
        {
            ".quire/ci.py": "from quire.ci import job\n\n@job(inputs=['quire/push'])\n"
            "def ok(rt):\n    rt.sh('true')\n"
        },
    )
    ran = runner.invoke(
        app, ["ci", "run", "--quiet", "--repo", str(repo), "--trigger", RERUN.model_dump_json()]
    )
    assert ran.exit_code == 0, ran.output
    run = store_for(repo).find("latest")
    assert read_record(run.path / "meta.yml", RunMeta).trigger == RERUN
    shown = runner.invoke(app, ["ci", "show", "--repo", str(repo)]).stdout
    assert f"trigger   re-run of {RERUN.rerun_of} by alice at " in shown
    listed = runner.invoke(app, ["ci", "runs", "--repo", str(repo)]).stdout
    assert re.search(r"\bre-run\b", listed.splitlines()[1]), listed


def test_a_malformed_trigger_is_bad_input(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    make_repo(repo, {"a": "b"})
    ran = runner.invoke(app, ["ci", "run", "--repo", str(repo), "--trigger", '{"kind": "x"}'])
    assert ran.exit_code == 2
    assert "--trigger" in ran.output


def test_an_old_record_without_a_trigger_reads_as_a_push(tmp_path: Path) -> None:
    data = {
        "run_id": "r",
        "repo": "p",
        "git_dir": "/g",
        "revision": "HEAD",
        "sha": "a" * 40,
        "pushed_at": "2026-11-24T10:00:00Z",
        "executor": "host",
    }
    (tmp_path / "meta.yml").write_text(yaml.safe_dump(data))
    meta = read_record(tmp_path / "meta.yml", RunMeta)
    assert meta.trigger == Trigger(kind="push")
