"""Keeping what a job asks for with `rt.artifact(path, name)`: quire's side copies it.

    <run dir>/artifacts/<job>/<name>             a file, or
    <run dir>/artifacts/<job>/<name>/<path>...   a directory's files

The job's Python only names the path; quire resolves it inside the
workspace tree the executor shows it (`WorkspaceTree`: the workspace on the
host or bind-mounted at /work; a private copy taken out of the container in
copy mode) and copies it. The kernel never follows a symlink for us: every
component is opened with O_NOFOLLOW relative to its parent's descriptor, and
a symlink met on the way is read and resolved here, lexically, against the
workspace root (a relative target against its directory, an absolute one
only when it lies under the workspace's own absolute path: the workspace on
the host, /work in a container). A path, or a link, that leads out of the
workspace is refused naming the job. A job that swaps a directory for a
link while we copy meets the same check: nothing is opened through a link.

Files are hashed (sha256) as they are copied, and every byte counts
against the run's `[artifacts] max_size`; past it the copy stops, what it
had written of that artifact is removed and the job fails saying so.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from quire.ci.vocabulary import ARTIFACTS_DIR, ArtifactFile, format_size
from quire.errors import ArtifactRefused

# A name is one path component: it becomes a directory or file name in the store and a
# segment of the web page's download address.
ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,127}$")
# Files and directories one run may keep: empty ones take no bytes of `max_size` but an
# inode and a line of the record each, and links to directories that are no loop can
# double them at every level.
MAX_ENTRIES = 100_000
# Links followed while resolving one path, as the kernel allows (ELOOP past it).
MAX_LINKS = 40
_CHUNK = 1024 * 1024
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(frozen=True)
class WorkspaceTree:
    """The job's workspace as quire can read it: `root` on this machine, and the absolute
    path the job's commands know it by (absolute symlinks are read against that)."""

    root: Path
    absolute: str


@dataclass
class Budget:
    """The bytes a run may still keep (shared by its jobs, side by side or not)."""

    limit: int
    used: int = 0
    max_entries: int = MAX_ENTRIES
    entries: int = 0  # files and directories kept
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, size: int, job_id: str) -> None:
        with self._lock:
            if self.used + size > self.limit:
                raise ArtifactRefused(
                    f"job {job_id!r}: its artifacts would take the run past its limit of "
                    f"{format_size(self.limit)} ([artifacts] max_size in the config file); "
                    f"{format_size(self.used)} kept so far"
                )
            self.used += size

    def take_entry(self, job_id: str) -> None:
        with self._lock:
            if self.entries >= self.max_entries:
                raise ArtifactRefused(
                    f"job {job_id!r}: its artifacts would make the run keep more than "
                    f"{self.max_entries} files and directories; keep an archive of them "
                    "instead (tar, zip)"
                )
            self.entries += 1

    def give_back(self, size: int, entries: int = 0) -> None:
        with self._lock:
            self.used -= size
            self.entries -= entries


class _Escape(Exception):
    """Internal: the path leads out of the workspace (turned into ArtifactRefused)."""


@dataclass
class _Resolved:
    fd: int
    parts: tuple[str, ...]  # its path from the workspace root, links resolved
    mode: int


