"""git, as quire uses it: find the repository, resolve a revision, read a file, archive a tree."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from quire.errors import NotARepository, ToolFailed, UnknownRevision
from quire.tools import process


@dataclass(frozen=True)
class Repository:
    """A repository on disk: its git dir, and the directory that names it."""

    git_dir: Path
    name_dir: Path
    bare: bool
    # A worker's mirror (`git_dir`) of the pushed repository at this path, which names the
    # run store and the records; git reads the mirror.
    mirror_of: Path | None = None

    @property
    def home(self) -> Path:
        """The repository's own git dir: the pushed one for a mirror."""
        return self.mirror_of or self.git_dir


def mirrored(mirror: Path, pushed: str) -> Repository:
    """The mirror `mirror` standing for the pushed repository whose git dir is `pushed`
    (a path on the git server, perhaps not on this machine: never looked at). Named as
    `open_repository` would name it there: `proj.git` by itself, `proj/.git` by `proj`."""
    home = Path(os.path.normpath(pushed))
    name_dir = home.parent if home.name == ".git" else home
    return Repository(git_dir=mirror, name_dir=name_dir, bare=True, mirror_of=home)


@dataclass(frozen=True)
class Revision:
    """A revision resolved to a commit, with the ref it named (if any)."""

    sha: str
    ref: str | None


def _git(git_dir: Path, *args: str) -> process.Completed:
    return process.run(["git", "--git-dir", str(git_dir), *args])


def open_repository(path: Path) -> Repository:
    """The repository at or above `path` (normal or bare); raises `NotARepository`."""
    # One call for all three: where there is no work tree (a bare repository, or `path`
    # inside a .git directory) `--show-toplevel` fails after the first two have answered.
    found = process.run(
        [
            "git",
            *("-C", str(path), "rev-parse"),
            *("--absolute-git-dir", "--is-bare-repository", "--show-toplevel"),
        ]
    )
    # One line per query: a path may hold spaces, so split on lines, not whitespace.
    lines = found.stdout.decode().splitlines()
    if len(lines) < 2:
        raise NotARepository(f"{path} is not a git repository ({found.stderr_tail(1)})")
    git_dir = Path(lines[0])
    if lines[1] == "true":
        return Repository(git_dir=git_dir, name_dir=git_dir, bare=True)
    name_dir = Path(lines[2]) if found.ok and len(lines) > 2 else git_dir.parent
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


SUBJECT_CHARS = 200


def subject(git_dir: Path, sha: str) -> str | None:
    """The first line of commit `sha`'s message (cut at `SUBJECT_CHARS`), or None."""
    found = _git(git_dir, "show", "-s", "--format=%s", sha)
    if not found.ok:
        return None
    text = found.stdout.decode("utf-8", "replace").strip()
    return text[:SUBJECT_CHARS] or None


def read_file(git_dir: Path, sha: str, path: str) -> bytes | None:
    """The content of `path` at commit `sha`, or None if it has no such file."""
    found = _git(git_dir, "cat-file", "blob", f"{sha}:{path}")
    return found.stdout if found.ok else None


def list_files(git_dir: Path, sha: str, directory: str) -> list[str]:
    """The paths of the files under `directory` at commit `sha` (none if it has none)."""
    found = _git(git_dir, "ls-tree", "-r", "-z", "--name-only", sha, "--", directory)
    if not found.ok:
        return []
    return [name for name in found.stdout.decode("utf-8", "surrogateescape").split("\0") if name]


