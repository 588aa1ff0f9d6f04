"""CI on push, end to end: a bare repository with quire's hook, `quire ci worker` processes,
real pushes, both executors, kill -9 and SIGTERM of the worker, two workers on one queue.

Every worker is started as a user starts it (`python -m quire ci worker`) with this test's
own state directory, and stopped by pid in a `finally`. Waits are bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from quire.ci.store.records import RunMeta, RunResult, read_record
from quire.ci.store.runs import RunDir, RunState, RunStore, store_for
from quire.paths import state_dir
from quire.service.notes import read_notes
from quire.service.queue import Entry, Queue, queue_path
from tests.helpers import GIT_ENV, commit, git, make_repo, terminate
from tests.integration.support import BASE_IMAGE, SESSION_PREFIX, without_sandbox

pytestmark = pytest.mark.integration

QUIRE = [sys.executable, "-m", "quire"]
DOCKERFILE = f"FROM {BASE_IMAGE}\n"
OK_PIPELINE = """\
from quire.ci import job, Runtime


@job(inputs=["quire/push"])
def hello(rt: Runtime):
    rt.sh("echo hello from $0", check=True)
"""


# --- helpers --------------------------------------------------------------------------------------


def quire(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*QUIRE, *args], capture_output=True, text=True, timeout=120, env={**os.environ, **GIT_ENV}
    )


def pushable(tmp_path: Path, name: str, files: dict[str, str | bytes]) -> tuple[Path, Path]:
    """A bare repository with quire's hook installed (through the CLI), and a clone."""
    work = tmp_path / f"{SESSION_PREFIX}-{name}"
    make_repo(work, files)
    bare = Path(f"{work}.git")
    git(tmp_path, "init", "-q", "--bare", str(bare))  # empty: every push below is news
    installed = quire("ci", "hook", "install", "--repo", str(bare))
    assert installed.returncode == 0, installed.stderr
    git(work, "remote", "add", "origin", str(bare))
    return bare, work