class ConfinedTree:
    """Opens paths of one workspace tree without ever letting the kernel follow a link."""

    def __init__(self, tree: WorkspaceTree) -> None:
        self.tree = tree
        self._root = os.open(tree.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self._root)

    def open(self, path: str) -> _Resolved:
        """`path` (relative to the workspace, or absolute under its absolute path), opened;
        raises `_Escape` for a path or link out of the workspace, OSError for the rest."""
        parts = self._start(path)
        return self._walk(parts)

    def _start(self, path: str) -> list[str]:
        if path.startswith("/"):
            return self._under_root(path)
        return [p for p in path.split("/") if p not in ("", ".")]

    def _under_root(self, target: str) -> list[str]:
        absolute = self.tree.absolute.rstrip("/")
        if target != absolute and not target.startswith(absolute + "/"):
            raise _Escape(target)
        return [p for p in target[len(absolute) :].split("/") if p not in ("", ".")]

    def _walk(self, todo: list[str]) -> _Resolved:
        links = 0
        done: list[str] = []
        fd = os.dup(self._root)
        try:
            while todo:
                part = todo.pop(0)
                if part == "..":
                    if not done:
                        raise _Escape("..")
                    done.pop()
                    os.close(fd)
                    fd = self._reopen(done)
                    continue
                try:
                    child = os.open(part, _OPEN, dir_fd=fd)
                except OSError as exc:
                    if exc.errno != errno.ELOOP:
                        raise
                    links += 1
                    if links > MAX_LINKS:
                        raise OSError(errno.ELOOP, "too many levels of symbolic links") from exc
                    target = os.readlink(part, dir_fd=fd)
                    todo = self._followed(target) + todo
                    if target.startswith("/"):  # from the root again
                        done = []
                        os.close(fd)
                        fd = os.dup(self._root)
                    continue
                mode = os.fstat(child).st_mode
                if todo and not stat.S_ISDIR(mode):
                    os.close(child)
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory", part)
                os.close(fd)
                fd = child
                done.append(part)
            return _Resolved(fd, tuple(done), os.fstat(fd).st_mode)
        except BaseException:
            os.close(fd)
            raise

    def _followed(self, target: str) -> list[str]:
        """What a link to `target` makes of the walk (absolute: from the root again)."""
        if target.startswith("/"):
            return self._under_root(target)
        return [p for p in target.split("/") if p not in ("", ".")]

    def _reopen(self, parts: list[str]) -> int:
        """The directory `parts` from the root again (none of them is a link: each was
        opened as a directory with O_NOFOLLOW on the way here)."""
        fd = os.dup(self._root)
        for part in parts:
            try:
                child = os.open(part, _OPEN | os.O_DIRECTORY, dir_fd=fd)
            finally:
                os.close(fd)
            fd = child
        return fd


@dataclass
class ArtifactKeeper:
    """Keeps a run's artifacts in its directory (`run_path()`: the run moves between state
    directories) within one `Budget`."""

    run_path: Callable[[], Path]
    budget: Budget

    def keep(
        self, job_id: str, tree: WorkspaceTree, path: str, name: str | None
    ) -> tuple[str, list[ArtifactFile]]:
        """Copy `path` of `tree` to `artifacts/<job>/<name>`; the name and its files, hashed.
        Raises `ArtifactRefused` naming the job."""
        name = self._name(job_id, path, name)
        job_dir = self.run_path() / ARTIFACTS_DIR / job_id
        partial = job_dir / f".{name}.partial"
        copy = _Copy(job_id, path, name, self.budget)
        try:
            try:
                self._copy(copy, tree, job_dir, partial)
            except OSError as exc:  # the store's side: a full disk, a file that went away
                raise ArtifactRefused(
                    f"job {job_id!r}: rt.artifact({path!r}) could not be kept in {job_dir}: "
                    f"{exc.strerror or exc}"
                ) from exc
        except BaseException:
            self.budget.give_back(copy.taken, copy.entries)
            _remove(partial)
            with suppress(OSError):  # a job that kept nothing leaves no folder
                job_dir.rmdir()
            raise
        return name, copy.files

    @staticmethod
    def _copy(copy: _Copy, tree: WorkspaceTree, job_dir: Path, partial: Path) -> None:
        """Copy into `partial`, then rename it to the artifact's name: a reader never sees
        half an artifact under its name."""
        job_dir.mkdir(parents=True, exist_ok=True)
        final = job_dir / copy.name
        if final.exists() or final.is_symlink():
            raise ArtifactRefused(
                f"job {copy.job_id!r}: an artifact named {copy.name!r} is already kept"
            )
        shutil.rmtree(partial, ignore_errors=True)
        confined = ConfinedTree(tree)
        try:
            copy.run(confined, partial)
        finally:
            confined.close()
        os.rename(partial, final)

    def _name(self, job_id: str, path: str, name: str | None) -> str:
        if not path or "\0" in path:
            raise ArtifactRefused(f"job {job_id!r}: rt.artifact needs a path in the workspace")
        if name is None:
            name = next((p for p in reversed(path.split("/")) if p not in ("", ".", "..")), "")
        if not ARTIFACT_NAME.fullmatch(name) or name in (".", ".."):
            raise ArtifactRefused(
                f"job {job_id!r}: {name!r} cannot name an artifact: use letters, digits and "
                "._+- (not starting with . or -), at most 128 characters; pass name=..."
            )
        return name


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(OSError):  # gone, or never made (its folder could not be)
            path.unlink()


