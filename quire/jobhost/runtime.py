"""The job side of the runtime: the `Runtime` a job function receives, in the job process.

Every call is a request to quire over the job's socket: quire runs the
command, answers with its outcome, and keeps the secrets, records and
timeouts. An error answer is raised here as the same `quire.errors` class
quire would have raised in-process, so a pipeline's `except` clauses work.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from quire import errors
from quire.jobhost.protocol import Channel, Message, ProtocolError

# The errors quire may answer with, raised in the job as themselves.
_RAISED: dict[str, type[errors.QuireError]] = {
    cls.__name__: cls
    for cls in (
        errors.ArtifactRefused,
        errors.BadCommand,
        errors.CommandFailed,
        errors.CommandTimedOut,
        errors.JobTimedOut,
        errors.JobAccessError,
        errors.JobError,
        errors.UnknownSecret,
    )
}


class ShOutput(NamedTuple):
    """What `rt.sh` returns. `exit` < 0: killed by that signal.

    `stdout`/`stderr` are UTF-8 text (invalid bytes replaced), the last
    `capture_limit` bytes of each stream; `*_truncated` says the start was
    dropped (the log keeps everything). A NamedTuple, not a dataclass: the job
    host imports this at every run's start.
    """

    cmd: str | list[str]
    exit: int
    stdout: str
    stderr: str
    started_at: datetime
    duration_s: float
    stdout_truncated: bool = False
    stderr_truncated: bool = False


class JobLink:
    """The job process's end of its socket: one request at a time, only from the process
    that owns it (a fork of the job cannot speak for it)."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._owner = os.getpid()
        self._lock = threading.Lock()  # a job's own threads may call rt.sh too

    def _check_owner(self) -> None:
        if os.getpid() != self._owner:
            raise RuntimeError(
                "this process was forked from a job: only the job's own process talks to quire"
            )

    def tell(self, message: Message) -> None:
        """A message that needs no answer (output, a log line)."""
        self._check_owner()
        with self._lock:
            self._channel.send(message)

    def ask(self, message: Message) -> Message:
        """A request and its answer; an `error` answer is raised as its class."""
        self._check_owner()
        with self._lock:
            self._channel.send(message)
            answer = self._channel.receive()
        if answer is None:
            raise ProtocolError("quire closed the job's socket")
        return unless_error(answer)

    def owned(self) -> bool:
        return os.getpid() == self._owner


def unless_error(answer: Message) -> Message:
    """`answer` as it is, or its `error` raised as the class quire named."""
    if answer["t"] == "error":
        cls = _RAISED.get(str(answer.get("kind")), errors.JobError)
        raise cls(str(answer.get("message", "")))
    return answer


class Runtime:
    """The object every job function receives."""

    def __init__(self, link: JobLink, job_id: str) -> None:
        self._link = link
        self._job_id = job_id

    @property
    def job_id(self) -> str:
        """The id of the job this runtime belongs to."""
        return self._job_id

    def sh(
        self,
        cmd: str | Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        check: bool = False,
        timeout: float | None = None,
    ) -> ShOutput:
        """Run `cmd` (argv list, or a string for `sh -c`) in the workspace.

        `env` adds to the environment. A non-zero exit is returned in
        `.exit`; with `check=True` it raises `CommandFailed`. A command
        running past `timeout` seconds (or past the job's timeout) is
        killed and raises `CommandTimedOut`.
        """
        if not (isinstance(cmd, str) and cmd.strip()) and not (_is_argv(cmd) and cmd):
            raise errors.BadCommand(
                f"job {self._job_id!r}: rt.sh needs a non-empty list of strings (argv) or a "
                f"non-empty string (run with sh -c), got {type(cmd).__name__}: {cmd!r:.80}"
            )
        if env is not None and not (
            isinstance(env, Mapping)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        ):
            raise errors.BadCommand(
                f"job {self._job_id!r}: rt.sh env must map variable names to strings"
            )
        if timeout is not None and not isinstance(timeout, int | float):
            raise errors.BadCommand(f"job {self._job_id!r}: rt.sh timeout must be seconds")
        answer = self._link.ask(
            {
                "t": "sh",
                "cmd": cmd if isinstance(cmd, str) else list(cmd),
                "env": None if env is None else dict(env),
                "check": bool(check),
                "timeout": timeout,
            }
        )
        return ShOutput(
            cmd=cmd if isinstance(cmd, str) else list(cmd),
            exit=int(answer["exit"]),
            stdout=str(answer["stdout"]),
            stderr=str(answer["stderr"]),
            started_at=datetime.fromisoformat(str(answer["started_at"])),
            duration_s=float(answer["duration_s"]),
            stdout_truncated=bool(answer.get("stdout_truncated")),
            stderr_truncated=bool(answer.get("stderr_truncated")),
        )

    def artifact(self, path: str, name: str | None = None) -> str:
        """Keep `path` (a file or a directory of the workspace, relative to it) in the run's
        record as `artifacts/<job>/<name>` (default name: the path's last part); returns
        the name. quire copies it, not this process: a path outside the workspace, a
        symlink leading out, or more than `[artifacts] max_size` per run raises
        `ArtifactRefused`."""
        if not isinstance(path, str | os.PathLike) or (
            name is not None and not isinstance(name, str)
        ):
            raise errors.ArtifactRefused(
                f"job {self._job_id!r}: rt.artifact needs a path (str) and a name (str or None)"
            )
        answer = self._link.ask({"t": "artifact", "path": os.fspath(path), "name": name})
        return str(answer["value"])

    def log(self, message: str) -> None:
        """Show `message` as a line of this job's output (logged, masked, quiet under
        `--quiet` like the rest of the job's output)."""
        self._link.tell({"t": "log", "message": str(message)})

    def secret(self, name: str) -> str:
        """The value of a configured secret this repository may read; raises
        `UnknownSecret`. The value is hidden (`***`) everywhere quire shows or stores text."""
        return str(self._link.ask({"t": "secret", "name": str(name)})["value"])

    def jobs(self, name: str) -> Mapping[str, Any]:
        """The outputs of `name`, a transitive input of this job (or `quire/push`)."""
        value = self._link.ask({"t": "jobs", "name": str(name)})["value"]
        return dict(value) if isinstance(value, dict) else {}


def _is_argv(cmd: object) -> bool:
    return isinstance(cmd, list | tuple) and all(isinstance(part, str) for part in cmd)
