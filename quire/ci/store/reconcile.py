"""Cleaning up after runners that died: orphaned runs, leftover containers, broken records.

- A run in pending/ or active/ whose runner (pid + start time, from
  runner.yml, on this host) is gone moves to failed/ with reason
  `orphaned`, and its workspace is removed.
- A run directory whose meta.yml cannot be read (outside failed/) is
  quarantined into failed/ with reason `unreadable`.
- A container labelled `quire.run-id` whose run is not owned by a live
  runner is removed.

Nothing owned by a live quire process is touched. Runs recorded by another
host are left alone: their pids mean nothing here.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from quire.ci.run import workspace as workspaces
from quire.ci.store.liveness import is_alive
from quire.ci.store.records import (
    EndReason,
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
from quire.paths import state_dir

if TYPE_CHECKING:
    from quire.tools.docker import LabelledContainer


@dataclass(frozen=True)
class Action:
    """One thing reconcile did, for the report."""

    kind: str  # orphaned | quarantined | container-removed | problem
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


def reconcile_store(store: RunStore, *, in_flight_only: bool = False) -> list[Action]:
    """Fix the records of one repository's runs (only pending/active ones if asked:
    the cheap pass before every run does not re-read every finished run)."""
    actions: list[Action] = []
    for run in list(store.runs()):
        if run.state == RunState.failed:
            continue
        if in_flight_only and run.state == RunState.complete:
            continue
        in_flight = run.state in (RunState.pending, RunState.active)
        if in_flight and owner_alive(run):
            continue  # a live runner's run is its own business, whatever its records say
        try:
            read_record(run.path / "meta.yml", RunMeta)
        except RecordUnreadable as exc:
            actions += _finish(
                run, EndReason.unreadable, f"records unreadable: {exc}", "quarantined"
            )
            continue
        if in_flight:
            actions += _finish(run, EndReason.orphaned, "its runner is gone", "orphaned")
    return actions


def _finish(run: RunDir, reason: EndReason, detail: str, kind: str) -> list[Action]:
    label = f"{run.store.repo}/{run.run_id}"
    try:
        times_path = run.path / "times.yml"
        try:
            times = read_record(times_path, RunTimes)
        except RecordUnreadable:
            times = RunTimes(started_at=utcnow())
        times.finished_at = times.finished_at or utcnow()
        write_record(times_path, times)
        write_record(run.path / "result.yml", RunResult(reason=reason, error=detail, exit_code=1))
        if reason == EndReason.unreadable:
            run.quarantine()
        else:
            run.transition(RunState.failed)
    except FileNotFoundError:
        return []  # another reconcile (or the runner itself) got there first
    except OSError as exc:
        return [Action("problem", label, f"could not move it to failed/: {exc}")]
    workspaces.remove(run.workspace)
    return [Action(kind, label, detail)]


def live_run_ids(stores: list[RunStore]) -> set[str]:
    """Ids of runs owned by a live runner (the containers of these must stay)."""
    alive = set()
    for store in stores:
        for run in store.runs():
            if run.state in (RunState.pending, RunState.active) and owner_alive(run):
                alive.add(run.run_id)
    return alive


def list_containers() -> list[LabelledContainer]:
    """This state directory's quire containers; raises `DockerUnavailable`."""
    from quire.tools import docker  # host-only users never pay for it

    return docker.labelled_containers(str(state_dir()))


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


def reconcile(
    stores: list[RunStore] | None = None,
    *,
    containers: bool = True,
    in_flight_only: bool = False,
) -> list[Action]:
    """Reconcile records (of `stores`, default all) and, if asked, docker containers.

    Container decisions always look at every repository's runs: a container
    of another repository's live run must stay.
    """
    # Listed first: docker being unavailable raises before any record changes
    # (so the caller can retry without containers and lose no report), and
    # every listed container's run already exists when the runs are read.
    listed = list_containers() if containers else None
    actions: list[Action] = []
    for store in all_stores() if stores is None else stores:
        actions += reconcile_store(store, in_flight_only=in_flight_only)
    if listed is not None:
        actions += reconcile_containers(all_stores(), listed)
    return actions