def push(work: Path, *refspecs: str) -> str:
    done = subprocess.run(
        ["git", "push", "origin", *refspecs],
        cwd=work,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


@contextmanager
def worker(
    tmp_path: Path, *args: str, name: str = "worker", ready: str = "started"
) -> Iterator[subprocess.Popen[bytes]]:
    """A running `quire ci worker` (once its log says `ready`); stopped (TERM, then KILL)
    by pid when the block ends."""
    log = (tmp_path / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [*QUIRE, "ci", "worker", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **GIT_ENV},
    )
    try:
        wait_for(lambda: ready in worker_log(tmp_path, name), "the worker to start", proc=proc)
        yield proc
    finally:
        terminate(proc)
        log.close()


def worker_log(tmp_path: Path, name: str = "worker") -> str:
    try:
        return (tmp_path / f"{name}.log").read_text(errors="replace")
    except OSError:
        return ""


def wait_for(
    predicate: Callable[[], object],
    what: str,
    timeout: float = 90.0,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the worker exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def rows() -> list[Entry]:
    path = Path(queue_path(state_dir()))
    if not path.exists():
        return []
    with Queue(path) as queue:
        return queue.active() + queue.recent(10_000)


def all_done(count: int) -> Callable[[], bool]:
    return lambda: len(rows()) == count and all(r.state == "done" for r in rows())


def runs_of(bare: Path) -> list[RunDir]:
    return list(store_for(bare).runs())


def meta(run: RunDir) -> RunMeta:
    return read_record(run.path / "meta.yml", RunMeta)


def result(run: RunDir) -> RunResult:
    return read_record(run.path / "result.yml", RunResult)


# --- push -> run ----------------------------------------------------------------------------------


def test_a_push_runs_on_the_host_and_its_result_is_noted(tmp_path: Path) -> None:
    bare, work = pushable(tmp_path, "host", {".quire/ci.py": OK_PIPELINE})
    with worker(tmp_path) as proc:
        pushed = push(work, "HEAD:main")
        assert "quire: queued run" in pushed
        wait_for(all_done(1), "the run", proc=proc)
    (row,) = rows()
    assert (row.outcome, row.executor, row.attempt) == ("complete", "host", 1)
    (run,) = runs_of(bare)
    assert run.run_id == row.run_id and run.state == RunState.complete
    sha = git(work, "rev-parse", "HEAD")
    assert (meta(run).sha, meta(run).ref) == (sha, "refs/heads/main")
    listed = quire("ci", "runs", "--repo", str(bare))
    assert row.run_id in listed.stdout
    shown = git(bare, "log", "--notes=quire", "-1", "--format=%N", "main")
    assert f'"run_id":"{row.run_id}","state":"complete"' in shown
    assert f"start {row.run_id}" in worker_log(tmp_path)


def test_the_config_file_sends_a_repositorys_pushes_to_docker(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {".quire/ci.py": OK_PIPELINE, ".quire/Dockerfile": DOCKERFILE}
    bare, work = pushable(tmp_path, "docker", files)
    config = Path(os.environ["QUIRE_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f'[repositories."{store_for(bare).repo}"]\nexecutor = "docker"\n')
    with worker(tmp_path, "--executor", "host") as proc:
        push(work, "HEAD:main")
        wait_for(all_done(1), "the docker run", proc=proc)
    (row,) = rows()
    assert (row.outcome, row.executor) == ("complete", "docker")
    (run,) = runs_of(bare)
    assert meta(run).executor.value == "docker"
    assert (run.path / "container.yml").is_file()
    (note,) = read_notes(bare, git(work, "rev-parse", "HEAD"))
    assert (note.state, note.executor) == ("complete", "docker")


def test_broken_and_missing_pipelines_fail_their_runs_and_the_worker_goes_on(
    tmp_path: Path,
) -> None:
    bare, work = pushable(tmp_path, "broken", {".quire/ci.py": OK_PIPELINE})
    good = git(work, "rev-parse", "HEAD")
    git(work, "checkout", "-q", "-b", "broken")
    broken = commit(
        work, {".quire/ci.py": "from quire.ci import job\n\n@job(inputs=[])\ndef x(rt): pass\n"}
    )
    git(work, "checkout", "-q", "-b", "none", "main")
    git(work, "rm", "-q", "-r", ".quire")
    none = commit(work, {})
    with worker(tmp_path) as proc:
        push(
            work,
            f"{broken}:refs/heads/broken",
            f"{none}:refs/heads/none",
            f"{good}:refs/heads/main",
        )
        wait_for(all_done(3), "three runs", proc=proc)
        assert proc.poll() is None
    by_ref = {r.ref: r for r in rows()}
    assert (by_ref["refs/heads/broken"].outcome, by_ref["refs/heads/broken"].reason) == (
        "failed",
        "error",
    )
    assert "invalid pipeline" in (by_ref["refs/heads/broken"].message or "")
    assert by_ref["refs/heads/none"].reason == "no-pipeline"
    assert by_ref["refs/heads/main"].outcome == "complete"
    (note,) = read_notes(bare, broken)
    assert note.state == "failed" and "invalid pipeline" in (note.message or "")
    # The broken push is a run like any other: `quire ci runs --repo BARE` lists it, failed.
    (recorded,) = [r for r in runs_of(bare) if r.run_id == by_ref["refs/heads/broken"].run_id]
    assert recorded.state.value == "failed"
    assert read_notes(bare, none)[0].reason == "no-pipeline"


# --- stopping and dying ---------------------------------------------------------------------------


SLOW_ONCE = """\
from pathlib import Path
from quire.ci import job, Runtime

MARKER = Path({marker!r})


@job(inputs=["quire/push"])
def work(rt: Runtime):
    if rt.jobs("quire/push")["branch"] == "slow" and not MARKER.exists():
        MARKER.write_text("the first attempt started")
        rt.sh("sleep 120")
    rt.sh("echo done", check=True)
"""


def test_kill_9_of_the_worker_requeues_its_run_once_and_runs_the_queued_ones_once(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "slow-started"
    files: dict[str, str | bytes] = {
        ".quire/ci.py": SLOW_ONCE.format(marker=str(marker)),
        ".quire/Dockerfile": DOCKERFILE,
    }
    without_sandbox()  # the job's Python tells the test it started through a file of the host
    bare, work = pushable(tmp_path, "kill9", files)
    with worker(tmp_path, "--executor", "docker", name="first") as first:
        push(work, "HEAD:refs/heads/slow")
        wait_for(marker.exists, "the slow run's job", proc=first)
        push(work, "HEAD:refs/heads/b1", "HEAD:refs/heads/b2", "HEAD:refs/heads/b3")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    (lost,) = [r for r in runs_of(bare) if meta(r).ref == "refs/heads/slow"]
    # Its child got SIGTERM when the worker died: it leaves active/ by itself (or reconcile does).
    wait_for(
        lambda: RunStore(lost.store.repo).find(lost.run_id).state != RunState.active,
        "the child to stop",
    )
    assert [r.state for r in rows()].count("queued") == 3
    with worker(tmp_path, "--executor", "docker", name="second") as second:
        wait_for(all_done(4), "every run after the restart", proc=second)
    runs = runs_of(bare)
    refs = sorted(meta(r).ref or "" for r in runs)
    assert refs == [
        "refs/heads/b1",
        "refs/heads/b2",
        "refs/heads/b3",
        "refs/heads/slow",
        "refs/heads/slow",
    ]
    old = RunStore(lost.store.repo).find(lost.run_id)
    assert old.state == RunState.failed and result(old).reason is not None
    assert result(old).reason.value in ("interrupted", "orphaned")  # type: ignore[union-attr]
    slow_row = next(r for r in rows() if r.ref == "refs/heads/slow")
    assert (slow_row.attempt, slow_row.retry_of, slow_row.outcome) == (2, lost.run_id, "complete")
    assert all(r.outcome == "complete" for r in rows())
    assert "queued again as run" in worker_log(tmp_path, "second")


def test_sigterm_interrupts_the_running_run_and_leaves_the_queue_alone(tmp_path: Path) -> None:
    slow = OK_PIPELINE.replace('rt.sh("echo hello from $0", check=True)', 'rt.sh("sleep 120")')
    bare, work = pushable(tmp_path, "sigterm", {".quire/ci.py": slow})
    with worker(tmp_path) as proc:
        push(work, "HEAD:main")
        wait_for(lambda: any(r.state == RunState.active for r in runs_of(bare)), "the run to start")
        wait_for(lambda: any(r.state == "running" and r.child_pid for r in rows()), "the child")
        push(work, "HEAD:refs/heads/waiting")
        wait_for(lambda: len(rows()) == 2, "the second push")
        time.sleep(0.5)  # let the first run reach its sleep
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    (run,) = [r for r in runs_of(bare) if meta(r).ref == "refs/heads/main"]
    assert run.state == RunState.failed and result(run).reason.value == "interrupted"  # type: ignore[union-attr]
    states = {r.ref: (r.state, r.reason) for r in rows()}
    assert states["refs/heads/main"] == ("done", "interrupted")
    assert states["refs/heads/waiting"] == ("queued", None)
    assert "stopped" in worker_log(tmp_path)


def test_two_workers_on_one_queue_never_run_a_push_twice(tmp_path: Path) -> None:
    bare, work = pushable(tmp_path, "two", {".quire/ci.py": OK_PIPELINE})
    branches = [f"HEAD:refs/heads/b{i}" for i in range(10)]
    pushed = push(work, *branches)  # no worker yet: the runs wait in the queue
    assert "the run waits in the queue" in pushed
    assert [r.state for r in rows()] == ["queued"] * 10
    with worker(tmp_path, "-j", "2", name="w1") as w1, worker(tmp_path, "-j", "2", name="w2"):
        wait_for(all_done(10), "ten runs", proc=w1)
    runs = runs_of(bare)
    assert sorted(r.run_id for r in runs) == sorted(r.run_id for r in rows())
    assert sorted(meta(r).ref or "" for r in runs) == sorted(
        b.removeprefix("HEAD:") for b in branches
    )
    assert all(r.state == RunState.complete for r in runs)


def test_cancel_removes_a_queued_run_and_interrupts_a_running_one(tmp_path: Path) -> None:
    slow = OK_PIPELINE.replace('rt.sh("echo hello from $0", check=True)', 'rt.sh("sleep 120")')
    bare, work = pushable(tmp_path, "cancel", {".quire/ci.py": slow})
    with worker(tmp_path) as proc:
        push(work, "HEAD:main", "HEAD:refs/heads/later")
        wait_for(lambda: any(r.state == RunState.active for r in runs_of(bare)), "the run to start")
        running = next(r for r in rows() if r.state == "running")
        queued = next(r for r in rows() if r.state == "queued")
        listed = quire("ci", "queue", "--json")
        assert running.run_id in listed.stdout and queued.run_id in listed.stdout
        assert quire("ci", "cancel", queued.run_id).returncode == 0
        assert quire("ci", "cancel", running.run_id[:-3]).returncode == 0
        wait_for(all_done(2), "both cancelled", proc=proc)
    assert {r.ref: r.outcome for r in rows()} == {
        "refs/heads/main": "cancelled",
        "refs/heads/later": "cancelled",
    }
    # Both are runs of their own in cancelled/, by whom and when; the queued one never ran.
    runs = {meta(r).ref: r for r in runs_of(bare)}
    assert sorted(runs) == ["refs/heads/later", "refs/heads/main"]
    for run in runs.values():
        assert run.state == RunState.cancelled
        result = run.result()
        assert result is not None and result.cancelled_by and result.cancelled_at
        assert result.exit_code == 130
    notes = {n.ref: n for n in read_notes(bare, git(work, "rev-parse", "HEAD"))}
    assert {ref: (n.state, bool(n.cancelled_by)) for ref, n in notes.items()} == {
        "refs/heads/main": ("cancelled", True),
        "refs/heads/later": ("cancelled", True),
    }


def test_a_corrupt_queue_stops_the_worker_with_a_message(tmp_path: Path) -> None:
    path = Path(queue_path(state_dir()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a database " * 500)
    done = subprocess.run(
        [*QUIRE, "ci", "worker"], capture_output=True, text=True, timeout=60, env=os.environ.copy()
    )
    assert done.returncode == 3
    assert "damaged" in done.stderr and "move it aside" in done.stderr
    assert path.read_bytes().startswith(b"not a database")  # left for the person to look at


def test_a_queue_file_truncated_under_the_worker_stops_it_with_exit_3(tmp_path: Path) -> None:
    _bare, work = pushable(tmp_path, "truncated", {".quire/ci.py": OK_PIPELINE})
    with worker(tmp_path) as proc:
        push(work, "HEAD:main")
        wait_for(all_done(1), "the first run", proc=proc)
        os.truncate(queue_path(state_dir()), 0)
        # The idle worker looks at its queue file at its next poll (5 s at most).
        wait_for(lambda: proc.poll() is not None, "the worker to notice", timeout=60)
        assert proc.returncode == 3, worker_log(tmp_path)
    said = worker_log(tmp_path)
    assert "was replaced or truncated while workers had it open" in said
    assert "truncated to 0 bytes" in said and str(queue_path(state_dir())) in said


def test_quire_ci_workers_lists_live_sqlite_workers_by_name(tmp_path: Path) -> None:
    def listed() -> list[str]:
        shown = quire("ci", "workers", "--json")
        assert shown.returncode == 0, shown.stderr
        return [w["name"] for w in json.loads(shown.stdout)]

    with (
        worker(tmp_path, "--name", "left", name="left") as left,
        worker(tmp_path, "--name", "right", name="right") as right,
    ):
        wait_for(lambda: listed() == ["left", "right"], "both workers in the registry")
        left.send_signal(signal.SIGKILL)
        left.wait(timeout=10)
        assert listed() == ["right"]  # its process is gone: at once, no heartbeat to wait for
        right.send_signal(signal.SIGTERM)
        right.wait(timeout=60)
    assert "no worker is running" in quire("ci", "workers").stdout
