"""Cleaning up after runners that died: orphaned runs, leftover containers, broken records.

- A run in pending/ or active/ whose runner (pid + start time, from
  runner.yml, on this host) is gone moves to failed/ with reason
  `orphaned`, and its workspace is removed. A pid that is alive but
  started at another time than runner.yml says is a reused pid: gone.
- A run directory whose meta.yml cannot be read (outside failed/) is
  quarantined into failed/ with reason `unreadable`.
- The jobs such a run (pending/active, runner gone) left `running` or
  `pending` fail with "orphaned: the runner died".
- A run whose records cannot be written (a full disk) is still moved to
  failed/ (a rename needs no space), reported as a problem; once there is
  space, a later reconcile writes the result of a failed run that has none.
- A container labelled `quire.run-id`, of this state directory
  (`quire.store`) and this host (`quire.host`), whose run is not owned by a
  live runner is removed; then, for the docker runs failed above, the run's
  image tag `quire-ci/<repo>:<run-id>` (their teardown never ran).

Nothing owned by a live quire process is touched. Runs recorded by another
host are left alone: their pids mean nothing here.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from quire.ci.run import workspace as workspaces
from quire.ci.store.liveness import is_alive
from quire.ci.store.records import (
    ContainerInfo,
    EndReason,
    ExecutorKind,
    HostProcesses,
    JobState,
    JobStatus,
    RecordUnreadable,
    RunMeta,
    RunnerInfo,
    RunResult,
    RunTimes,
    read_record,
    utcnow,
    write_record,
)
from quire.ci.store.runs import RunDir, RunState, RunStore
from quire.errors import ExitCode, QuireError
from quire.paths import state_dir

if TYPE_CHECKING:
    from quire.tools.docker import ContainerListing, LabelledContainer


@dataclass(frozen=True)
class Action:
    """One thing reconcile did, for the report."""

    # orphaned | quarantined | completed | processes-killed | container-removed |
    # image-untagged | problem
    kind: str
    target: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.target} ({self.detail})"


def all_stores() -> list[RunStore]:
    """A store for every repository with runs under the state directory."""
    root = state_dir() / "runs"
    if not root.is_dir():
        return []
    return [RunStore(entry.name) for entry in sorted(root.iterdir()) if entry.is_dir()]


def owner_alive(run: RunDir) -> bool:
    """Whether a live process on this host owns `run` (unknown owners count as alive)."""
    try:
        runner = read_record(run.path / "runner.yml", RunnerInfo)
    except RecordUnreadable:
        # Created a moment ago and runner.yml not written yet, or never will be:
        # only a run whose meta is old enough is treated as abandoned.
        return _young(run)
    if runner.host != socket.gethostname():
        return True
    return is_alive(runner.pid, runner.pid_start)


def _young(run: RunDir, seconds: float = 60.0) -> bool:
    try:
        meta = read_record(run.path / "meta.yml", RunMeta)
    except RecordUnreadable:
        return False
    return (utcnow() - meta.pushed_at).total_seconds() < seconds


ORPHANED_JOB_ERROR = "orphaned: the runner died"
_UNFINISHED_JOBS = (JobStatus.running, JobStatus.pending)


@dataclass
class _Reconciled:
    """What one store's pass did, and the runs it failed whose runner was gone."""

    actions: list[Action] = field(default_factory=list)
    abandoned: list[RunDir] = field(default_factory=list)


def reconcile_store(store: RunStore, *, in_flight_only: bool = False) -> list[Action]:
    """Fix the records of one repository's runs (only pending/active ones if asked:
    the cheap pass before every run does not re-read every finished run)."""
    return _reconcile_runs(store, in_flight_only=in_flight_only).actions


def _reconcile_runs(store: RunStore, *, in_flight_only: bool) -> _Reconciled:
    done = _Reconciled()
    for run in list(store.runs()):
        if run.state == RunState.failed:
            if not (run.path / "result.yml").exists() and not owner_alive(run):
                done.actions += _write_missing_result(run)
            continue
        if in_flight_only and run.state == RunState.complete:
            continue
        in_flight = run.state in (RunState.pending, RunState.active)
        if in_flight and owner_alive(run):
            continue  # a live runner's run is its own business, whatever its records say
        try:
            read_record(run.path / "meta.yml", RunMeta)
        except RecordUnreadable as exc:
            reason, detail, kind = EndReason.unreadable, f"records unreadable: {exc}", "quarantined"
        else:
            if not in_flight:
                continue
            reason, detail, kind = EndReason.orphaned, "its runner is gone", "orphaned"
        actions = _finish(run, reason, detail, kind, abandoned=in_flight)
        done.actions += actions
        if in_flight and any(action.kind == kind for action in actions):
            done.abandoned.append(run)
    return done


