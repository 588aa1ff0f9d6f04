"""git, as quire uses it: find the repository, resolve a revision, read a file, archive a tree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quire.errors import NotARepository, UnknownRevision
from quire.tools import process


@dataclass(frozen=True)
class Repository:
    """A repository on disk: its git dir, and the directory that names it."""

    git_dir: Path
    name_dir: Path
    bare: bool


@dataclass(frozen=True)
class Revision:
    """A revision resolved to a commit, with the ref it named (if any)."""

    sha: str
    ref: str | None


def _git(git_dir: Path, *args: str) -> process.Completed:
    return process.run(["git", "--git-dir", str(git_dir), *args])


def open_repository(path: Path) -> Repository:
    """The repository at or above `path` (normal or bare); raises `NotARepository`."""
    found = process.run(
        ["git", "-C", str(path), "rev-parse", "--absolute-git-dir", "--is-bare-repository"]
    )
    if not found.ok:
        raise NotARepository(f"{path} is not a git repository ({found.stderr_tail(1)})")
    # One line per query: a path may hold spaces, so split on lines, not whitespace.
    git_dir_text, bare_text = found.stdout.decode().splitlines()
    git_dir = Path(git_dir_text)
    if bare_text == "true":
        return Repository(git_dir=git_dir, name_dir=git_dir, bare=True)
    top = process.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"])
    name_dir = Path(top.stdout.decode().strip()) if top.ok else git_dir.parent
    return Repository(git_dir=git_dir, name_dir=name_dir, bare=False)


def resolve(git_dir: Path, rev: str) -> Revision:
    """The commit `rev` names, and its full ref name; raises `UnknownRevision`."""
    if rev.startswith("-"):
        raise UnknownRevision(f"unknown revision {rev!r}")
    found = _git(git_dir, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if not found.ok:
        raise UnknownRevision(f"unknown revision {rev!r} in {git_dir}")
    sha = found.stdout.decode().strip()
    named = _git(git_dir, "rev-parse", "--symbolic-full-name", rev)
    ref = named.stdout.decode().strip() if named.ok else ""
    return Revision(sha=sha, ref=ref if ref.startswith("refs/") else None)


def read_file(git_dir: Path, sha: str, path: str) -> bytes | None:
    """The content of `path` at commit `sha`, or None if it has no such file."""
    found = _git(git_dir, "cat-file", "blob", f"{sha}:{path}")
    return found.stdout if found.ok else None


def archive_argv(git_dir: Path, sha: str) -> list[str]:
    """`git archive` of commit `sha` as a tar stream on stdout."""
    return ["git", "--git-dir", str(git_dir), "archive", "--format=tar", sha]
