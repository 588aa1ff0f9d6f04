"""Reconcile decisions: orphaned runs, quarantined records, leftover containers.

Process liveness is faked by replacing `quire.ci.store.reconcile.is_alive` (pids
named in a set are alive); docker is faked with pytest-subprocess, whose
exact argv match also pins the `docker ps` filter. The liveness check
itself is tested against real processes in test_liveness.py; here, the
runs whose runner.yml names this very process use the real one, so that
reconcile is seen to pass the recorded start time along.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from pytest_subprocess import FakeProcess
from typer.testing import CliRunner

from quire.ci.store import reconcile as reconcile_module
from quire.ci.store.liveness import process_start_ticks
from quire.ci.store.reconcile import Action, live_run_ids, reconcile
from quire.ci.store.records import (
    ContainerInfo,
    ExecutorKind,
    JobState,
    JobStatus,
    RunMeta,
    RunnerInfo,
    RunResult,
    RunTimes,
    read_record,
    utcnow,
    write_record,
)
from quire.ci.store.runs import RunDir, RunState, RunStore, store_for
from quire.cli.app import app
from quire.paths import state_dir
from tests.helpers import make_repo, write_shim

LIVE_PID = 4242
DEAD_PID = 4343
HOUR = timedelta(hours=1)


@pytest.fixture
def alive(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """Pids in this set are alive; every other pid is dead."""
    pids = {LIVE_PID}
    calls: list[tuple[int, int | None]] = []

    def fake_is_alive(pid: int, start: int | None) -> bool:
        calls.append((pid, start))
        return pid in pids

    monkeypatch.setattr(reconcile_module, "is_alive", fake_is_alive)
    return pids


def make_run(
    repo: str = "proj",
    state: RunState = RunState.active,
    *,
    pid: int | None = DEAD_PID,
    pid_start: int | None = 123,
    host: str | None = None,
    age: timedelta = timedelta(0),
    executor: ExecutorKind = ExecutorKind.docker,
) -> RunDir:
    """A run in `state` with meta (pushed `age` ago) and, unless pid is None, runner.yml."""
    store = RunStore(repo)

    def meta(run_id: str) -> RunMeta:
        return RunMeta(
            run_id=run_id,
            repo=repo,
            git_dir="/nowhere/.git",
            revision="HEAD",
            sha="0" * 40,
            pushed_at=utcnow() - age,
            executor=executor,
        )

    run = store.create(meta)
    if pid is not None:
        write_record(
            run.path / "runner.yml",
            RunnerInfo(pid=pid, host=host or socket.gethostname(), pid_start=pid_start),
        )
    if state != RunState.pending:
        run.transition(RunState.active)
        write_record(run.path / "times.yml", RunTimes(started_at=utcnow() - age))
    if state in (RunState.complete, RunState.failed):
        write_record(run.path / "result.yml", RunResult(exit_code=0))
        run.transition(state)
    run.workspace.mkdir(parents=True, exist_ok=True)
    (run.workspace / "file.txt").write_text("x\n")
    return run


def where(run: RunDir) -> RunState:
    """The state directory the run sits in now (read from disk)."""
    found = [s for s in RunState if (run.store.root / s.value / run.run_id).is_dir()]
    assert len(found) == 1, found
    return found[0]


def moved(run: RunDir) -> RunDir:
    return RunDir(run.store, run.run_id, where(run))


def result(run: RunDir) -> RunResult:
    return read_record(moved(run).path / "result.yml", RunResult)


# --- runs: live, dead, other host, young, old -----------------------------------------------------


def test_a_run_whose_runner_is_alive_is_left_untouched(alive: set[int]) -> None:
    run = make_run(pid=LIVE_PID)
    assert reconcile(containers=False) == []
    assert where(run) == RunState.active
    assert not (run.path / "result.yml").exists()
    assert run.workspace.exists()


@pytest.mark.parametrize("state", [RunState.pending, RunState.active])
def test_a_run_whose_runner_is_gone_fails_as_orphaned(alive: set[int], state: RunState) -> None:
    run = make_run(state=state, pid=DEAD_PID)
    actions = reconcile(containers=False)
    assert actions == [Action("orphaned", f"proj/{run.run_id}", "its runner is gone")]
    assert where(run) == RunState.failed
    got = result(run)
    assert got.reason is not None and got.reason.value == "orphaned"
    assert got.exit_code != 0
    times = read_record(moved(run).path / "times.yml", RunTimes)
    assert times.finished_at is not None
    assert not run.workspace.exists()
    assert RunStore("proj").find("latest").state == RunState.failed


def test_a_run_recorded_by_another_host_is_left_untouched(
    alive: set[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[int] = []
    monkeypatch.setattr(reconcile_module, "is_alive", lambda pid, start: checked.append(pid))
    run = make_run(pid=DEAD_PID, host="some-other-host.invalid")
    assert reconcile(containers=False) == []
    assert where(run) == RunState.active
    assert checked == []  # its pid means nothing here


def test_a_young_run_without_runner_yml_is_left_untouched(alive: set[int]) -> None:
    run = make_run(state=RunState.pending, pid=None, age=timedelta(seconds=5))
    assert reconcile(containers=False) == []
    assert where(run) == RunState.pending


def test_an_old_run_without_runner_yml_fails_as_orphaned(alive: set[int]) -> None:
    run = make_run(state=RunState.pending, pid=None, age=2 * HOUR)
    (action,) = reconcile(containers=False)
    assert action.kind == "orphaned"
    assert where(run) == RunState.failed
    assert result(run).reason.value == "orphaned"  # type: ignore[union-attr]


def test_finished_runs_are_left_as_they_are(alive: set[int]) -> None:
    done = make_run(state=RunState.complete, pid=DEAD_PID)
    failed = make_run(state=RunState.failed, pid=DEAD_PID)
    assert reconcile(containers=False) == []
    assert where(done) == RunState.complete and where(failed) == RunState.failed
    assert result(done).reason is None and result(failed).reason is None


def test_only_the_given_stores_runs_are_reconciled(alive: set[int]) -> None:
    mine = make_run("mine", pid=DEAD_PID)
    other = make_run("other", pid=DEAD_PID)
    (action,) = reconcile([RunStore("mine")], containers=False)
    assert action.target == f"mine/{mine.run_id}"
    assert where(other) == RunState.active


# --- the runner's start time: a live pid that started at another time is a reused pid ------------


def my_start() -> int:
    start = process_start_ticks(os.getpid())
    assert start is not None
    return start


@pytest.mark.parametrize("state", [RunState.pending, RunState.active])
def test_a_run_whose_pid_is_alive_but_started_at_another_time_fails_as_orphaned(
    state: RunState,
) -> None:
    # No fake here: this very process holds the pid, but runner.yml says another
    # process (started one tick later) owned the run, so its runner is gone.
    run = make_run(state=state, pid=os.getpid(), pid_start=my_start() + 1)
    actions = reconcile(containers=False)
    assert actions == [Action("orphaned", f"proj/{run.run_id}", "its runner is gone")]
    assert where(run) == RunState.failed
    assert result(run).reason.value == "orphaned"  # type: ignore[union-attr]


def test_a_run_whose_pid_and_start_time_match_a_live_process_is_left_untouched() -> None:
    run = make_run(pid=os.getpid(), pid_start=my_start())
    assert reconcile(containers=False) == []
    assert where(run) == RunState.active


def test_a_run_whose_runner_yml_has_no_start_time_trusts_a_live_pid() -> None:
    run = make_run(pid=os.getpid(), pid_start=None)
    assert reconcile(containers=False) == []
    assert where(run) == RunState.active


def test_a_reused_pid_does_not_keep_a_runs_containers_alive() -> None:
    reused = make_run(pid=os.getpid(), pid_start=my_start() + 1)
    live = make_run(pid=os.getpid(), pid_start=my_start())
    assert live_run_ids([RunStore("proj")]) == {live.run_id}
    assert where(reused) == RunState.active  # judged, not moved


def test_reconcile_checks_liveness_with_the_recorded_start_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[tuple[int, int | None]] = []

    def fake_is_alive(pid: int, start: int | None) -> bool:
        asked.append((pid, start))
        return True

    monkeypatch.setattr(reconcile_module, "is_alive", fake_is_alive)
    make_run(pid=DEAD_PID, pid_start=98765)
    assert reconcile(containers=False) == []
    assert asked == [(DEAD_PID, 98765)]


# --- an orphaned run's jobs -----------------------------------------------------------------------


def write_job(run: RunDir, job_id: str, status: JobStatus, **fields: object) -> None:
    state = JobState(job_id=job_id, status=status, **fields)  # type: ignore[arg-type]
    write_record(run.job_dir(job_id) / "state.yml", state)


def job_state(run: RunDir, job_id: str) -> JobState:
    return read_record(moved(run).path / "jobs" / job_id / "state.yml", JobState)


@pytest.mark.parametrize("state", [RunState.pending, RunState.active])
def test_an_orphaned_runs_unfinished_jobs_fail_as_orphaned(
    alive: set[int], state: RunState
) -> None:
    run = make_run(state=state, pid=DEAD_PID)
    started = utcnow() - HOUR
    write_job(run, "build", JobStatus.running, started_at=started)
    write_job(run, "deploy", JobStatus.pending)
    (action,) = reconcile(containers=False)
    assert action.kind == "orphaned"
    for job_id in ("build", "deploy"):
        got = job_state(run, job_id)
        assert got.status == JobStatus.failed
        assert got.error == "orphaned: the runner died"
        assert got.finished_at is not None
    assert job_state(run, "build").started_at == started
    run_end = read_record(moved(run).path / "times.yml", RunTimes).finished_at
    assert job_state(run, "build").finished_at == run_end
    leftovers = [p.name for p in (moved(run).path / "jobs" / "build").iterdir()]
    assert leftovers == ["state.yml"]  # written atomically: no temporary file left


def test_an_orphaned_runs_finished_jobs_keep_their_state(alive: set[int]) -> None:
    run = make_run(pid=DEAD_PID)
    done = utcnow() - HOUR
    write_job(run, "lint", JobStatus.success, finished_at=done, outputs={"n": 1})
    write_job(run, "unit", JobStatus.failed, finished_at=done, error="tests failed")
    write_job(run, "docs", JobStatus.skipped, skip_reason="input 'unit' failed")
    before = {job: job_state(run, job) for job in ("lint", "unit", "docs")}
    reconcile(containers=False)
    assert {job: job_state(run, job) for job in before} == before


def test_an_orphaned_runs_unreadable_job_state_is_left_and_the_rest_still_fail(
    alive: set[int],
) -> None:
    run = make_run(pid=DEAD_PID)
    (run.job_dir("torn") / "state.yml").write_text("status: [unterminated\n")
    run.job_dir("not-started")  # a job directory without a state.yml
    write_job(run, "build", JobStatus.running, started_at=utcnow())
    (action,) = reconcile(containers=False)
    assert action.kind == "orphaned"
    assert where(run) == RunState.failed
    assert job_state(run, "build").status == JobStatus.failed
    torn = moved(run).path / "jobs" / "torn" / "state.yml"
    assert torn.read_text() == "status: [unterminated\n"


def test_a_live_runs_running_job_is_left_running(alive: set[int]) -> None:
    run = make_run(pid=LIVE_PID)
    write_job(run, "build", JobStatus.running, started_at=utcnow())
    assert reconcile(containers=False) == []
    assert job_state(run, "build").status == JobStatus.running


# --- unreadable records: quarantine ---------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: path.write_text("run_id: [unterminated\n"),
        lambda path: path.write_text("just a string\n"),
        lambda path: path.write_bytes(b"\xff\xfe\x00garbage"),
        lambda path: path.unlink(),
    ],
    ids=["bad-yaml", "wrong-shape", "binary", "missing"],
)
def test_a_run_with_unreadable_meta_is_quarantined_into_failed(
    alive: set[int], damage: Callable[[Path], object]
) -> None:
    run = make_run(pid=DEAD_PID)
    damage(run.path / "meta.yml")
    (action,) = reconcile(containers=False)
    assert action.kind == "quarantined"
    assert action.target == f"proj/{run.run_id}"
    assert where(run) == RunState.failed
    got = result(run)
    assert got.reason is not None and got.reason.value == "unreadable"
    assert "meta.yml" in (got.error or "")
    assert reconcile(containers=False) == []  # once only


def test_a_complete_run_with_unreadable_meta_is_quarantined_into_failed(alive: set[int]) -> None:
    run = make_run(state=RunState.complete, pid=DEAD_PID)
    (run.path / "meta.yml").write_text(":::\n")
    (action,) = reconcile(containers=False)
    assert action.kind == "quarantined"
    assert where(run) == RunState.failed
    assert result(run).reason.value == "unreadable"  # type: ignore[union-attr]


def test_a_live_runs_unreadable_meta_does_not_move_it(alive: set[int]) -> None:
    run = make_run(pid=LIVE_PID)
    (run.path / "meta.yml").write_text(":::\n")
    assert reconcile(containers=False) == []
    assert where(run) == RunState.active
    assert not (run.path / "result.yml").exists()


def test_unreadable_run_does_not_stop_the_others_being_reconciled(alive: set[int]) -> None:
    broken = make_run(state=RunState.complete, pid=DEAD_PID)
    (broken.path / "meta.yml").write_text(":::\n")
    orphan = make_run(pid=DEAD_PID)
    kinds = sorted(a.kind for a in reconcile(containers=False))
    assert kinds == ["orphaned", "quarantined"]
    assert where(orphan) == RunState.failed


# --- containers -----------------------------------------------------------------------------------


def ps_argv(fp: FakeProcess) -> list[object]:
    """`docker ps` exactly as reconcile must call it: only this state dir's and this
    host's containers, ids only (podman's `ps` cannot format labels)."""
    return [
        fp.program("docker"),
        "ps",
        "--all",
        "--quiet",
        "--no-trunc",
        "--filter",
        "label=quire.run-id",
        "--filter",
        f"label=quire.store={state_dir()}",
        "--filter",
        f"label=quire.host={socket.gethostname()}",
    ]


def register_listing(
    fp: FakeProcess,
    listing: str,
    *,
    callback: Callable[[object], None] | None = None,
    host: str | None = None,
) -> None:
    """`docker ps` answers the ids of `listing` ("id<TAB>run-id<TAB>repo" lines), and
    `docker container inspect` their labels (as made on `host`, default this one)."""
    rows = [line.split("\t") for line in listing.splitlines() if line]
    fp.register(ps_argv(fp), stdout="".join(f"{row[0]}\n" for row in rows), callback=callback)
    if not rows:
        return
    labels = "".join(
        f"{row[0]}\t"
        + json.dumps(
            {
                "quire.run-id": row[1],
                "quire.repo": row[2],
                "quire.store": str(state_dir()),
                "quire.host": host or socket.gethostname(),
            }
        )
        + "\n"
        for row in rows
    )
    inspect = [fp.program("docker"), "container", "inspect", "--format", fp.any(min=1)]
    fp.register(inspect, stdout=labels)


def cid(n: int) -> str:
    return f"{n:02d}" * 32


def test_containers_of_live_runs_stay_and_the_others_are_removed(
    alive: set[int], fp: FakeProcess
) -> None:
    live = make_run("proj", pid=LIVE_PID)
    dead = make_run("proj", pid=DEAD_PID)
    elsewhere = make_run("other", pid=LIVE_PID)  # another repository's live run
    listing = (
        f"{cid(1)}\t{live.run_id}\tproj\n"
        f"{cid(2)}\t{dead.run_id}\tproj\n"
        f"{cid(3)}\t20200101-000000-000000-abcdef\tgone\n"
        f"{cid(4)}\t{elsewhere.run_id}\tother\n"
    )
    register_listing(fp, listing)
    fp.register([fp.program("docker"), "rm", "--force", cid(2)], stdout=cid(2))
    fp.register([fp.program("docker"), "rm", "--force", cid(3)], stdout=cid(3))
    fp.register(untag_argv(fp, run_tag(dead)))
    actions = reconcile([RunStore("proj")])
    removed = sorted(a.target for a in actions if a.kind == "container-removed")
    assert removed == [cid(2)[:12], cid(3)[:12]]
    assert fp.call_count([fp.program("docker"), "rm", fp.any()]) == 2
    assert [a.kind for a in actions if a.kind == "orphaned"] == ["orphaned"]
    assert where(live) == RunState.active and where(elsewhere) == RunState.active


def test_only_this_state_dirs_containers_are_listed(alive: set[int], fp: FakeProcess) -> None:
    # Registered with the exact filter: any other `docker ps` argv would not be answered.
    register_listing(fp, "")
    assert reconcile() == []
    assert fp.call_count(ps_argv(fp)) == 1
    (call,) = [c for c in fp.calls if "ps" in list(c)]
    assert f"label=quire.store={state_dir()}" in list(call)


def test_only_this_hosts_containers_are_listed(alive: set[int], fp: FakeProcess) -> None:
    register_listing(fp, "")
    assert reconcile() == []
    (call,) = [c for c in fp.calls if "ps" in list(c)]
    assert f"label=quire.host={socket.gethostname()}" in list(call)


def test_another_hosts_container_on_a_shared_engine_and_store_is_never_removed(
    alive: set[int], fp: FakeProcess
) -> None:
    # Host B shares the engine and the state path (a shared disk); its live run's
    # runner.yml names host B, so reconcile here cannot know it is alive. Even an
    # engine that ignored the host filter must not make us remove its container.
    theirs = make_run(pid=DEAD_PID, host="host-b.invalid")
    register_listing(fp, f"{cid(9)}\t{theirs.run_id}\tproj\n", host="host-b.invalid")
    assert reconcile() == []
    assert fp.call_count([fp.program("docker"), "rm", fp.any()]) == 0
    assert where(theirs) == RunState.active


def test_a_container_whose_removal_fails_is_reported_as_a_problem(
    alive: set[int], fp: FakeProcess
) -> None:
    register_listing(fp, f"{cid(5)}\t20200101-000000-000000-abcdef\tgone\n")
    fp.register(
        [fp.program("docker"), "rm", "--force", cid(5)],
        stderr="Error response from daemon: permission denied\n",
        returncode=1,
    )
    (action,) = reconcile()
    assert action.kind == "problem"
    assert "permission denied" in action.detail


def test_a_container_of_a_run_that_starts_while_reconciling_is_kept(
    alive: set[int], fp: FakeProcess
) -> None:
    # The run appears (with its container) after reconcile began: a run
    # listed before `docker ps` could not know it, so must not judge it.
    newcomer = make_run(pid=LIVE_PID)
    hidden = newcomer.store.root / "hidden"
    os.rename(newcomer.path, hidden)

    def run_appears(process: object) -> None:
        os.rename(hidden, newcomer.path)

    register_listing(fp, f"{cid(6)}\t{newcomer.run_id}\tproj\n", callback=run_appears)
    fp.register([fp.program("docker"), "rm", "--force", cid(6)])
    assert reconcile() == []
    assert fp.call_count([fp.program("docker"), "rm", fp.any()]) == 0


def test_host_runs_only_reconcile_records_without_calling_docker(
    alive: set[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "docker-calls"
    shim = write_shim(tmp_path / "rec-bin", "docker", f'echo "$@" >> {calls}\nexit 1\n')
    monkeypatch.setenv("QUIRE_DOCKER", str(shim))
    make_repo(tmp_path / "proj", {".quire/ci.py": QUICK})
    store = store_for(tmp_path / "proj")
    orphan = make_run(store.repo, pid=DEAD_PID)
    result_ = CliRunner().invoke(app, ["ci", "run", "--repo", str(tmp_path / "proj")])
    assert result_.exit_code == 0, result_.output
    assert f"reconcile: orphaned: {store.repo}/{orphan.run_id}" in result_.stdout
    assert where(orphan) == RunState.failed
    assert not calls.exists()


QUICK = """
from quire.ci import job

