"""The run index and the runs' logs on PostgreSQL (issue 21): workers in separate processes,
each with its own state and cache directories and name (standing for separate machines),
and a reader in a further state directory that never ran anything, sharing nothing with
them but the database: `quire ci runs --all`, `show`, `logs [--follow]` and `quire ci serve`
there see every run of every worker, with its worker's name, live.

The server and the workers are test_workers_postgres.py's; without PostgreSQL the tests are
skipped, unless QUIRE_REQUIRE_POSTGRES=1. Host executor only: no engine needed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from quire.ci.store.mirror import Mirror
from quire.service.pgindex import reader
from tests.helpers import GIT_ENV, terminate
from tests.integration import postgres
from tests.integration import test_workers_postgres as workers
from tests.integration.test_worker import push, pushable, wait_for
from tests.integration.test_workers_postgres import (
    QUICK,
    SLOW_ONCE,
    all_done,
    log_of,
    machine_worker,
    rows,
)

pytestmark = pytest.mark.integration

# That module's fixtures: its PostgreSQL server, a migrated database each, no engine check.
server = workers.server
database = workers.database
no_container_left_behind = workers.no_container_left_behind

QUIRE = [sys.executable, "-m", "quire"]
# `line one` comes at once; `line two` only once the test creates the gate.
GATED = """\
from quire.ci import job, Runtime


@job(inputs=["quire/push"])
def gated(rt: Runtime):
    # printf: the command as logged is not the line it prints.
    rt.sh("printf 'line %s\\n' one; while [ ! -e {gate} ]; do sleep 0.1; done; "
          "printf 'line %s\\n' two", check=True)
