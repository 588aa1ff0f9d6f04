"""Names in URLs, checked against the run store before any path is built from them.

A repository must be a directory of `$QUIRE_STATE_DIR/runs/`, a run an
exact directory name in one of its state directories, a job a directory of
the run's `jobs/`. Repository and run names must also look like the names
quire makes (no `/`, no leading dot), so `..`, `%2f` and friends never reach
the file system; job names are compared with the entries of `jobs/`
themselves. Anything else is `NotFound`, which the app turns into a 404.

Nothing outside the state directory is served, symlinks included: a
repository, a run, a job, and every record and log of a run the pages read
must have its real path inside the state directory's real path (the state
directory itself may be a link). A run with anything that leads outside is
`NotFound` as a whole, since its records are read together (`quire ci show`'s
reader follows links). The `latest` link counts only when it resolves inside.

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
# What the pages read of a run, beside its jobs' JOB_FILES.
RUN_FILES = ("meta.yml", "times.yml", "result.yml", "container.yml", "log.jsonl")
JOB_FILES = ("state.yml", "log.jsonl")


class NotFound(Exception):
    """A repository, run or job that the store does not hold."""


def valid_name(name: str) -> bool:
    """Whether `name` can be a repository or run directory quire made."""
    return bool(_NAME.match(name)) and ".." not in name


class StoreView:
    """Read-only access to every repository under one `runs/` directory."""

    def __init__(self, runs_root: Path, *, state_root: Path | None = None) -> None:
        self.runs_root = runs_root
        # What nothing served may lead out of; the state directory by default.
        self.state_root = state_root or runs_root.parent

    def inside(self, path: Path) -> bool:
        """Whether `path`, every link on the way followed, stays inside the state directory.

        A path that does not exist (yet) counts where it would be: reading it fails
        on its own.
        """
        real = os.path.realpath(path)
        return Path(real).is_relative_to(os.path.realpath(self.state_root))

    def repos(self) -> list[str]:
        """Repository names with a directory in the store, sorted."""
        try:
            entries = list(os.scandir(self.runs_root))
        except OSError:
            return []
        return sorted(
            e.name
            for e in entries
            if valid_name(e.name) and e.is_dir() and self.inside(self.runs_root / e.name)
        )

    def store(self, repo: str) -> RunStore:
        """The store of `repo`; raises `NotFound` unless it exists."""
        root = self.runs_root / repo
        if not valid_name(repo) or not root.is_dir() or not self.inside(root):
            raise NotFound(f"no repository {repo!r}")
        return RunStore(repo, root=root)

    def confined(self, run: RunDir) -> bool:
        """Whether the run's directory, its records and logs, and every job's directory,
        record and log stay inside the state directory."""
        paths = [run.path, *(run.path / name for name in RUN_FILES), run.path / "jobs"]
        try:
            jobs = os.listdir(run.path / "jobs")
        except OSError:
            jobs = []
        return all(self.inside(path) for path in paths) and all(
            self.job_confined(run.path / "jobs" / job) for job in jobs
        )

    def check(self, run: RunDir) -> RunDir:
        """`run`, unless something of it leads outside the state directory (`NotFound`)."""
        if not self.confined(run):
            raise NotFound(f"run {run.run_id} links outside the state directory: not shown")
        return run

    def run(self, repo: str, run_id: str) -> RunDir:
        """The run `run_id` (exact, or `latest`) of `repo`, wherever it is now."""
        store = self.store(repo)
        if run_id == "latest":
            link = store.root / "latest"
            try:
                target = Path(os.readlink(link)).name
            except OSError as exc:
                raise NotFound(f"no runs yet for {repo!r}") from exc
            if not self.inside(link):
                raise NotFound(f"the latest link of {repo!r} leads outside the state directory")
            run_id = target
        if not valid_name(run_id):
            raise NotFound(f"no run {run_id!r}")
        # Twice round: a run renamed from active/ to complete/ between two
        # checks is found on the second pass.
        for _ in range(2):
            for state in STATES:
                if (store.root / state.value / run_id).is_dir():
                    return self.check(RunDir(store, run_id, state))
        raise NotFound(f"no run {run_id!r} in {repo!r}")

    def refind(self, run: RunDir) -> RunDir:
        """`run` again, after it may have moved to another state directory (not checked
        again where it was: a follower calls this ten times a second)."""
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
            path = run.path / "jobs" / job
            if job in names and not job.startswith(".") and self.job_confined(path):
                return path
            break
        raise NotFound(f"no job {job!r} in run {run.run_id}")

    def job_confined(self, path: Path) -> bool:
        """Whether a job's directory, record and log stay inside the state directory."""
        return all(self.inside(p) for p in (path, *(path / name for name in JOB_FILES)))