def worktree_files(worktree: Path) -> list[str]:
    """The files of a working tree a `--dirty` run takes: tracked ones (with their
    uncommitted changes) and untracked ones git does not ignore. Raises `ToolFailed`."""
    found = process.run(
        ["git", "-C", str(worktree), "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    )
    if not found.ok:
        raise ToolFailed(f"`git ls-files` in {worktree} failed: {found.stderr_tail(3)}")
    names = found.stdout.decode("utf-8", "surrogateescape").split("\0")
    return sorted({name for name in names if name})


def worktree_changed(worktree: Path) -> bool:
    """Whether the working tree differs from HEAD (changes, or untracked files git does
    not ignore)."""
    found = process.run(
        ["git", "-C", str(worktree), "status", "--porcelain", "--untracked-files=normal"]
    )
    return found.ok and bool(found.stdout.strip())


def archive_argv(git_dir: Path, sha: str) -> list[str]:
    """`git archive` of commit `sha` as a tar stream on stdout."""
    return ["git", "--git-dir", str(git_dir), "archive", "--format=tar", sha]


# --- a worker's mirror (a queued run's repository, fetched by URL) ------------------------------

# A fetch never asks for a password or a passphrase on a terminal: a worker has none, and
# would hang. ssh keys are the worker user's business (docs/scale-out.md).
FETCH_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "SSH_ASKPASS": ""}


def init_bare(git_dir: Path) -> None:
    """Create an empty bare repository at `git_dir`; raises `ToolFailed`."""
    done = process.run(["git", "init", "--quiet", "--bare", str(git_dir)])
    if not done.ok:
        raise ToolFailed(f"git init --bare {git_dir} failed: {done.stderr_tail(3)}")


def has_object(git_dir: Path, sha: str) -> bool:
    """Whether the repository at `git_dir` holds object `sha`."""
    if sha.startswith("-"):
        return False
    return _git(git_dir, "cat-file", "-e", sha).ok


def fetch_argv(git_dir: Path, url: str, refspec: str) -> list[str]:
    """`git fetch` of one refspec from `url` into `git_dir`, nothing else (no tags, no
    FETCH_HEAD). Protocol v2 lets a server hand out any object it has by its id; gc and
    maintenance stay in the foreground (nothing outlives the run)."""
    return [
        "git",
        *("-c", "protocol.version=2", "-c", "gc.autoDetach=false"),
        *("-c", "maintenance.autoDetach=false"),
        *("--git-dir", str(git_dir), "fetch", "--quiet", "--no-tags", "--no-write-fetch-head"),
        *("--", url, refspec),
    ]


def fetch(git_dir: Path, url: str, refspec: str) -> process.Completed:
    """Run `fetch_argv`; the result says whether it worked and why not (stderr)."""
    return process.run(fetch_argv(git_dir, url, refspec), env=FETCH_ENV)


# --- hooks and notes (the push service) ----------------------------------------------------------

# Notes commits are made by quire, whoever runs it: a bare repository on a
# server often has no user.name/user.email configured at all.
NOTES_IDENTITY = {
    "GIT_AUTHOR_NAME": "quire",
    "GIT_AUTHOR_EMAIL": "quire@localhost",
    "GIT_COMMITTER_NAME": "quire",
    "GIT_COMMITTER_EMAIL": "quire@localhost",
}


def _checked(git_dir: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = process.run(["git", "--git-dir", str(git_dir), *args], env=env)
    if not done.ok:
        raise ToolFailed(f"git {' '.join(args[:2])} failed in {git_dir}: {done.stderr_tail(3)}")
    return done.stdout.decode().strip()


def hooks_dir(git_dir: Path) -> Path:
    """Where git runs this repository's hooks from (`core.hooksPath` or <git-dir>/hooks)."""
    path = Path(_checked(git_dir, "rev-parse", "--git-path", "hooks"))
    return path if path.is_absolute() else git_dir / path


def ref_target(git_dir: Path, ref: str) -> str | None:
    """The object `ref` points at, or None if it does not exist."""
    found = _git(git_dir, "rev-parse", "--verify", "--quiet", ref)
    return found.stdout.decode().strip() if found.ok else None


def commit_of(git_dir: Path, rev: str) -> str | None:
    """The commit `rev` names (an annotated tag is peeled), or None."""
    if rev.startswith("-"):
        return None
    return ref_target(git_dir, f"{rev}^{{commit}}")


def note_paths(sha: str) -> list[str]:
    """Where a notes tree may keep the note of `sha`: flat, or fanned out by git."""
    return [sha, f"{sha[:2]}/{sha[2:]}", f"{sha[:2]}/{sha[2:4]}/{sha[4:]}"]


def note_entry(git_dir: Path, notes_commit: str, sha: str) -> tuple[str, str] | None:
    """(path, blob) of the note on `sha` in the notes commit `notes_commit`, or None."""
    listed = _checked(git_dir, "ls-tree", "-r", "--full-tree", notes_commit, "--", *note_paths(sha))
    for line in listed.splitlines():
        info, _, path = line.partition("\t")
        if path in note_paths(sha):
            return path, info.split()[2]
    return None


def read_blob(git_dir: Path, blob: str) -> bytes:
    """The content of blob `blob`; raises `ToolFailed`."""
    done = _git(git_dir, "cat-file", "blob", blob)
    if not done.ok:
        raise ToolFailed(f"git cat-file blob {blob} failed in {git_dir}: {done.stderr_tail(3)}")
    return done.stdout


def write_blob(git_dir: Path, data: bytes) -> str:
    """Store `data` as a blob; returns its id."""
    with tempfile.TemporaryDirectory(prefix="quire-blob-") as tmp:
        source = Path(tmp) / "blob"
        source.write_bytes(data)
        return _checked(git_dir, "hash-object", "-w", "--", str(source))


def tree_with(git_dir: Path, base: str | None, path: str, blob: str) -> str:
    """The tree of commit `base` (or an empty one) with `path` set to `blob`; returns its id.

    Built in a private index file: the repository's own index is never touched.
    """
    with tempfile.TemporaryDirectory(prefix="quire-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        if base is None:
            _checked(git_dir, "read-tree", "--empty", env=env)
        else:
            _checked(git_dir, "read-tree", base, env=env)
        _checked(git_dir, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
        return _checked(git_dir, "write-tree", env=env)


def commit_tree(git_dir: Path, tree: str, parent: str | None, message: str) -> str:
    """A new commit of `tree` on `parent` (none: a root commit), made by quire."""
    parents = ["-p", parent] if parent else []
    return _checked(git_dir, "commit-tree", tree, *parents, "-m", message, env=NOTES_IDENTITY)


def update_ref(git_dir: Path, ref: str, new: str, old: str | None, message: str) -> bool:
    """Compare-and-swap: point `ref` at `new` only if it still points at `old` (None:
    only if it does not exist yet). False when someone moved it first."""
    done = _git(git_dir, "update-ref", "-m", message, ref, new, old or "")
    return done.ok
