"""The run store: one directory per run, whose parent directory is its state.

    $QUIRE_STATE_DIR/runs/<repo>/
      latest -> <state>/<run-id>        symlink, replaced atomically
      pending|active|complete|failed|cancelled/<run-id>/
        meta.yml runner.yml times.yml result.yml container.yml log.jsonl
        jobs/<job-id>/state.yml, log.jsonl
      .cancel/<run-id>.yml              a cancel asked for (who, when), until the run ends

A transition is one `rename` between state directories, checked against
`ALLOWED`. Run ids sort by creation time and carry a random suffix, so
concurrent runs never collide.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from quire.ci.store.records import (
    CancelRequest,
    JobState,
    JobStatus,
    RecordUnreadable,
    RunMeta,
    RunnerInfo,
    RunResult,
    RunTimes,
    read_record,
    write_record,
)
from quire.ci.vocabulary import FINISHED, RunState
from quire.errors import EnvironmentProblem, QuireError, RunNotFound
from quire.paths import cache_dir, state_dir

if TYPE_CHECKING:
    from quire.tools.git import Repository

__all__ = ["FINISHED", "RunState"]


ALLOWED: dict[RunState, frozenset[RunState]] = {
    RunState.pending: frozenset({RunState.active, RunState.failed, RunState.cancelled}),
    RunState.active: frozenset({RunState.complete, RunState.failed, RunState.cancelled}),
    RunState.complete: frozenset(),
    RunState.failed: frozenset(),
    RunState.cancelled: frozenset(),
}


class InvalidTransition(QuireError):
    """A run was asked to move between states the table does not allow."""


class LatestLinkFailed(EnvironmentProblem):
    """The store's `latest` link cannot be created or replaced."""


def private_dir(path: Path) -> None:
    """Create `path` and its missing parents, each readable by the user alone (0700):
    the store holds everything the jobs printed."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)


def make_private(state: Path) -> None:
    """The state directory is the user's: create it 0700, or close one an older
    version left open to others."""
    private_dir(state)
    mode = state.stat().st_mode
    if mode & 0o077 and state.stat().st_uid == os.geteuid():
        state.chmod(mode & 0o700)


def new_run_id(now: datetime | None = None) -> str:
    """A time-sortable id: 20261124-161905-123456-3fa9c1 (UTC, microseconds, random)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return now.strftime("%Y%m%d-%H%M%S-%f-") + secrets.token_hex(3)


@dataclass
class RunDir:
    """One run's directory in the store."""

    store: RunStore
    run_id: str
    state: RunState

    @property
    def path(self) -> Path:
        return self.store.root / self.state.value / self.run_id

    @property
    def workspace(self) -> Path:
        return self.store.workspace_root / self.run_id / "workspace"

    def job_dir(self, job_id: str) -> Path:
        path = self.path / "jobs" / job_id
        private_dir(path)
        return path

    def transition(self, target: RunState) -> None:
        """Move the run to `target` with one rename; raises `InvalidTransition`."""
        if target not in ALLOWED[self.state]:
            raise InvalidTransition(
                f"run {self.run_id} cannot go from {self.state.value} to {target.value}"
            )
        self._rename_to(target)

    def quarantine(self) -> None:
        """Move a run whose records cannot be read into failed/, from any state.

        Outside the transition table on purpose: no runner makes this move,
        only reconcile, for a run nobody can vouch for any more.
        """
        if self.state != RunState.failed:
            self._rename_to(RunState.failed)

    def _rename_to(self, target: RunState) -> None:
        destination = self.store.root / target.value / self.run_id
        private_dir(destination.parent)
        os.rename(self.path, destination)
        self.state = target
        self.store.update_latest(self)

    def write_times(self, times: RunTimes) -> None:
        write_record(self.path / "times.yml", times)

    def write_result(self, result: RunResult) -> None:
        write_record(self.path / "result.yml", result)

    def meta(self) -> RunMeta:
        return read_record(self.path / "meta.yml", RunMeta)

    def times(self) -> RunTimes:
        return read_record(self.path / "times.yml", RunTimes)

    def result(self) -> RunResult | None:
        path = self.path / "result.yml"
        return read_record(path, RunResult) if path.exists() else None

    def job_states(self) -> list[JobState]:
        """Job states in the order the jobs started; a job whose state.yml cannot be read
        is `unreadable`, with the reason as its error (never silently left out)."""
        jobs = self.path / "jobs"
        if not jobs.is_dir():
            return []
        states = []
        for entry in jobs.iterdir():
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            try:
                states.append(read_record(entry / "state.yml", JobState))
            except RecordUnreadable as exc:
                unreadable = JobState(
                    job_id=entry.name, status=JobStatus.unreadable, error=str(exc)
                )
                states.append(unreadable)
        return sorted(states, key=lambda s: (s.started_at is None, s.started_at or 0))


