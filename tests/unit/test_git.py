"""The git wrapper with real git on throwaway repos: find, resolve, read a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from quire.errors import NotARepository, UnknownRevision
from quire.tools import git
from tests.helpers import commit, make_repo
from tests.helpers import git as run_git


def test_open_repository_finds_a_work_tree_from_a_subdirectory(tmp_path: Path) -> None:
    make_repo(tmp_path / "proj", {"src/a.txt": "a\n"})
    repo = git.open_repository(tmp_path / "proj" / "src")
    assert repo.git_dir == (tmp_path / "proj" / ".git").resolve()
    assert repo.name_dir == (tmp_path / "proj").resolve()
    assert not repo.bare


def test_open_repository_of_a_bare_repository_names_it_by_its_directory(tmp_path: Path) -> None:
    make_repo(tmp_path / "proj", {"a": "a\n"}, bare_clone=True)
    repo = git.open_repository(tmp_path / "proj.git")
    assert repo.bare
    assert repo.git_dir == repo.name_dir == (tmp_path / "proj.git").resolve()


def test_open_repository_from_inside_the_git_dir_names_it_by_its_work_tree(
    tmp_path: Path,
) -> None:
    make_repo(tmp_path / "proj", {"a": "a\n"})
    repo = git.open_repository(tmp_path / "proj" / ".git")
    assert not repo.bare
    assert repo.git_dir == (tmp_path / "proj" / ".git").resolve()
    assert repo.name_dir == (tmp_path / "proj").resolve()


def test_open_repository_with_spaces_in_its_path(tmp_path: Path) -> None:
    make_repo(tmp_path / "my proj", {"a": "a\n"}, bare_clone=True)
    repo = git.open_repository(tmp_path / "my proj")
    assert repo.git_dir == (tmp_path / "my proj" / ".git").resolve()
    assert repo.name_dir.name == "my proj"
    bare = git.open_repository(tmp_path / "my proj.git")
    assert bare.bare
    assert bare.git_dir.name == "my proj.git"


def test_open_repository_outside_a_repository_raises(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotARepository, match="is not a git repository"):
        git.open_repository(tmp_path / "plain")


def test_resolve_head_gives_the_commit_and_its_branch(tmp_path: Path) -> None:
    sha = make_repo(tmp_path / "proj", {"a": "a\n"})
    revision = git.resolve(tmp_path / "proj" / ".git", "HEAD")
    assert revision == git.Revision(sha=sha, ref="refs/heads/main")


def test_resolve_annotated_tag_gives_the_commit_and_the_tag_ref(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    sha = make_repo(repo, {"a": "a\n"})
    run_git(repo, "tag", "-a", "-m", "release", "v1.0")
    revision = git.resolve(repo / ".git", "v1.0")
    assert revision == git.Revision(sha=sha, ref="refs/tags/v1.0")


def test_resolve_short_sha_has_no_ref(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    first = make_repo(repo, {"a": "a\n"})
    commit(repo, {"a": "b\n"})
    revision = git.resolve(repo / ".git", first[:10])
    assert revision == git.Revision(sha=first, ref=None)


@pytest.mark.parametrize("rev", ["no-such-branch", "--all", "HEAD~5"])
def test_resolve_unknown_revision_raises(tmp_path: Path, rev: str) -> None:
    make_repo(tmp_path / "proj", {"a": "a\n"})
    with pytest.raises(UnknownRevision, match="unknown revision"):
        git.resolve(tmp_path / "proj" / ".git", rev)


def test_read_file_gives_the_content_at_the_commit(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    first = make_repo(repo, {".quire/ci.py": "# one\n"})
    commit(repo, {".quire/ci.py": "# two\n"})
    (repo / ".quire" / "ci.py").write_text("# working tree\n")
    assert git.read_file(repo / ".git", first, ".quire/ci.py") == b"# one\n"


def test_read_file_of_a_missing_path_is_none(tmp_path: Path) -> None:
    sha = make_repo(tmp_path / "proj", {"a": "a\n"})
    assert git.read_file(tmp_path / "proj" / ".git", sha, ".quire/ci.py") is None


def test_archive_argv_reads_like_documentation() -> None:
    assert git.archive_argv(Path("/srv/x.git"), "abc") == [
        "git",
        "--git-dir",
        "/srv/x.git",
        "archive",
        "--format=tar",
        "abc",
    ]