@dataclass
class _Copy:
    """One `rt.artifact` call's copy: the files written, and the bytes taken."""

    job_id: str
    path: str
    name: str
    budget: Budget
    files: list[ArtifactFile] = field(default_factory=list)
    taken: int = 0
    entries: int = 0

    def _entry(self) -> None:
        self.budget.take_entry(self.job_id)
        self.entries += 1

    def run(self, tree: ConfinedTree, destination: Path) -> None:
        top = self._open(tree, self.path, self.path)
        try:
            if stat.S_ISDIR(top.mode):
                self._entry()
                destination.mkdir()
                self._directory(tree, top, destination, (), ())
            else:
                self._file(top, destination, "")
        finally:
            os.close(top.fd)

    def _open(self, tree: ConfinedTree, path: str, shown: str) -> _Resolved:
        where = f"job {self.job_id!r}: rt.artifact({self.path!r})"
        try:
            found = tree.open(path)
        except _Escape:
            raise ArtifactRefused(
                f"{where}: {shown!r} leads out of the workspace ({tree.tree.absolute}); "
                "only files in the workspace can be kept"
            ) from None
        except OSError as exc:
            raise ArtifactRefused(f"{where}: cannot read {shown!r}: {exc.strerror or exc}") from exc
        if not (stat.S_ISDIR(found.mode) or stat.S_ISREG(found.mode)):
            os.close(found.fd)
            raise ArtifactRefused(f"{where}: {shown!r} is neither a file nor a directory")
        return found

    def _directory(
        self,
        tree: ConfinedTree,
        here: _Resolved,
        destination: Path,
        inside: tuple[str, ...],
        copying: tuple[tuple[str, ...], ...],
    ) -> None:
        copying = (*copying, here.parts)
        for entry in sorted(os.listdir(here.fd)):
            relative = (*inside, entry)
            shown = "/".join((self.path.rstrip("/"), *relative))
            child = self._open(tree, "/".join((*here.parts, entry)), shown)
            try:
                if stat.S_ISDIR(child.mode):
                    if any(child.parts == p[: len(child.parts)] for p in copying):
                        raise ArtifactRefused(
                            f"job {self.job_id!r}: rt.artifact({self.path!r}): {shown!r} "
                            "links back to a directory being kept (a loop)"
                        )
                    self._entry()
                    (destination / entry).mkdir()
                    self._directory(tree, child, destination / entry, relative, copying)
                else:
                    self._file(child, destination / entry, "/".join(relative))
            finally:
                os.close(child.fd)

    def _file(self, source: _Resolved, destination: Path, relative: str) -> None:
        self._entry()
        digest = hashlib.sha256()
        size = 0
        out = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            while chunk := os.read(source.fd, _CHUNK):
                self.budget.take(len(chunk), self.job_id)
                self.taken += len(chunk)
                size += len(chunk)
                digest.update(chunk)
                os.write(out, chunk)
        finally:
            os.close(out)
        self.files.append(
            ArtifactFile(name=self.name, path=relative, size=size, sha256=digest.hexdigest())
        )


@contextmanager
def host_tree(workspace: Path) -> Iterator[WorkspaceTree]:
    """The workspace as it lies on this machine, which is also the path its commands
    know it by (host runs)."""
    yield WorkspaceTree(workspace, str(workspace))
