"""Loading a run's pipeline: the repository, the revision, ci.py and the modules beside it.

From the commit (`git show`), or with `--dirty` from the working tree as it
is on disk; never the working tree otherwise, whose uncommitted changes are
pointed out in one line instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quire.ci.events import Notice
from quire.ci.pipeline import PIPELINE_FILE, Pipeline
from quire.ci.run.jobhost import JobHost
from quire.ci.run.outlet import Subscriber
from quire.errors import UnknownRevision, UsageError
from quire.tools import git


@dataclass(frozen=True)
class LoadedPipeline:
    repo: git.Repository
    revision: git.Revision
    pipeline: Pipeline | None
    # The job host that ran ci.py and will run its jobs (`keep_host`); closed by the caller.
    host: JobHost | None = None


def load(
    repo_path: Path | git.Repository,
    revision: str,
    *,
    dirty: bool = False,
    host: JobHost | None = None,
) -> LoadedPipeline:
    """Find the repository, resolve the revision, load its ci.py (None if it has none).

    ci.py runs in a job host, never in this process: `host`, started earlier by the
    caller, which keeps it for the run's jobs and closes it; else one started here
    for the loading alone (`validate`, `jobs`). `repo_path`: a path, or a repository
    already found (a worker's mirror). `dirty`: the working tree's ci.py
    and modules, as they are on disk (its HEAD is the revision). Raises `UsageError`
    for a bare repository or another revision, `PipelineError` for an invalid pipeline.
    """
    if host is not None:
        loaded = _load(host, repo_path, revision, dirty=dirty)
        return LoadedPipeline(loaded.repo, loaded.revision, loaded.pipeline, host)
    own = JobHost.start()  # its interpreter starts while we read git
    try:
        return _load(own, repo_path, revision, dirty=dirty)
    finally:
        own.close()


def _load(
    host: JobHost, repo_path: Path | git.Repository, revision: str, *, dirty: bool
) -> LoadedPipeline:
    repo = repo_path if isinstance(repo_path, git.Repository) else git.open_repository(repo_path)
    if dirty and (repo.bare or revision != "HEAD"):
        where = f"{repo.git_dir} is bare" if repo.bare else f"it runs HEAD, not {revision!r}"
        raise UsageError(f"--dirty runs a working tree as it is: {where}")
    resolved = git.resolve(repo.git_dir, revision)
    files = _pipeline_files(repo, resolved.sha, dirty=dirty)
    source = files.pop(PIPELINE_FILE, None)
    if source is None:
        return LoadedPipeline(repo, resolved, None)
    return LoadedPipeline(repo, resolved, host.load({PIPELINE_FILE: source, **files}))


def names_commit(repo_path: Path, word: str) -> bool:
    """Whether `word` names a commit of the repository at `repo_path` (`quire ci run WORD`
    may give a revision or a job). Raises `NotARepository`."""
    git_dir = git.open_repository(repo_path).git_dir
    try:
        git.resolve(git_dir, word)
    except UnknownRevision:
        return False
    return True


def _pipeline_files(repo: git.Repository, sha: str, *, dirty: bool) -> dict[str, bytes]:
    """ci.py and the .py files beside it under .quire/, from the commit or the tree."""
    if dirty:
        names = git.worktree_files(repo.name_dir)
        wanted = [n for n in names if n.startswith(".quire/") and n.endswith(".py")]
        return {
            name: (repo.name_dir / name).read_bytes()
            for name in wanted
            if (repo.name_dir / name).is_file()
        }
    source = git.read_file(repo.git_dir, sha, PIPELINE_FILE)
    if source is None:
        return {}
    files = {PIPELINE_FILE: source}
    for path in git.list_files(repo.git_dir, sha, ".quire"):
        if path.endswith(".py") and path != PIPELINE_FILE:
            files[path] = git.read_file(repo.git_dir, sha, path) or b""
    return files


def note_uncommitted_changes(loaded: LoadedPipeline, revision: str, reporter: Subscriber) -> None:
    """One line when the working tree differs from the commit being run (its HEAD)."""
    repo = loaded.repo
    if repo.bare:
        return
    if revision != "HEAD" and git.resolve(repo.git_dir, "HEAD").sha != loaded.revision.sha:
        return
    if git.worktree_changed(repo.name_dir):
        reporter.handle(
            Notice(
                f"note: the working tree has changes this run leaves out (it runs commit "
                f"{loaded.revision.sha[:12]}); `quire ci run --dirty` includes them"
            )
        )