class RunStore:
    """The runs of one repository."""

    def __init__(self, repo: str, *, root: Path | None = None, cache: Path | None = None) -> None:
        self.repo = repo
        self.root = root or state_dir() / "runs" / repo
        self.workspace_root = cache or cache_dir() / "runs" / repo

    @property
    def label(self) -> str:
        """The `quire.store` label of this store's containers: its state directory."""
        return str(self.root.parent.parent)

    def create(
        self,
        meta_for: Callable[[str], RunMeta],
        runner: RunnerInfo | None = None,
        *,
        run_id: str | None = None,
    ) -> RunDir:
        """A new run in pending/, with meta.yml (and runner.yml) written before anyone
        can see it, so reconcile never meets a run whose owner it cannot check.

        `run_id` is one made earlier by `new_run_id` (a queue hands it out so that
        it can name the run before it starts); by default a new one.
        """
        pending = self.root / RunState.pending.value
        if not self.root.is_dir():  # a new repository: its state dir may be new too
            make_private(Path(self.label))
        # Every state's directory exists before a run does: on a full disk, marking a run
        # failed is then a rename that needs no space.
        for state in RunState:
            private_dir(self.root / state.value)
        run_id = run_id or new_run_id()
        # Build it under a dot-name, then rename: a reader never sees a run without meta.
        staging = pending / f".{run_id}.new"
        private_dir(staging / "jobs")
        write_record(staging / "meta.yml", meta_for(run_id))
        if runner is not None:
            write_record(staging / "runner.yml", runner)
        os.rename(staging, pending / run_id)
        run = RunDir(self, run_id, RunState.pending)
        self.update_latest(run)
        return run

    def update_latest(self, run: RunDir) -> None:
        """Point `latest` at `run` unless a newer run that still exists holds it.

        Whatever else sits at `latest` (a directory, a file, a link to no run)
        is replaced. Raises `LatestLinkFailed` if that cannot be done; no
        temporary link is ever left behind.
        """
        link = self.root / "latest"
        current = _link_run_id(link)
        if current is not None and current > run.run_id and self._exists(current):
            return
        tmp = self.root / f".latest.{os.getpid()}.{secrets.token_hex(3)}"
        try:
            os.symlink(f"{run.state.value}/{run.run_id}", tmp)
            _replace_link(tmp, link)
        except OSError as exc:
            raise LatestLinkFailed(
                f"cannot point {link} at run {run.run_id}: {exc.strerror or exc}; "
                f"{link} should be a symlink quire manages: remove it and run again"
            ) from exc
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()  # gone already unless something above failed

    def request_cancel(self, run_id: str, by: str) -> CancelRequest:
        """Record that `by` asked run `run_id` to stop (its record may not exist yet)."""
        request = CancelRequest(by=by, at=datetime.now(UTC))
        private_dir(self.root / ".cancel")
        write_record(self.root / ".cancel" / f"{run_id}.yml", request)
        return request

    def cancel_request(self, run_id: str) -> CancelRequest | None:
        """Who asked run `run_id` to stop, if anyone did (an unreadable request counts as
        none: the run is then recorded as interrupted, which it was)."""
        path = self.root / ".cancel" / f"{run_id}.yml"
        if not path.exists():
            return None
        try:
            return read_record(path, CancelRequest)
        except RecordUnreadable:
            return None

    def forget_cancel(self, run_id: str) -> None:
        """The run has ended: its cancel request is in its result now."""
        with contextlib.suppress(OSError):
            (self.root / ".cancel" / f"{run_id}.yml").unlink()

    def _exists(self, run_id: str) -> bool:
        return any((self.root / s.value / run_id).is_dir() for s in RunState)

    def runs(self) -> Iterator[RunDir]:
        """Every run of this repository, newest first."""
        found: list[RunDir] = []
        for state in RunState:
            directory = self.root / state.value
            if not directory.is_dir():
                continue
            found.extend(
                RunDir(self, entry.name, state)
                for entry in directory.iterdir()
                if not entry.name.startswith(".") and entry.is_dir()
            )
        yield from sorted(found, key=lambda r: r.run_id, reverse=True)

    def find(self, ref: str) -> RunDir:
        """The run named `latest`, by full id, or by a unique id prefix; raises `RunNotFound`."""
        if ref == "latest":
            return self._latest()
        matches = [run for run in self.runs() if run.run_id.startswith(ref)]
        exact = [run for run in matches if run.run_id == ref]
        if exact:
            return exact[0]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise RunNotFound(f"no run {ref!r} for repository {self.repo!r} (in {self.root})")
        ids = ", ".join(run.run_id for run in matches[:5])
        raise RunNotFound(f"run prefix {ref!r} is ambiguous: {ids}")

    def _latest(self) -> RunDir:
        """The run `latest` names; the newest run if the link is missing, broken or junk."""
        current = _link_run_id(self.root / "latest")
        newest: RunDir | None = None
        for run in self.runs():
            if run.run_id == current:
                return run
            newest = newest or run
        if newest is None:
            raise RunNotFound(f"no runs yet for repository {self.repo!r} (in {self.root})")
        return newest


