"""The run's workspace: the commit's tree (`git archive | tar -x`), or the working tree.

    $QUIRE_CACHE_DIR/runs/<repo>/<run-id>/workspace/

Kept apart from the run records so the cache can be wiped without losing
history. Removed when the run ends unless the user keeps it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from quire.errors import WorkspaceMaterializationFailed
from quire.tools import git, process, tar


def materialize(git_dir: Path, sha: str, workspace: Path) -> None:
    """Extract commit `sha` of `git_dir` into `workspace` (created, must not exist yet).

    Streams `git archive` into `tar -x` through a pipe (no temporary tar
    file) and checks both stages. Raises `WorkspaceMaterializationFailed`
    naming the stage that failed and its stderr tail.
    """
    _create(workspace)
    archive, extract = process.pipe(git.archive_argv(git_dir, sha), tar.extract_argv(workspace))
    # git first: when git fails, tar's complaint ("not a tar archive") is only an echo of it.
    for name, stage in (("git archive", archive), ("tar --extract", extract)):
        if not stage.ok:
            raise WorkspaceMaterializationFailed(
                f"materializing {sha[:12]} into {workspace} failed: `{name}` exited "
                f"{stage.exit}: {stage.stderr_tail(5) or '(no output)'}"
            )


def materialize_worktree(worktree: Path, workspace: Path) -> None:
    """Copy the working tree as it is into `workspace` (`--dirty`): tracked files with
    their changes and untracked files git does not ignore, never ignored ones.

    `tar -c | tar -x` through a pipe; the list of files goes to tar in a file
    beside the workspace. Raises `WorkspaceMaterializationFailed`.
    """
    _create(workspace)
    # A file deleted but not yet committed is listed by git and gone from the disk.
    names = [name for name in git.worktree_files(worktree) if os.path.lexists(worktree / name)]
    listed = workspace.parent / "files.list"
    listed.write_bytes(b"".join(os.fsencode(name) + b"\0" for name in names))
    try:
        create, extract = process.pipe(
            tar.create_listed_argv(worktree, listed), tar.extract_argv(workspace)
        )
    finally:
        listed.unlink(missing_ok=True)
    for name, stage in (("tar --create", create), ("tar --extract", extract)):
        if not stage.ok:
            raise WorkspaceMaterializationFailed(
                f"copying the working tree {worktree} into {workspace} failed: `{name}` "
                f"exited {stage.exit}: {stage.stderr_tail(5) or '(no output)'}"
            )


def _create(workspace: Path) -> None:
    """The workspace, inside a per-run directory only its user may enter (0700): the tree
    may hold what nobody else on the machine should read. The workspace itself keeps the
    usual mode, as it is what a container sees at /work."""
    from quire.ci.store.runs import private_dir

    try:
        private_dir(workspace.parent)
        workspace.mkdir()
    except OSError as exc:
        raise WorkspaceMaterializationFailed(
            f"cannot create workspace {workspace}: {exc.strerror}"
        ) from exc


def remove(workspace: Path) -> None:
    """Delete the workspace and its per-run parent directory (missing is fine)."""
    shutil.rmtree(workspace.parent, ignore_errors=True)