def _finish(
    run: RunDir, reason: EndReason, detail: str, kind: str, *, abandoned: bool
) -> list[Action]:
    """Move `run` to failed/ with `reason`; an `abandoned` run's unfinished jobs fail too."""
    label = f"{run.store.repo}/{run.run_id}"
    ended = _end_recorded_processes(run) if abandoned else []
    try:
        _write_end(run, reason, detail, fail_jobs=abandoned)
        if reason == EndReason.unreadable:
            run.quarantine()
        else:
            run.transition(RunState.failed)
    except FileNotFoundError:
        return []  # another reconcile (or the runner itself) got there first
    except OSError as exc:
        return [*ended, _mark_failed_where_it_lies(run, label, exc)]
    # Only now: a command of the dead runner may have been working in it.
    workspaces.remove(run.workspace)
    return [*ended, Action(kind, label, detail)]


# The result reconcile writes for a run that was marked failed without one.
UNWRITTEN_END = "the run's end could not be written (a full disk?); its result was written later"


def _write_end(run: RunDir, reason: EndReason, detail: str, *, fail_jobs: bool) -> None:
    """The end a runner that is gone never wrote: times, (its unfinished jobs failed),
    and the result. Raises `OSError`."""
    times_path = run.path / "times.yml"
    try:
        times = read_record(times_path, RunTimes)
    except RecordUnreadable:
        times = RunTimes(started_at=utcnow())
    times.finished_at = times.finished_at or utcnow()
    write_record(times_path, times)
    if fail_jobs:
        _fail_unfinished_jobs(run, times.finished_at)
    write_record(
        run.path / "result.yml",
        RunResult(reason=reason, error=detail, exit_code=ExitCode.environment),
    )


def _mark_failed_where_it_lies(run: RunDir, label: str, exc: OSError) -> Action:
    """Its records could not be written: move it to failed/ all the same (a rename needs
    no space), so that no reader takes it for a running run; the result comes later."""
    try:
        if run.state != RunState.failed:
            run.quarantine()
    except (OSError, QuireError) as moving:
        if run.state != RunState.failed:
            return Action("problem", label, f"could not mark it failed: {exc}; {moving}")
    return Action(
        "problem",
        label,
        f"marked failed, but its result could not be written: {exc}; "
        "run `quire ci reconcile` again once there is space",
    )


def _write_missing_result(run: RunDir) -> list[Action]:
    """A run marked failed on a full disk gets its times and result once there is space."""
    label = f"{run.store.repo}/{run.run_id}"
    try:
        _write_end(run, EndReason.error, UNWRITTEN_END, fail_jobs=True)
    except FileNotFoundError:
        return []  # pruned meanwhile
    except OSError as exc:
        return [
            Action(
                "problem",
                label,
                f"its result could not be written: {exc}; "
                "run `quire ci reconcile` again once there is space",
            )
        ]
    workspaces.remove(run.workspace)
    return [Action("completed", label, UNWRITTEN_END)]


def _end_recorded_processes(run: RunDir) -> list[Action]:
    """Kill the host processes a dead runner recorded (processes.yml) that are still the
    same processes, with their process groups."""
    from quire.tools import proctree

    try:
        recorded = read_record(run.path / "processes.yml", HostProcesses)
    except RecordUnreadable:
        return []
    procs = [proctree.Proc(p.pid, p.start) for p in recorded.processes]
    killed = proctree.kill_recorded(procs)
    if not killed:
        return []
    pids = ", ".join(str(proc.pid) for proc in killed)
    return [Action("processes-killed", f"{run.store.repo}/{run.run_id}", f"pids {pids}")]


def _fail_unfinished_jobs(run: RunDir, finished_at: datetime) -> None:
    """Jobs left running (or pending) by a dead runner fail: nobody will finish them.

    A job whose state.yml cannot be read is left as it is.
    """
    jobs = run.path / "jobs"
    if not jobs.is_dir():
        return
    for entry in sorted(jobs.iterdir()):
        path = entry / "state.yml"
        try:
            state = read_record(path, JobState)
        except RecordUnreadable:
            continue
        if state.status not in _UNFINISHED_JOBS:
            continue
        state.status = JobStatus.failed
        state.error = ORPHANED_JOB_ERROR
        state.finished_at = state.finished_at or finished_at
        write_record(path, state)