"""


def reader_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "reader"
    (home / "cwd").mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        **GIT_ENV,
        "QUIRE_STATE_DIR": str(home / "state"),
        "QUIRE_CACHE_DIR": str(home / "cache"),
    }


def read(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`quire ARGS` on the reading machine: its own state directory, outside any repository."""
    return subprocess.run(
        [*QUIRE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=reader_env(tmp_path),
        cwd=tmp_path / "reader" / "cwd",
    )


def listed(tmp_path: Path) -> list[dict[str, Any]]:
    done = read(tmp_path, "ci", "runs", "--all", "--json", "--limit", "100")
    assert done.returncode == 0, done.stderr
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found


def test_a_reader_that_ran_nothing_sees_every_run_of_every_worker(
    tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _first, first_work = pushable(tmp_path, "first", {".quire/ci.py": QUICK})
    _second, second_work = pushable(tmp_path, "second", {".quire/ci.py": QUICK})
    with machine_worker(tmp_path, "w1") as w1, machine_worker(tmp_path, "w2"):
        push(first_work, *(f"HEAD:refs/heads/a{i}" for i in range(3)))
        push(second_work, *(f"HEAD:refs/heads/b{i}" for i in range(3)))
        wait_for(all_done(database, 6), "six runs", proc=w1)
    queue = {row.run_id: row for row in rows(database)}
    assert {row.worker_host for row in queue.values()} == {"w1", "w2"}

    runs = listed(tmp_path)
    assert {run["id"]: run["worker"] for run in runs} == {
        run_id: row.worker_host for run_id, row in queue.items()
    }
    assert all(run["state"] == "complete" for run in runs)
    assert {run["repo"] for run in runs} == {queue[run["id"]].repo for run in runs}
    assert len({run["repo"] for run in runs}) == 2

    table = read(tmp_path, "ci", "runs", "--all")
    assert table.returncode == 0, table.stderr
    for run_id, row in queue.items():
        (line,) = [line for line in table.stdout.splitlines() if line.startswith(run_id)]
        assert line.split()[-1] == row.worker_host and row.repo in line

    run_id = sorted(queue)[0]
    logs = read(tmp_path, "ci", "logs", run_id, "hello")
    assert logs.returncode == 0, logs.stderr
    assert "hello" in logs.stdout
    prefix = read(tmp_path, "ci", "logs", run_id[:22])  # a prefix, in any repository
    assert prefix.returncode == 0 and "hello" in prefix.stdout, prefix.stderr
    shown = read(tmp_path, "ci", "show", run_id)
    assert shown.returncode == 0, shown.stderr
    assert f"worker    {queue[run_id].worker_host}" in shown.stdout
    assert "hello: success" in shown.stdout
    # The reader ran nothing: what it read is its mirror of the index, not a run of its own.
    assert not (tmp_path / "reader" / "state" / "runs").exists()

    # A first sync in pages of two changes makes the very same mirror.
    monkeypatch.setattr(reader, "PAGE", 2)
    paged = Mirror(tmp_path / "paged")
    assert reader.sync(database, paged) > 2
    assert tree(paged.runs_root) == tree(tmp_path / "reader" / "state" / "mirror" / "runs")


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and not path.name.startswith(".")
    }


@contextmanager
def lines_of(proc: subprocess.Popen[str]) -> Iterator[list[str]]:
    """The lines `proc` prints, collected as they come (a thread reads its stdout)."""
    got: list[str] = []
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:
        for line in stdout:
            got.append(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield got
    finally:
        terminate(proc)  # type: ignore[arg-type]
        thread.join(timeout=10)
        stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()


def test_logs_follow_from_another_machine_prints_lines_as_they_come_and_ends_with_the_run(
    tmp_path: Path, database: str
) -> None:
    gate = tmp_path / "gate"
    _bare, work = pushable(tmp_path, "follow", {".quire/ci.py": GATED.format(gate=gate)})
    with machine_worker(tmp_path, "runner") as runner:
        push(work, "HEAD:refs/heads/main")
        wait_for(lambda: any(r.state == "running" for r in rows(database)), "the run", proc=runner)
        (row,) = rows(database)
        wait_for(lambda: any(r["id"] == row.run_id for r in listed(tmp_path)), "the index")
        follow = subprocess.Popen(
            [*QUIRE, "ci", "logs", row.run_id, "--follow"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=reader_env(tmp_path),
            cwd=tmp_path / "reader" / "cwd",
        )
        with lines_of(follow) as got:
            wait_for(lambda: any("line one" in line for line in got), "line one")
            assert not any("line two" in line for line in got)
            assert reader.lease_alive(database, row.run_id)  # its worker holds it
            gate.touch()
            assert follow.wait(timeout=90) == 0
            assert follow.stderr is not None
            err = follow.stderr.read()
        assert any("line two" in line for line in got), (got, err)
        wait_for(all_done(database, 1), "the run", proc=runner)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        text: str = response.read().decode()
        return text


def test_serve_on_a_machine_that_ran_nothing_shows_every_run_and_its_log_live(
    tmp_path: Path, database: str
) -> None:
    gate = tmp_path / "gate"
    _bare, work = pushable(tmp_path, "web", {".quire/ci.py": GATED.format(gate=gate)})
    err_path = tmp_path / "serve.err"
    with machine_worker(tmp_path, "webworker") as proc, err_path.open("w") as err:
        push(work, "HEAD:refs/heads/main")
        wait_for(lambda: any(r.state == "running" for r in rows(database)), "the run", proc=proc)
        (row,) = rows(database)
        serve = subprocess.Popen(
            [*QUIRE, "ci", "serve", "--port", "0"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=reader_env(tmp_path),
            cwd=tmp_path / "reader" / "cwd",
        )
        try:
            wait_for(lambda: "http://" in err_path.read_text(), "the server's URL")
            found = re.search(r"http://\S+/", err_path.read_text())
            assert found is not None
            url = found.group(0)

            def listed_as(state: str) -> bool:
                runs = json.loads(get(url + "api/runs"))["runs"]
                return [(r["id"], r["worker"], r["state"]) for r in runs] == [
                    (row.run_id, "webworker", state)
                ]

            wait_for(lambda: listed_as("active"), "the run, active, on the page")
            repo = json.loads(get(url + "api/runs"))["runs"][0]["repo"]
            output = f"{url}runs/{repo}/{row.run_id}/jobs/gated/output.txt"
            wait_for(lambda: "line one" in get(output), "the job's first line")
            assert "line two" not in get(output)
            gate.touch()
            wait_for(lambda: listed_as("complete"), "the run, complete, on the page")
            assert "line two" in get(output)
            assert "webworker" in get(f"{url}runs/{repo}/{row.run_id}")
        finally:
            terminate(serve)  # type: ignore[arg-type]


def test_a_killed_workers_lost_attempt_and_its_retry_both_show_in_the_index(
    tmp_path: Path, database: str
) -> None:
    marker = tmp_path / "slow-started"
    _bare, work = pushable(tmp_path, "lease", {".quire/ci.py": SLOW_ONCE.format(marker=marker)})
    with machine_worker(tmp_path, "doomed") as doomed:
        push(work, "HEAD:refs/heads/slow")
        wait_for(marker.exists, "the slow run's command", proc=doomed)
        (lost,) = rows(database)
        wait_for(
            lambda: [r["state"] for r in listed(tmp_path)] == ["active"], "the run in the index"
        )
        assert reader.lease_alive(database, lost.run_id)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
    wait_for(lambda: not reader.lease_alive(database, lost.run_id), "the lease to run out")
    # Followed from elsewhere before any worker took it over: no runner, by its lease.
    followed = read(tmp_path, "ci", "logs", lost.run_id, "--follow")
    assert followed.returncode != 0
    assert f"run {lost.run_id} has no runner any more" in followed.stderr
    assert "its worker's lease ran out" in followed.stderr
    with machine_worker(tmp_path, "rescuer") as rescuer:
        wait_for(all_done(database, 1), "the run to be finished by the rescuer", proc=rescuer)
    (retry,) = rows(database)
    runs = {run["id"]: run for run in listed(tmp_path)}
    assert set(runs) == {lost.run_id, retry.run_id}
    first, second = runs[lost.run_id], runs[retry.run_id]
    assert (first["state"], first["reason"], first["worker"]) == ("failed", "orphaned", "doomed")
    assert (second["state"], second["worker"]) == ("complete", "rescuer")
    shown = read(tmp_path, "ci", "show", lost.run_id)
    assert f"queued again as run {retry.run_id}" in shown.stdout, shown.stdout
    assert "worker doomed" in shown.stdout
    assert "work: failed" in shown.stdout and "orphaned: its worker was lost" in shown.stdout
    assert "queued again as run" in log_of(tmp_path, "rescuer")


def test_runs_pruned_on_their_worker_leave_the_index_and_the_readers_mirror(
    tmp_path: Path, database: str
) -> None:
    _bare, work = pushable(tmp_path, "prune", {".quire/ci.py": QUICK})
    with machine_worker(tmp_path, "pruner") as proc:
        push(work, "HEAD:refs/heads/main")
        wait_for(all_done(database, 1), "the run", proc=proc)
    (row,) = rows(database)
    assert [run["id"] for run in listed(tmp_path)] == [row.run_id]
    pruned = subprocess.run(
        [*QUIRE, "ci", "prune", "--all", "--keep", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**reader_env(tmp_path), "QUIRE_STATE_DIR": str(tmp_path / "pruner" / "state")},
    )
    assert pruned.returncode == 0, pruned.stderr
    assert "removed 1 run from the run index" in pruned.stdout
    assert listed(tmp_path) == []
    assert not list((tmp_path / "reader" / "state" / "mirror" / "runs").rglob(row.run_id))


def test_a_run_cancelled_before_it_started_shows_in_the_index_with_no_worker(
    tmp_path: Path, database: str
) -> None:
    _bare, work = pushable(tmp_path, "cancel", {".quire/ci.py": QUICK})
    push(work, "HEAD:refs/heads/main")  # no worker: it stays queued
    (row,) = rows(database)
    cancelled = subprocess.run(
        [*QUIRE, "ci", "cancel", row.run_id],
        capture_output=True,
        text=True,
        timeout=120,
        env={**reader_env(tmp_path), "QUIRE_STATE_DIR": str(tmp_path / "canceller" / "state")},
    )
    assert cancelled.returncode == 0, cancelled.stderr
    (run,) = listed(tmp_path)
    assert (run["id"], run["state"], run["worker"]) == (row.run_id, "cancelled", None)
    assert run["cancelled_by"]


def test_a_reader_syncs_a_large_log_in_pages_of_bounded_bytes(
    tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quire.ci.store.shipping import FileChange, FileKind, RunRow
    from quire.service.pgindex.writer import IndexWriter

    run_id = "20261204-120000-000000-abcdef"
    piece = 300 * 1024
    data = bytes(range(256)) * (5 * piece // 256)
    changes = [
        FileChange(
            run_id=run_id,
            path="log.jsonl",
            kind=FileKind.whole if at == 0 else FileKind.append,
            at=at,
            data=data[at : at + piece],
        )
        for at in range(0, len(data), piece)
    ]
    row = RunRow(
        run_id=run_id, repo="p-1", git_dir="/g", worker="w", state_dir="/s", state="active"
    )
    writer = IndexWriter(database)
    try:
        writer.ship([row], changes)
    finally:
        writer.close()
    monkeypatch.setattr(reader, "PAGE_BYTES", 2 * piece)
    batches: list[int] = []
    apply = Mirror.apply

    def counted(self: Mirror, rows: Any, found: list[FileChange], seq: int) -> None:
        batches.append(sum(len(change.data) for change in found))
        apply(self, rows, found, seq)

    monkeypatch.setattr(Mirror, "apply", counted)
    mirror = Mirror(tmp_path / "mirror")
    assert reader.sync(database, mirror) == len(changes) + 3  # its row comes with each page
    assert (mirror.runs_root / "p-1" / "active" / run_id / "log.jsonl").read_bytes() == data
    assert batches == [2 * piece, 2 * piece, piece]  # never the whole log in memory at once


def test_a_reader_of_a_database_never_migrated_is_told_to_migrate_it(
    tmp_path: Path, server: postgres.Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A new user's first `quire ci runs --all` may come before `quire ci db migrate`.
    monkeypatch.setenv("QUIRE_DATABASE_URL", server.new_database())
    for args in (("ci", "runs", "--all"), ("ci", "show", "latest")):
        done = read(tmp_path, *args)
        assert done.returncode == 3, (args, done.stderr)
        assert "has schema version 0" in done.stderr, (args, done.stderr)
        assert "run `quire ci db migrate`" in done.stderr, (args, done.stderr)
        assert "internal error" not in done.stderr, (args, done.stderr)


def test_a_reader_outside_any_repository_is_told_about_all_and_run_ids(
    tmp_path: Path, database: str
) -> None:
    # A web or laptop machine with the URL has no repository: `runs` and `latest` say what
    # to use instead of only "not a git repository".
    for args in (("ci", "runs"), ("ci", "logs", "latest")):
        done = read(tmp_path, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert "is not a git repository" in done.stderr, (args, done.stderr)
        assert "quire ci runs --all" in done.stderr, (args, done.stderr)


def test_a_running_run_cancelled_from_another_machine_is_recorded_cancelled_by_who_asked(
    tmp_path: Path, database: str
) -> None:
    gate = tmp_path / "gate"  # never made: the job waits until it is stopped
    _bare, work = pushable(tmp_path, "stopme", {".quire/ci.py": GATED.format(gate=gate)})
    with machine_worker(tmp_path, "runner") as runner:
        push(work, "HEAD:refs/heads/main")
        wait_for(lambda: any(r.state == "running" for r in rows(database)), "the run", proc=runner)
        (row,) = rows(database)
        wait_for(lambda: any(r["id"] == row.run_id for r in listed(tmp_path)), "the index")
        cancelled = read(tmp_path, "ci", "cancel", row.run_id)
        assert cancelled.returncode == 0, cancelled.stderr
        wait_for(all_done(database, 1), "the run", proc=runner)

        def recorded() -> dict[str, Any] | None:
            found = [r for r in listed(tmp_path) if r["id"] == row.run_id]
            return found[0] if found and found[0]["state"] == "cancelled" else None

        wait_for(lambda: recorded() is not None, "the cancelled run in the index")
    run = recorded()
    assert run is not None and run["cancelled_by"], run
    shown = read(tmp_path, "ci", "show", row.run_id)
    assert shown.returncode == 0, shown.stderr
    assert f"cancelled by {run['cancelled_by']}" in shown.stdout, shown.stdout
