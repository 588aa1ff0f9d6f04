"""Names in URLs, checked against the run store before any path is built from them.

A repository must be a directory of `$QUIRE_STATE_DIR/runs/`, a run an
exact directory name in one of its state directories, a job a directory of
the run's `jobs/`. Repository and run names must also look like the names
quire makes (no `/`, no leading dot), so `..`, `%2f` and friends never reach
the file system; job names are compared with the entries of `jobs/`
themselves. Anything else is `NotFound`, which the app turns into a 404.

A run's directory moves (one rename) when it ends, so runs are found by id
on every request, in whichever state directory holds them now.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from quire.ci.store.runs import RunDir, RunState, RunStore

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}\Z")
STATES = tuple(RunState)


class NotFound(Exception):
    """A repository, run or job that the store does not hold."""


def valid_name(name: str) -> bool:
    """Whether `name` can be a repository or run directory quire made."""
    return bool(_NAME.match(name)) and ".." not in name


class StoreView:
    """Read-only access to every repository under one `runs/` directory."""

    def __init__(self, runs_root: Path) -> None:
        self.runs_root = runs_root

    def repos(self) -> list[str]:
        """Repository names with a directory in the store, sorted."""
        try:
            entries = list(os.scandir(self.runs_root))
        except OSError:
            return []
        return sorted(e.name for e in entries if valid_name(e.name) and e.is_dir())

    def store(self, repo: str) -> RunStore:
        """The store of `repo`; raises `NotFound` unless it exists."""
        if not valid_name(repo) or not (self.runs_root / repo).is_dir():
            raise NotFound(f"no repository {repo!r}")
        return RunStore(repo, root=self.runs_root / repo)

    def run(self, repo: str, run_id: str) -> RunDir:
        """The run `run_id` (exact, or `latest`) of `repo`, wherever it is now."""
        store = self.store(repo)
        if run_id == "latest":
            try:
                run_id = Path(os.readlink(store.root / "latest")).name
            except OSError as exc:
                raise NotFound(f"no runs yet for {repo!r}") from exc
        if not valid_name(run_id):
            raise NotFound(f"no run {run_id!r}")
        # Twice round: a run renamed from active/ to complete/ between two
        # checks is found on the second pass.
        for _ in range(2):
            for state in STATES:
                if (store.root / state.value / run_id).is_dir():
                    return RunDir(store, run_id, state)
        raise NotFound(f"no run {run_id!r} in {repo!r}")

    def refind(self, run: RunDir) -> RunDir:
        """`run` again, after it may have moved to another state directory."""
        if run.path.is_dir():
            return run
        return self.run(run.store.repo, run.run_id)

    def job_dir(self, run: RunDir, job: str) -> Path:
        """The directory of `job` in `run`; raises `NotFound` unless it is one of its jobs."""
        for _ in range(2):
            try:
                names = os.listdir(run.path / "jobs")
            except OSError:
                run = self.refind(run)
                continue
            if job in names and not job.startswith("."):
                return run.path / "jobs" / job
            break
        raise NotFound(f"no job {job!r} in run {run.run_id}")