def live_run_ids(stores: list[RunStore]) -> set[str]:
    """Ids of runs owned by a live runner (the containers of these must stay)."""
    alive = set()
    for store in stores:
        for run in store.runs():
            if run.state in (RunState.pending, RunState.active) and owner_alive(run):
                alive.add(run.run_id)
    return alive


def begin_listing() -> ContainerListing:
    """Start listing this host's quire containers of this state directory (`docker ps`
    runs in the background until `result()` is asked for).

    Another host sharing the engine (even with the same state path, on a shared
    disk) judges its own: its live runs are not in our records as live.
    """
    from quire.tools import docker  # host-only users never pay for it

    return docker.ContainerListing(str(state_dir()), socket.gethostname())


def list_containers() -> list[LabelledContainer]:
    """This host's quire containers of this state directory; raises `DockerUnavailable`."""
    return begin_listing().result()


def reconcile_containers(
    stores: list[RunStore], listed: list[LabelledContainer] | None = None
) -> list[Action]:
    """Remove containers labelled quire.run-id whose run no live runner owns.

    The containers are listed (or were, `listed`) BEFORE the runs are read:
    a run that starts in between is then not among the containers, whereas
    listing the runs first would miss it and remove its fresh container.
    """
    from quire.tools import docker

    if listed is None:
        listed = list_containers()
    alive = live_run_ids(stores)
    actions = []
    for container in listed:
        if container.run_id in alive:
            continue
        problems = docker.teardown(container.container_id, None)
        detail = f"run {container.run_id} of {container.repo or '?'} is not active"
        if problems:
            actions.append(Action("problem", container.container_id[:12], "; ".join(problems)))
        else:
            actions.append(Action("container-removed", container.container_id[:12], detail))
    return actions


def image_tag(run: RunDir) -> str | None:
    """The per-run image tag of a docker run (None for a host run, or if unknown).

    container.yml names the tag the run built; without it (the runner died
    before the build) the tag is the one the docker executor would have used.
    """
    try:
        return read_record(run.path / "container.yml", ContainerInfo).image_tag
    except RecordUnreadable:
        pass
    try:
        meta = read_record(run.path / "meta.yml", RunMeta)
    except RecordUnreadable:
        return None
    if meta.executor != ExecutorKind.docker:
        return None
    from quire.tools.docker import image_repository

    return f"{image_repository(run.store.repo)}:{run.run_id}"


def remove_image_tags(runs: list[RunDir]) -> list[Action]:
    """Untag the images of docker runs whose runner died before its teardown could.

    An image already gone is no news; any other failure is a `problem`.
    """
    from quire.tools import docker

    actions = []
    for run in runs:
        tag = image_tag(run)
        if tag is None:
            continue
        try:
            removed = docker.remove_tag(tag)
        except QuireError as exc:
            actions.append(Action("problem", tag, f"could not untag it: {exc}"))
            continue
        if removed:
            actions.append(Action("image-untagged", tag, f"run {run.run_id} is over"))
    return actions


def reconcile(
    stores: list[RunStore] | None = None,
    *,
    containers: bool = True,
    in_flight_only: bool = False,
    listing: ContainerListing | None = None,
) -> list[Action]:
    """Reconcile records (of `stores`, default all) and, if asked, docker containers
    and the image tags of the docker runs it failed.

    Container decisions always look at every repository's runs: a container
    of another repository's live run must stay. Without `containers`, docker
    is never called (and an orphaned run's image tag stays). `listing`, begun
    earlier (`begin_listing`), is used instead of listing the containers now.
    """
    # Listed first: docker being unavailable raises before any record changes
    # (so the caller can retry without containers and lose no report), and
    # every listed container's run already exists when the runs are read.
    listed = None
    if containers:
        listed = (listing or begin_listing()).result()
    actions: list[Action] = []
    abandoned: list[RunDir] = []
    for store in all_stores() if stores is None else stores:
        done = _reconcile_runs(store, in_flight_only=in_flight_only)
        actions += done.actions
        abandoned += done.abandoned
    if listed is not None:
        actions += reconcile_containers(all_stores(), listed)
        # After the containers: an image a container still uses may refuse to go.
        actions += remove_image_tags(abandoned)
    return actions
