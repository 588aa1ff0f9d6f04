"""Workers on one PostgreSQL queue, each with its own state and cache directories (standing
for separate machines): real pushes through the hook, each run once, and a kill -9 of a
worker whose run another worker finishes once the lease has run out. The worker registry:
`quire ci workers` lists them by name with what they run, a worker killed -9 drops out once
its heartbeat expires, a clean stop leaves at once, and a push with no live worker warns.

The server is this module's own (tests/integration/postgres.py); without PostgreSQL the
tests are skipped, unless QUIRE_REQUIRE_POSTGRES=1. Host executor only: no engine needed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from quire.ci.store.runs import RunDir, RunState, store_for
from quire.service.actions import workers_listening
from quire.service.pgschema import SCHEMA_VERSION
from quire.service.queue import Entry
from tests.helpers import GIT_ENV, commit, terminate
from tests.integration import postgres
from tests.integration.test_worker import meta, push, pushable, quire, wait_for

pytestmark = pytest.mark.integration

QUIRE = [sys.executable, "-m", "quire"]
LEASE_S = 3
QUICK = """\
from quire.ci import job, Runtime


@job(inputs=["quire/push"])
def hello(rt: Runtime):
    rt.sh("sleep 0.3; echo hello", check=True)
"""
# The first attempt of the slow branch leaves a marker and sleeps until killed; the retry
# finds the marker and finishes (a shell command on the host: the host executor runs it).
SLOW_ONCE = """\
from quire.ci import job, Runtime


@job(inputs=["quire/push"])
def work(rt: Runtime):
    rt.sh("if [ -e {marker} ]; then echo again; else touch {marker}; sleep 120; fi", check=True)
