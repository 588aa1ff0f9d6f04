"""The one error tree of quire.

Every failure a user can meet is a `QuireError` subclass whose message says
what went wrong and what it concerns (file, job, command, container). The
CLI turns them into `error: <message>` and the exit code in `exit_code`:

    0   run complete, or nothing to run
    1   run finished, at least one job failed            (not an exception)
    2   bad input: usage, repository, revision, pipeline, config
    3   environment: docker, Dockerfile, image, container, workspace
    70  a bug of quire's own (an internal error)
    130 interrupted

`ExitCode` holds them; nothing else in quire writes the numbers.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from enum import IntEnum


class ExitCode(IntEnum):
    """What quire's exit status says (the README's table)."""

    ok = 0
    jobs_failed = 1
    bad_input = 2
    environment = 3
    internal = 70  # EX_SOFTWARE: not 1, which means "a job failed"
    interrupted = 130


class QuireError(Exception):
    """Base of every error quire reports to a person."""

    exit_code: int = ExitCode.bad_input

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# --- bad input (exit 2) -------------------------------------------------------------------------


class UsageError(QuireError):
    """A command-line argument that cannot be used."""


class NotARepository(QuireError):
    """The path given as the repository is not a git repository."""


class UnknownRevision(QuireError):
    """The revision does not name a commit in the repository."""


class ConfigError(QuireError):
    """The config file exists but cannot be read or understood."""


class UnknownSecret(QuireError):
    """A job asked for a secret that is not configured."""


class RunNotFound(QuireError):
    """A run id or prefix given to a history command matches no run (or several)."""


class PipelineProblem:
    """One problem in ci.py, with the line it is on (None when no line applies)."""

    __slots__ = ("line", "text")

    def __init__(self, text: str, line: int | None) -> None:
        self.text = text
        self.line = line

    def render(self, file: str) -> str:
        return f"{file}:{self.line}: {self.text}" if self.line else f"{file}: {self.text}"


class PipelineError(QuireError):
    """ci.py cannot be loaded or its job graph is invalid; carries every problem found."""

    def __init__(self, file: str, problems: Sequence[PipelineProblem]) -> None:
        self.file = file
        self.problems = list(problems)
        lines = [p.render(file) for p in self.problems]
        if len(lines) == 1:
            message = f"invalid pipeline: {lines[0]}"
        else:
            message = f"invalid pipeline, {len(lines)} problems:\n  " + "\n  ".join(lines)
        super().__init__(message)


# --- environment (exit 3) -----------------------------------------------------------------------


class EnvironmentProblem(QuireError):
    """Something around quire (a program, the docker engine, the disk) failed."""

    exit_code = ExitCode.environment


class ProgramNotFound(EnvironmentProblem):
    """An external program quire needs (git, tar, docker) is not installed."""


class ToolFailed(EnvironmentProblem):
    """An external program quire drives exited non-zero; carries its stderr tail."""


class WorkspaceMaterializationFailed(EnvironmentProblem):
    """`git archive | tar -x` into the run's workspace failed."""


class FetchFailed(EnvironmentProblem):
    """A queued run's pushed object could not be fetched from its repository's URL into
    the worker's mirror."""


class DockerUnavailable(EnvironmentProblem):
    """`docker info` failed: no engine, no permission, or a wrong DOCKER_HOST."""


class DockerfileMissing(EnvironmentProblem):
    """A docker run needs `.quire/Dockerfile` at the revision."""


class ImageBuildFailed(EnvironmentProblem):
    """`docker build` of the run's image failed."""


class ContainerStartFailed(EnvironmentProblem):
    """`docker run` of the run's container failed."""


class SandboxUnavailable(EnvironmentProblem):
    """The job host's sandbox (bubblewrap) cannot run here: not installed, or no namespaces."""


# --- raised inside jobs (they fail the job, not quire) ------------------------------------------


class JobError(QuireError):
    """An error a job function meets through the Runtime; it fails that job."""


class CommandFailed(JobError):
    """`rt.sh(..., check=True)` saw a non-zero exit."""


class CommandTimedOut(JobError):
    """A command ran past its timeout and was killed."""


class JobTimedOut(JobError):
    """A job ran past its timeout."""


class BadCommand(JobError):
    """`rt.sh` got something that is neither an argv list nor a string."""


class JobAccessError(JobError):
    """`rt.jobs(name)` asked for a job that is not a transitive input."""


class ArtifactRefused(JobError):
    """`rt.artifact` was asked for something quire will not keep: a path outside the
    workspace (or a symlink leading out), a bad name, or more than `[artifacts] max_size`."""


class StoreWriteFailed(EnvironmentProblem):
    """A run's records or logs could not be written (a full disk, a read-only state dir)."""

    @classmethod
    def of(cls, path: object, exc: OSError) -> StoreWriteFailed:
        """The error for `exc` while writing `path`, saying what a person can do."""
        why = exc.strerror or str(exc)
        hint = ""
        if exc.errno == errno.ENOSPC:
            hint = " (the disk is full: free some space; `quire ci reconcile` then tidies up)"
        return cls(f"cannot write {path}: {why}{hint}")


class ContainerDied(EnvironmentProblem):
    """The run's container stopped while the run still needed it."""


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived; the run is torn down and recorded as failed.

    The one error outside the QuireError tree, on purpose: like Ctrl-C's own
    KeyboardInterrupt it must get past a job's `except Exception:`.
    """

    exit_code = ExitCode.interrupted

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
