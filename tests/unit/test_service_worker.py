"""The worker's pieces that need no worker: its child's argv, outcomes without a record,
which running rows count as a dead worker's, the per-repository executor, and children
that die with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quire.ci.store.liveness import process_start_ticks
from quire.config import load_config
from quire.service.outcome import Outcome, last_words, without_record
from quire.service.queue import Entry, Owner
from quire.service.recovery import orphaned
from quire.service.worker import child_argv
from quire.tools import process
from tests.helpers import make_repo

ME = Owner(pid=os.getpid(), start=process_start_ticks(os.getpid()), host="here")


def entry(**fields: object) -> Entry:
    base: dict[str, object] = {
        "seq": 1,
        "run_id": "20261124-100000-000000-abcdef",
        "git_dir": "/srv/p.git",
        "ref": "refs/heads/main",
        "sha": "a" * 40,
        "pushed_at": "2026-11-24T10:00:00.000000Z",
        "state": "running",
        "attempt": 1,
        "retry_of": None,
        "executor": "host",
        "worker_pid": None,
        "worker_start": None,
        "worker_host": "here",
        "child_pid": None,
        "child_start": None,
        "claimed_at": None,
        "finished_at": None,
        "cancel": False,
        "outcome": None,
        "reason": None,
        "message": None,
    }
    base.update(fields)
    return Entry(base)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_queued_push_runs_as_quire_ci_run_with_its_ref_time_and_id() -> None:
    assert child_argv(entry(), "docker") == [
        sys.executable,
        "-m",
        "quire",
        "ci",
        "run",
        "--rev",
        "a" * 40,
        "--repo",
        "/srv/p.git",
        "--executor",
        "docker",
        "--ref",
        "refs/heads/main",
        "--pushed-at",
        "2026-11-24T10:00:00.000000Z",
        "--run-id",
        "20261124-100000-000000-abcdef",
        "--url",
        "file:///srv/p.git",
        "--quiet",
    ]


def test_a_queued_push_with_a_url_is_fetched_from_it() -> None:
    argv = child_argv(entry(url="ssh://git@githost/p.git"), "host")
    assert argv[argv.index("--url") + 1] == "ssh://git@githost/p.git"
    assert argv[argv.index("--repo") + 1] == "/srv/p.git"  # it still names the run store
    assert entry(url="ssh://h/p.git").as_json()["url"] == "ssh://h/p.git"  # queue --json


def test_an_invalid_pipeline_fails_the_run_with_its_message(tmp_path: Path) -> None:
    sha = make_repo(tmp_path / "p", {"a": "1"})
    output = "error: invalid pipeline, 2 problems:\n  .quire/ci.py:3: x\n  .quire/ci.py:9: y\n"
    result = without_record(
        entry(git_dir=str(tmp_path / "p" / ".git"), sha=sha),
        2,
        output,
        cancelled=False,
        duration_s=0.4,
    )
    assert (result.outcome, result.reason, result.commit) == ("failed", "error", sha)
    assert (
        result.message == "invalid pipeline, 2 problems:\n  .quire/ci.py:3: x\n  .quire/ci.py:9: y"
    )


def test_a_commit_without_a_pipeline_fails_as_no_pipeline() -> None:
    output = "no .quire/ci.py at abc (abc123): nothing to run\n"
    result = without_record(entry(sha="not-a-commit"), 0, output, cancelled=False, duration_s=0.1)
    assert (result.outcome, result.reason, result.commit) == ("failed", "no-pipeline", None)
    assert result.message == "no .quire/ci.py at abc (abc123): nothing to run"


def test_a_cancelled_child_is_cancelled_whatever_its_exit() -> None:
    result = without_record(entry(), 130, "", cancelled=True, duration_s=None)
    assert (result.outcome, result.reason) == ("cancelled", "cancelled")


def test_last_words_keep_the_tail_when_there_is_no_error_line() -> None:
    assert last_words("\n".join(f"line {i}" for i in range(10))) == "\n".join(
        f"line {i}" for i in range(5, 10)
    )
    assert last_words("") is None


def test_describe_names_failed_jobs_and_time() -> None:
    result = Outcome("failed", "jobs-failed", "failed: lint", failed_jobs=["lint"], duration_s=2)
    assert result.describe() == "failed (jobs-failed): lint in 2.0s"


def test_only_a_dead_workers_rows_whose_child_is_dead_are_orphaned() -> None:
    gone = dead_pid()
    assert orphaned(entry(worker_pid=gone), ME)
    assert orphaned(entry(worker_pid=gone, child_pid=dead_pid()), ME)
    assert not orphaned(entry(worker_pid=gone, child_pid=ME.pid), ME)  # child still tearing down
    assert not orphaned(entry(worker_pid=ME.pid, worker_start=ME.start), ME)  # mine
    assert not orphaned(entry(worker_pid=os.getppid()), ME)  # a live worker
    assert not orphaned(entry(worker_pid=gone, worker_host="elsewhere"), ME)


def test_the_config_file_chooses_a_repositorys_executor(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[repositories.proj]\nexecutor = "docker"\n\n[repositories.other]\n')
    config = load_config(path)
    assert config.executor_for("proj") == "docker"
    assert config.executor_for("other") is None
    assert config.executor_for("unknown") is None


def test_an_unknown_executor_in_the_config_file_is_a_config_error(tmp_path: Path) -> None:
    from quire.errors import ConfigError

    path = tmp_path / "config.toml"
    path.write_text('[repositories.proj]\nexecutor = "podman"\n')
    with pytest.raises(ConfigError, match=r"repositories\.proj\.executor"):
        load_config(path)


PARENT = """
import sys, time
from quire.tools import process
child = process.start(["sleep", "60"], output=sys.argv[1])
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_started_child_gets_sigterm_when_its_parent_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "out.log")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert process_start_ticks(child_pid) is not None
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while process_start_ticks(child_pid) is not None and time.monotonic() < deadline:
            time.sleep(0.02)  # the orphan is reaped by init once the signal killed it
        assert process_start_ticks(child_pid) is None
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def test_start_appends_output_to_a_file_and_reports_the_exit(tmp_path: Path) -> None:
    out = tmp_path / "out.log"
    child = process.start(["sh", "-c", "echo out; echo err >&2; exit 4"], output=out)
    assert child.wait(timeout=10) == 4
    assert sorted(out.read_text().split()) == ["err", "out"]


def test_a_run_whose_source_no_job_takes_is_complete_with_nothing_run() -> None:
    output = "nothing to run for the source quire/push: no job of .quire/ci.py at a (a) takes it\n"
    result = without_record(entry(sha="not-a-commit"), 0, output, cancelled=False, duration_s=0.1)
    assert (result.outcome, result.reason) == ("complete", "no-jobs")