@job(inputs=["quire/push"])
def quick(rt):
    rt.sh(["true"], check=True)
"""


# --- the per-run image tag of an orphaned docker run ----------------------------------------------


def untag_argv(fp: FakeProcess, tag: str) -> list[object]:
    return [fp.program("docker"), "image", "rm", "--no-prune", tag]


def run_tag(run: RunDir) -> str:
    return f"quire-ci/{run.store.repo}:{run.run_id}"


def test_an_orphaned_docker_runs_image_tag_is_removed_after_its_container(
    alive: set[int], fp: FakeProcess
) -> None:
    orphan = make_run(pid=DEAD_PID)
    write_record(
        orphan.path / "container.yml", ContainerInfo(image_tag=run_tag(orphan), container_id=cid(8))
    )
    register_listing(fp, f"{cid(8)}\t{orphan.run_id}\tproj\n")
    fp.register([fp.program("docker"), "rm", "--force", cid(8)], stdout=cid(8))
    fp.register(untag_argv(fp, run_tag(orphan)), stdout=f"Untagged: {run_tag(orphan)}\n")
    actions = reconcile()
    assert [a.kind for a in actions] == ["orphaned", "container-removed", "image-untagged"]
    assert actions[-1].target == run_tag(orphan)
    assert fp.call_count(untag_argv(fp, run_tag(orphan))) == 1
    subcommands = [list(call)[1] for call in fp.calls]
    assert subcommands == ["ps", "container", "rm", "image"]  # untagged once its container is gone


def test_the_tag_recorded_in_container_yml_is_the_one_removed(
    alive: set[int], fp: FakeProcess
) -> None:
    orphan = make_run(pid=DEAD_PID)
    recorded = "quire-ci/renamed:some-other-tag"
    write_record(orphan.path / "container.yml", ContainerInfo(image_tag=recorded))
    register_listing(fp, "")
    fp.register(untag_argv(fp, recorded))
    (_, untagged) = reconcile()
    assert untagged == Action("image-untagged", recorded, f"run {orphan.run_id} is over")


def test_an_orphaned_docker_run_that_never_built_untags_the_tag_named_for_it(
    alive: set[int], fp: FakeProcess
) -> None:
    orphan = make_run(pid=DEAD_PID)  # no container.yml: the runner died before the build
    register_listing(fp, "")
    fp.register(
        untag_argv(fp, run_tag(orphan)),
        stderr=f"Error response from daemon: No such image: {run_tag(orphan)}\n",
        returncode=1,
    )
    actions = reconcile()
    assert actions == [Action("orphaned", f"proj/{orphan.run_id}", "its runner is gone")]
    assert fp.call_count(untag_argv(fp, run_tag(orphan))) == 1


def test_podmans_image_not_known_is_no_news_either(alive: set[int], fp: FakeProcess) -> None:
    orphan = make_run(pid=DEAD_PID)
    register_listing(fp, "")
    fp.register(
        untag_argv(fp, run_tag(orphan)),
        stderr=f"Error: {run_tag(orphan)}: image not known\n",
        returncode=1,
    )
    assert [a.kind for a in reconcile()] == ["orphaned"]


def test_an_untag_that_fails_is_reported_as_a_problem(alive: set[int], fp: FakeProcess) -> None:
    orphan = make_run(pid=DEAD_PID)
    register_listing(fp, "")
    fp.register(
        untag_argv(fp, run_tag(orphan)),
        stderr="Error response from daemon: permission denied\n",
        returncode=1,
    )
    orphaned, problem = reconcile()
    assert orphaned.kind == "orphaned"
    assert (problem.kind, problem.target) == ("problem", run_tag(orphan))
    assert "permission denied" in problem.detail
    assert where(orphan) == RunState.failed


def test_an_orphaned_host_run_has_no_image_to_untag(alive: set[int], fp: FakeProcess) -> None:
    make_run(pid=DEAD_PID, executor=ExecutorKind.host)
    register_listing(fp, "")
    assert [a.kind for a in reconcile()] == ["orphaned"]
    assert fp.call_count([fp.program("docker"), "image", fp.any()]) == 0


def test_a_quarantined_in_flight_docker_run_untags_its_recorded_image(
    alive: set[int], fp: FakeProcess
) -> None:
    broken = make_run(pid=DEAD_PID)
    write_record(broken.path / "container.yml", ContainerInfo(image_tag=run_tag(broken)))
    (broken.path / "meta.yml").write_text(":::\n")
    register_listing(fp, "")
    fp.register(untag_argv(fp, run_tag(broken)))
    assert [a.kind for a in reconcile()] == ["quarantined", "image-untagged"]


def test_a_quarantined_finished_run_keeps_its_jobs_and_image(
    alive: set[int], fp: FakeProcess
) -> None:
    # Its runner finished (and tore down) long ago: only its unreadable records are news.
    broken = make_run(state=RunState.complete, pid=DEAD_PID)
    write_record(broken.path / "container.yml", ContainerInfo(image_tag=run_tag(broken)))
    write_job(broken, "build", JobStatus.running, started_at=utcnow())
    (broken.path / "meta.yml").write_text(":::\n")
    register_listing(fp, "")
    assert [a.kind for a in reconcile()] == ["quarantined"]
    assert fp.call_count([fp.program("docker"), "image", fp.any()]) == 0
    assert job_state(broken, "build").status == JobStatus.running


def test_a_finished_docker_run_is_not_untagged_again(alive: set[int], fp: FakeProcess) -> None:
    make_run(state=RunState.complete, pid=DEAD_PID)
    make_run(state=RunState.failed, pid=DEAD_PID)
    register_listing(fp, "")
    assert reconcile() == []
    assert fp.call_count([fp.program("docker"), "image", fp.any()]) == 0


def test_reconcile_without_containers_never_calls_docker_to_untag(
    alive: set[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "docker-calls"
    shim = write_shim(tmp_path / "rec-bin", "docker", f'echo "$@" >> {calls}\nexit 1\n')
    monkeypatch.setenv("QUIRE_DOCKER", str(shim))
    orphan = make_run(pid=DEAD_PID)
    assert [a.kind for a in reconcile(containers=False)] == ["orphaned"]
    assert where(orphan) == RunState.failed
    assert not calls.exists()


# --- the CLI --------------------------------------------------------------------------------------


def test_cli_reconcile_prints_what_it_did(alive: set[int], fp: FakeProcess) -> None:
    orphan = make_run(pid=DEAD_PID)
    register_listing(fp, f"{cid(7)}\t{orphan.run_id}\tproj\n")
    fp.register([fp.program("docker"), "rm", "--force", cid(7)])
    fp.register(untag_argv(fp, run_tag(orphan)))
    done = CliRunner().invoke(app, ["ci", "reconcile"])
    assert done.exit_code == 0, done.output
    assert f"orphaned: proj/{orphan.run_id} (its runner is gone)" in done.stdout
    assert f"container-removed: {cid(7)[:12]}" in done.stdout
    assert f"image-untagged: {run_tag(orphan)} (run {orphan.run_id} is over)" in done.stdout


def test_cli_reconcile_says_nothing_to_reconcile(alive: set[int], fp: FakeProcess) -> None:
    make_run(pid=LIVE_PID)
    register_listing(fp, "")
    done = CliRunner().invoke(app, ["ci", "reconcile"])
    assert done.exit_code == 0
    assert done.stdout.strip() == "nothing to reconcile"


def test_cli_reconcile_without_docker_still_fixes_records_and_says_so(
    alive: set[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shim = write_shim(
        tmp_path / "down-bin",
        "docker",
        'echo "Cannot connect to the Docker daemon at unix:///x.sock" >&2\nexit 1\n',
    )
    monkeypatch.setenv("QUIRE_DOCKER", str(shim))
    orphan = make_run(pid=DEAD_PID)
    done = CliRunner().invoke(app, ["ci", "reconcile"])
    assert done.exit_code == 0, done.output
    assert "containers not checked" in done.stderr
    assert f"orphaned: proj/{orphan.run_id}" in done.stdout
    assert where(orphan) == RunState.failed


# --- a full disk ---------------------------------------------------------------------------------


def test_on_a_full_disk_an_orphan_is_marked_failed_and_reconcile_exits_3_until_space_returns(
    alive: set[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    monkeypatch.setenv("QUIRE_DOCKER", str(write_shim(tmp_path / "bin", "docker", "exit 1\n")))
    orphan = make_run(pid=DEAD_PID)
    real = reconcile_module.write_record

    def full(path: Path, record: object, *, durable: bool = True) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(reconcile_module, "write_record", full)
    for _ in range(2):  # as often as it is asked, while there is no space
        done = CliRunner().invoke(app, ["ci", "reconcile"])
        assert done.exit_code == 3, done.output
        assert f"problem: proj/{orphan.run_id}" in done.stdout
        assert "No space left on device" in done.stdout
        assert where(orphan) == RunState.failed  # no reader takes it for a running run

    monkeypatch.setattr(reconcile_module, "write_record", real)
    done = CliRunner().invoke(app, ["ci", "reconcile"])
    assert done.exit_code == 0, done.output
    assert f"completed: proj/{orphan.run_id}" in done.stdout
    got = result(orphan)
    assert got.exit_code == 3 and got.error is not None and "could not be written" in got.error
    assert not orphan.workspace.exists()
    assert CliRunner().invoke(app, ["ci", "reconcile"]).stdout.strip() == "nothing to reconcile"


def test_every_command_on_a_full_disk_exits_3_with_the_disk_full_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from quire.ci.store import runs

    repo = tmp_path / "proj"
    ci = 'from quire.ci import job\n\n@job(inputs=["quire/push"])\ndef a(rt):\n    pass\n'
    make_repo(repo, {".quire/ci.py": ci})

    def full(path: Path, record: object, *, durable: bool = True) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(runs, "write_record", full)
    done = CliRunner().invoke(app, ["ci", "run", "--repo", str(repo)])
    assert done.exit_code == 3, done.output
    assert "No space left on device" in done.stderr and "the disk is full" in done.stderr
    assert "internal error" not in done.stderr


# --- concurrent reconcilers -----------------------------------------------------------------------


def test_a_reconcile_that_loses_the_rename_race_is_silent(
    alive: set[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run(pid=DEAD_PID)
    original = RunDir.transition
    rival: list[list[Action]] = []
    raced: list[bool] = []

    def rival_first(self: RunDir, target: RunState) -> None:
        if not raced:  # another reconcile moves the run just before our rename
            raced.append(True)
            rival.append(reconcile(containers=False))
        original(self, target)

    monkeypatch.setattr(RunDir, "transition", rival_first)
    assert reconcile(containers=False) == []
    assert [a.kind for a in rival[0]] == ["orphaned"]
    assert where(run) == RunState.failed
    assert result(run).reason.value == "orphaned"  # type: ignore[union-attr]


def test_concurrent_reconciles_report_each_orphan_once_and_raise_nothing(
    alive: set[int],
) -> None:
    runs = [make_run(pid=DEAD_PID) for _ in range(40)]
    found: list[list[Action]] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            found.append(reconcile(containers=False))
        except BaseException as exc:  # pragma: no cover - the failure we look for
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    actions = [a for batch in found for a in batch]
    assert [a for a in actions if a.kind != "orphaned"] == []
    assert sorted(a.target for a in actions) == sorted(f"proj/{r.run_id}" for r in runs)
    assert all(where(r) == RunState.failed for r in runs)
    assert all(result(r).reason.value == "orphaned" for r in runs)  # type: ignore[union-attr]
