"""A run's artifacts read back: listed from the jobs' records, opened, copied out.

    <run dir>/artifacts/<job>/<name>[/<path>]   what `rt.artifact` kept
    <run dir>/jobs/<job>/state.yml              artifacts: [{name, path, size, sha256}]

Only files the job's record lists are ever opened, and each is opened one
component at a time from the run's directory with O_NOFOLLOW: a name from a
URL or the command line cannot reach anything else (no `..`, no link, no
file the record does not name). `quire ci artifacts`, `show` and the web
page's downloads read through here; `prune` removes the run's directory,
artifacts and all.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from quire.ci.vocabulary import ARTIFACTS_DIR, ArtifactFile, JobState
from quire.errors import QuireError, UsageError

_CHUNK = 1024 * 1024


class ArtifactNotFound(QuireError):
    """No such artifact in the run (or its file is not what the record says)."""


@dataclass(frozen=True)
class KeptFile:
    """One kept file of a run: its job and its record."""

    job: str
    file: ArtifactFile

    @property
    def relative(self) -> str:
        """Its path under `artifacts/`: `<job>/<name>[/<path>]`."""
        return f"{self.job}/{self.file.relative}"


def kept_files(jobs: list[JobState], job: str | None = None) -> list[KeptFile]:
    """The files the jobs' records list (one job's with `job`), in job then name order."""
    return [
        KeptFile(state.job_id, item)
        for state in jobs
        if job is None or state.job_id == job
        for item in state.artifacts
    ]


def open_kept(run_path: Path, kept: KeptFile) -> BinaryIO:
    """The kept file, opened for reading without following any link below the run's
    directory; raises `ArtifactNotFound`."""
    parts = [ARTIFACTS_DIR, kept.job, *kept.file.relative.split("/")]
    if any(part in ("", ".", "..") or "\0" in part for part in parts):
        raise ArtifactNotFound(f"artifact {kept.relative!r}: not a name quire keeps")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(run_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ArtifactNotFound(f"artifact {kept.relative!r}: {exc.strerror}") from exc
    try:
        for part in parts:
            child = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = child
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EISDIR, "not a file")
    except OSError as exc:
        os.close(fd)
        why = "a link" if exc.errno == errno.ELOOP else exc.strerror
        raise ArtifactNotFound(f"artifact {kept.relative!r} of {run_path}: {why}") from exc
    return os.fdopen(fd, "rb")


def find_kept(jobs: list[JobState], job: str, relative: str) -> KeptFile:
    """The kept file `<name>[/<path>]` of `job`, as its record lists it; raises
    `ArtifactNotFound`."""
    for kept in kept_files(jobs, job):
        if kept.file.relative == relative:
            return kept
    raise ArtifactNotFound(f"job {job!r} kept no artifact file {relative!r}")


def copy_out(run_path: Path, kept: KeptFile, out_dir: Path) -> Path:
    """Copy one kept file to `out_dir/<job>/<name>[/<path>]` (replacing a file there),
    checking its sha256 against the record; the path written. Raises `ArtifactNotFound`
    or, for a file that changed since it was kept, `ArtifactNotFound` saying so."""
    target = out_dir.joinpath(kept.job, *kept.file.relative.split("/"))
    partial = target.with_name(f".{target.name}.partial")
    digest = hashlib.sha256()
    with open_kept(run_path, kept) as source:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            out = open(partial, "wb")  # noqa: SIM115 (closed below, the error is ours)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise  # the machine's state: the CLI says so (exit 3)
            raise UsageError(
                f"--out {out_dir}: cannot write {exc.filename or target}: {exc.strerror or exc}"
            ) from exc
        with out:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    if digest.hexdigest() != kept.file.sha256:
        partial.unlink()
        raise ArtifactNotFound(
            f"artifact {kept.relative!r} of {run_path} no longer matches the sha256 its job "
            "recorded: not copied"
        )
    os.replace(partial, target)
    return target