"""


@pytest.fixture
def no_container_left_behind() -> None:
    """Host runs only: no containers, no engine (overrides the suite's check)."""


@pytest.fixture(scope="module")
def server() -> Iterator[postgres.Server]:
    try:
        started = postgres.start()
    except postgres.Unavailable as exc:
        if postgres.required():
            pytest.fail(f"QUIRE_REQUIRE_POSTGRES=1 but no PostgreSQL can be started: {exc}")
        pytest.skip(f"no PostgreSQL server could be started: {exc}")
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def database(server: postgres.Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new database, migrated with `quire ci db migrate`, configured for everything this
    test starts (the hook, the workers, the CLI) through QUIRE_DATABASE_URL."""
    url = server.new_database()
    monkeypatch.setenv("QUIRE_DATABASE_URL", url)
    migrated = quire("ci", "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert f"schema version 0 -> {SCHEMA_VERSION}" in migrated.stdout
    return url


@contextmanager
def machine_worker(tmp_path: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
    """`quire ci worker --name NAME` with state and cache directories of its own."""
    home = tmp_path / name
    env = {
        **os.environ,
        **GIT_ENV,
        "QUIRE_STATE_DIR": str(home / "state"),
        "QUIRE_CACHE_DIR": str(home / "cache"),
    }
    with (tmp_path / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen(
            [*QUIRE, "ci", "worker", "--name", name, "--lease", str(LEASE_S)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            wait_for(lambda: "started" in log_of(tmp_path, name), f"worker {name}", proc=proc)
            yield proc
        finally:
            terminate(proc)


def log_of(tmp_path: Path, name: str) -> str:
    try:
        return (tmp_path / f"{name}.log").read_text(errors="replace")
    except OSError:
        return ""


def rows(url: str) -> list[Entry]:
    from quire.service.pgqueue import PgQueue

    with PgQueue(url) as queue:
        return queue.active() + queue.recent(10_000)


def all_done(url: str, count: int) -> Callable[[], bool]:
    def check() -> bool:
        found = rows(url)
        return len(found) == count and all(r.state == "done" for r in found)

    return check


def runs_in(tmp_path: Path, name: str, bare: Path, monkeypatch: pytest.MonkeyPatch) -> list[RunDir]:
    """The run records worker `name` left in its own state directory."""
    with monkeypatch.context() as patch:
        patch.setenv("QUIRE_STATE_DIR", str(tmp_path / name / "state"))
        return list(store_for(bare).runs())


def test_two_workers_share_ten_pushes_and_run_each_once(
    tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare, work = pushable(tmp_path, "shared", {".quire/ci.py": QUICK})
    branches = [f"HEAD:refs/heads/b{i}" for i in range(10)]
    with machine_worker(tmp_path, "w1") as w1, machine_worker(tmp_path, "w2"):
        pushed = push(work, *branches)
        assert pushed.count("quire: queued run") == 10
        wait_for(all_done(database, 10), "ten runs", proc=w1)
    found = rows(database)
    assert all(r.outcome == "complete" and r.attempt == 1 for r in found)
    assert {r.worker_host for r in found} == {"w1", "w2"}
    records = {name: runs_in(tmp_path, name, bare, monkeypatch) for name in ("w1", "w2")}
    ran = [r.run_id for runs in records.values() for r in runs]
    assert sorted(ran) == sorted(r.run_id for r in found)  # each run once, on one machine
    for name, runs in records.items():
        assert {r.run_id for r in runs} == {r.run_id for r in found if r.worker_host == name}
        assert all(r.state == RunState.complete for r in runs)
    listed = quire("ci", "queue", "--finished", "10")
    assert listed.returncode == 0 and listed.stdout.count("complete") == 10


def test_a_killed_workers_run_is_finished_by_another_after_its_lease(
    tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "slow-started"
    bare, work = pushable(tmp_path, "lease", {".quire/ci.py": SLOW_ONCE.format(marker=marker)})
    with machine_worker(tmp_path, "doomed") as doomed:
        push(work, "HEAD:refs/heads/slow")
        wait_for(marker.exists, "the slow run's command", proc=doomed)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
    (lost,) = rows(database)
    assert (lost.state, lost.worker_host) == ("running", "doomed")
    with machine_worker(tmp_path, "rescuer") as rescuer:
        wait_for(all_done(database, 1), "the run to be finished by the rescuer", proc=rescuer)
    (row,) = rows(database)
    assert (row.attempt, row.retry_of, row.outcome, row.worker_host) == (
        2,
        lost.run_id,
        "complete",
        "rescuer",
    )
    assert "queued again as run" in log_of(tmp_path, "rescuer")
    (rescued,) = runs_in(tmp_path, "rescuer", bare, monkeypatch)
    assert (rescued.run_id, rescued.state) == (row.run_id, RunState.complete)
    assert meta(rescued).ref == "refs/heads/slow"

    # The killed worker's record of the first attempt stays on its own machine, ended by its
    # child (SIGTERM when its worker died).
    def first_attempt_ended() -> bool:
        runs = runs_in(tmp_path, "doomed", bare, monkeypatch)
        return [r.run_id for r in runs] == [lost.run_id] and runs[0].state != RunState.active

    wait_for(first_attempt_ended, "the first attempt's record to end")


def test_a_worker_goes_on_claiming_after_the_database_restarts(
    tmp_path: Path, server: postgres.Server, database: str
) -> None:
    _bare, work = pushable(tmp_path, "restart", {".quire/ci.py": QUICK})
    with machine_worker(tmp_path, "steady") as steady:
        push(work, "HEAD:refs/heads/before")
        wait_for(all_done(database, 1), "the run before the restart", proc=steady)
        server.halt()
        wait_for(
            lambda: "cannot" in log_of(tmp_path, "steady"), "the worker to notice", proc=steady
        )
        server.start()
        push(work, "HEAD:refs/heads/after")
        wait_for(all_done(database, 2), "the run after the restart", proc=steady)
    assert all(r.outcome == "complete" for r in rows(database))


# --- the worker registry ----------------------------------------------------------------------

SLOW_FOREVER = """\
from quire.ci import job, Runtime


@job(inputs=["quire/push"])
def work(rt: Runtime):
    rt.sh("touch {marker}; sleep 120", check=True)
"""


def listed(url: str) -> list[Any]:
    from quire.service.pgqueue import PgQueue

    with PgQueue(url) as queue:
        return queue.workers()


def names(url: str) -> list[str]:
    return [w.name for w in listed(url)]


def test_workers_appear_by_name_a_killed_one_expires_and_no_live_worker_warns(
    tmp_path: Path, database: str
) -> None:
    marker = tmp_path / "slow-started"
    _bare, work = pushable(
        tmp_path, "registry", {".quire/ci.py": SLOW_FOREVER.format(marker=marker)}
    )
    with machine_worker(tmp_path, "build-a") as a, machine_worker(tmp_path, "build-b") as b:
        wait_for(lambda: names(database) == ["build-a", "build-b"], "both workers registered")
        shown = quire("ci", "workers", "--json")
        assert shown.returncode == 0, shown.stderr
        found = {w["name"]: w for w in json.loads(shown.stdout)}
        assert (found["build-a"]["pid"], found["build-b"]["pid"]) == (a.pid, b.pid)
        assert found["build-a"]["ttl_s"] == LEASE_S  # live while seen within its lease
        table = quire("ci", "workers").stdout
        assert "build-a" in table and "build-b" in table and "idle" in table
        assert workers_listening(tmp_path / "web") is True  # the web page's question

        pushed = push(work, "HEAD:refs/heads/slow")
        assert "no worker is running" not in pushed
        wait_for(marker.exists, "the slow run's command", proc=a)
        wait_for(lambda: any(w.running for w in listed(database)), "the run shown on its worker")
        (busy,) = [w for w in listed(database) if w.running]
        (row,) = rows(database)
        assert busy.running == (row.run_id,)
        assert busy.name == row.worker_host
        assert row.run_id in quire("ci", "workers").stdout

        doomed, other = (a, "build-b") if busy.name == "build-a" else (b, "build-a")
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
        # No clean stop: its row stays until its heartbeat is older than its lease.
        wait_for(lambda: names(database) == [other], "the killed worker to drop out")
        assert busy.name not in quire("ci", "workers").stdout

    # Both gone (the other one stopped cleanly and left at once); a push now warns.
    assert names(database) == []
    assert "no worker is running" in quire("ci", "workers").stdout
    assert workers_listening(tmp_path / "web") is False  # the page says no worker is running
    commit(work, {"more": "1"})
    warned = push(work, "HEAD:refs/heads/slow")
    assert (
        "quire: no worker is running (none seen by the queue database within its lease)"
    ) in warned