def store_for(repo_path: Path) -> RunStore:
    """The run store of the repository at `repo_path`; raises `NotARepository`."""
    from quire.tools import git

    return store_of(git.open_repository(repo_path))


def store_of(repo: Repository) -> RunStore:
    """The run store of `repo`, named `<folder>-<hash of its git dir>`; runs an older
    version recorded under the bare folder name are moved in first."""
    from quire.paths import repo_id, repo_segment

    store = RunStore(repo_id(repo.name_dir.name, repo.home))
    adopt_legacy_runs(store, repo_segment(repo.name_dir.name), repo.home)
    return store


def adopt_legacy_runs(store: RunStore, legacy_name: str, git_dir: Path) -> list[str]:
    """Move this repository's finished runs from the store an older version named
    `legacy_name` (shared by every folder of that name) into `store`; returns their ids.

    Only runs whose meta.yml names this git dir move; runs in flight stay
    (their runner still writes there), as do other repositories' runs.
    """
    legacy = store.root.parent / legacy_name
    if legacy == store.root or not legacy.is_dir():
        return []
    mine = os.path.realpath(git_dir)
    moved: list[RunDir] = []
    for state in sorted(FINISHED):
        directory = legacy / state.value
        for entry in sorted(directory.iterdir()) if directory.is_dir() else []:
            if entry.name.startswith(".") or not _recorded_for(entry, mine):
                continue
            target = store.root / state.value / entry.name
            private_dir(target.parent)
            os.rename(entry, target)
            moved.append(RunDir(store, entry.name, state))
    for run in moved:
        store.update_latest(run)
    _remove_if_empty(legacy)
    return [run.run_id for run in moved]


def _recorded_for(run_path: Path, git_dir: str) -> bool:
    try:
        meta = read_record(run_path / "meta.yml", RunMeta)
    except RecordUnreadable:
        return False
    return os.path.realpath(meta.git_dir) == git_dir


def _remove_if_empty(root: Path) -> None:
    """Remove a legacy store left with no runs (its dangling latest link with it)."""
    states = [root / state.value for state in RunState]
    if any(directory.is_dir() and any(directory.iterdir()) for directory in states):
        return
    with contextlib.suppress(OSError):
        (root / "latest").unlink()
        for directory in states:
            if directory.is_dir():
                directory.rmdir()
        root.rmdir()


def _replace_link(tmp: Path, link: Path, attempts: int = 3) -> None:
    """`os.replace(tmp, link)`, first clearing a directory or file squatting at `link`.

    `latest` is quire's own name in the store: a directory or file there is
    debris (a copy, a failed tool), never a record. Several attempts, since a
    concurrent run may be clearing the same debris.
    """
    for attempt in range(1, attempts + 1):
        try:
            os.replace(tmp, link)
            return
        except OSError:
            if attempt == attempts or link.is_symlink():
                raise
        try:
            if link.is_dir():
                shutil.rmtree(link)
            else:
                link.unlink()
        except FileNotFoundError:
            pass  # someone else cleared it


def _link_run_id(link: Path) -> str | None:
    try:
        return Path(os.readlink(link)).name
    except OSError:
        return None
