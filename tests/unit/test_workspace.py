"""Materializing a commit with real git and tar: `git archive | tar -x` into the workspace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from plumbum import local

from quire.ci.run import workspace as workspaces
from quire.ci.run.workspace import materialize, remove
from quire.errors import WorkspaceMaterializationFailed
from tests.helpers import commit, make_repo, write_shim

FILES: dict[str, str | bytes] = {
    "README.md": "hello\n",
    "src/pkg/mod.py": "VALUE = 1\n",
    "build.sh": "#!/bin/sh\necho built\n",
    "data.bin": bytes(range(256)),
    "dir with space/file name.txt": "spaced\n",
}


def make_executable(repo: Path, name: str) -> str:
    (repo / name).chmod(0o755)
    return commit(repo, {}, "exec bit")


def test_materialize_extracts_every_file_of_the_commit(tmp_path: Path) -> None:
    sha = make_repo(tmp_path / "proj", FILES)
    workspace = tmp_path / "ws" / "workspace"
    materialize(tmp_path / "proj" / ".git", sha, workspace)
    assert (workspace / "README.md").read_text() == "hello\n"
    assert (workspace / "src" / "pkg" / "mod.py").read_text() == "VALUE = 1\n"
    assert (workspace / "data.bin").read_bytes() == bytes(range(256))
    assert (workspace / "dir with space" / "file name.txt").read_text() == "spaced\n"
    assert not (workspace / ".git").exists()


def test_materialize_takes_the_commit_not_the_working_tree(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    first = make_repo(repo, {"version.txt": "1\n"})
    commit(repo, {"version.txt": "2\n", "new.txt": "new\n"})
    (repo / "version.txt").write_text("dirty\n")
    workspace = tmp_path / "ws"
    materialize(repo / ".git", first, workspace)
    assert (workspace / "version.txt").read_text() == "1\n"
    assert not (workspace / "new.txt").exists()


def test_materialize_keeps_the_executable_bit(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    make_repo(repo, FILES)
    sha = make_executable(repo, "build.sh")
    workspace = tmp_path / "ws"
    materialize(repo / ".git", sha, workspace)
    assert os.access(workspace / "build.sh", os.X_OK)
    assert not os.access(workspace / "README.md", os.X_OK)


def test_materialize_works_from_a_bare_repository(tmp_path: Path) -> None:
    sha = make_repo(tmp_path / "proj", FILES, bare_clone=True)
    bare = tmp_path / "proj.git"
    assert (bare / "HEAD").is_file()
    workspace = tmp_path / "ws"
    materialize(bare, sha, workspace)
    assert (workspace / "src" / "pkg" / "mod.py").read_text() == "VALUE = 1\n"


def test_workspace_path_with_spaces_works(tmp_path: Path) -> None:
    sha = make_repo(tmp_path / "my proj", FILES)
    workspace = tmp_path / "cache dir" / "run id" / "work space"
    materialize(tmp_path / "my proj" / ".git", sha, workspace)
    assert (workspace / "README.md").read_text() == "hello\n"
    assert (workspace / "dir with space" / "file name.txt").is_file()


def test_unknown_sha_raises_naming_git_archive(tmp_path: Path) -> None:
    make_repo(tmp_path / "proj", FILES)
    missing = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(WorkspaceMaterializationFailed) as caught:
        materialize(tmp_path / "proj" / ".git", missing, tmp_path / "ws")
    message = str(caught.value)
    assert "`git archive` exited" in message
    assert "0123456789ab" in message
    assert "tar" not in message.split("`git archive`")[1]
    assert caught.value.exit_code == 3


def test_failing_tar_is_named_with_its_stderr(tmp_path: Path) -> None:
    sha = make_repo(tmp_path / "proj", FILES)
    shims = tmp_path / "shims"
    write_shim(shims, "tar", 'cat >/dev/null\necho "tar: disk full" >&2\nexit 2\n')
    with local.env():
        local.env.path.insert(0, str(shims))
        local.clear_program_cache()
        with pytest.raises(WorkspaceMaterializationFailed) as caught:
            materialize(tmp_path / "proj" / ".git", sha, tmp_path / "ws")
    local.clear_program_cache()
    message = str(caught.value)
    assert "`tar --extract` exited 2" in message
    assert "tar: disk full" in message


def test_existing_workspace_is_refused(tmp_path: Path) -> None:
    sha = make_repo(tmp_path / "proj", FILES)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    with pytest.raises(WorkspaceMaterializationFailed, match="cannot create workspace"):
        materialize(tmp_path / "proj" / ".git", sha, workspace)


def test_not_a_repository_raises_naming_git_archive(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkspaceMaterializationFailed, match="`git archive` exited"):
        materialize(tmp_path / "empty", "a" * 40, tmp_path / "ws")


def test_remove_deletes_the_workspace_and_its_run_directory(tmp_path: Path) -> None:
    sha = make_repo(tmp_path / "proj", FILES)
    workspace = tmp_path / "cache" / "run-1" / "workspace"
    materialize(tmp_path / "proj" / ".git", sha, workspace)
    remove(workspace)
    assert not (tmp_path / "cache" / "run-1").exists()
    assert (tmp_path / "cache").is_dir()
    remove(workspace)  # already gone: fine


def test_a_working_tree_copy_takes_changes_and_untracked_files_never_ignored_ones(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    make_repo(repo, {"kept.txt": "committed\n", "gone.txt": "x\n", ".gitignore": "*.log\n"})
    (repo / "kept.txt").write_text("changed\n")
    (repo / "gone.txt").unlink()  # deleted, not committed
    (repo / "new dir").mkdir()
    (repo / "new dir" / "new file.txt").write_text("untracked\n")
    (repo / "build.log").write_text("ignored\n")
    workspace = tmp_path / "cache" / "run" / "workspace"
    workspaces.materialize_worktree(repo, workspace)
    assert (workspace / "kept.txt").read_text() == "changed\n"
    assert (workspace / "new dir" / "new file.txt").read_text() == "untracked\n"
    assert not (workspace / "gone.txt").exists()
    assert not (workspace / "build.log").exists()
    assert not (workspace / ".git").exists()
    assert sorted(p.name for p in workspace.parent.iterdir()) == ["workspace"]  # no list left


def test_dirty_is_refused_for_a_bare_repository_and_another_revision(tmp_path: Path) -> None:
    from quire.ci.run.loading import load
    from quire.errors import UsageError

    make_repo(tmp_path / "p", {".quire/ci.py": "x = 1\n"}, bare_clone=True)
    with pytest.raises(UsageError, match="is bare"):
        load(tmp_path / "p.git", "HEAD", dirty=True)
    with pytest.raises(UsageError, match="it runs HEAD, not 'main'"):
        load(tmp_path / "p", "main", dirty=True)


def test_a_workspace_lies_in_a_run_directory_only_its_user_may_enter(tmp_path: Path) -> None:
    sha = make_repo(tmp_path / "proj", FILES)
    committed = tmp_path / "cache" / "runs" / "proj" / "run-1" / "workspace"
    materialize(tmp_path / "proj" / ".git", sha, committed)
    dirty = tmp_path / "cache" / "runs" / "proj" / "run-2" / "workspace"
    workspaces.materialize_worktree(tmp_path / "proj", dirty)
    for workspace in (committed, dirty):
        assert (workspace / "README.md").is_file()
        for top in (workspace.parent, workspace.parent.parent, workspace.parent.parent.parent):
            assert top.stat().st_mode & 0o777 == 0o700, top
