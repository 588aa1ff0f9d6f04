"""quire's side of a job's runtime: what `rt.sh`, `rt.secret`, `rt.jobs` and `rt.log`
do, asked for by the job's Python from the job host (quire/jobhost/runtime.py).

Each `rt.sh` output chunk takes two roads: the raw bytes go to the tail the
job gets back in its `ShOutput` (the last `capture_limit` bytes of each
stream), and the same bytes go to the run's outlet, which masks secrets
and hands them to the logs and the terminal as they arrive.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from quire import interrupts
from quire.ci.events import CommandFinished, CommandStarted, StreamName
from quire.ci.events import Message as Message_
from quire.ci.pipeline import JobDef, Pipeline
from quire.ci.run.artifacts import ArtifactKeeper
from quire.ci.run.executors.base import Command, Executor
from quire.ci.run.jobhost import ArtifactRequest, Request, ShRequest
from quire.ci.run.outlet import RunOutlet
from quire.ci.vocabulary import ArtifactFile, format_size
from quire.config import Secrets
from quire.errors import (
    ArtifactRefused,
    BadCommand,
    CommandFailed,
    CommandTimedOut,
    ContainerDied,
    DockerUnavailable,
    JobAccessError,
    JobError,
    JobTimedOut,
    QuireError,
    StoreWriteFailed,
)
from quire.jobhost.protocol import Message


class TailBuffer:
    """Keeps the last `limit` bytes written to it: chunks are kept whole and the
    oldest dropped once the rest still covers `limit`, so memory stays under
    `limit` + one chunk and nothing is copied until `text()`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.truncated = False
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def write(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        while self._size - len(self._chunks[0]) >= self.limit:
            self._size -= len(self._chunks.popleft())
            self.truncated = True

    def text(self) -> str:
        data = b"".join(self._chunks)
        if len(data) > self.limit:
            data = data[-self.limit :]
            self.truncated = True
        return data.decode("utf-8", errors="replace")


@dataclass
class JobContext:
    """What a Runtime needs about the run around its job."""

    job: JobDef
    pipeline: Pipeline
    executor: Executor
    outputs: Mapping[str, Mapping[str, Any]]
    secrets: Secrets
    outlet: RunOutlet
    capture_limit: int
    deadline: float | None = None  # time.monotonic() the job must end by
    # What every command of the run sees (CI, QUIRE_RUN_ID, ...; QUIRE_JOB is added here).
    run_env: Mapping[str, str] = field(default_factory=dict)
    # Where `rt.artifact` copies to (None: this run keeps none), and the files it kept.
    keeper: ArtifactKeeper | None = None
    kept: list[ArtifactFile] = field(default_factory=list)


class _OutputSink:
    """One command's output: kept for its ShOutput, and handed to the outlet."""

    def __init__(self, ctx: JobContext) -> None:
        self._job = ctx.job.id
        self._outlet = ctx.outlet
        self.captured = {s: TailBuffer(ctx.capture_limit) for s in ("stdout", "stderr")}

    def __call__(self, stream: StreamName, chunk: bytes) -> None:
        self.captured[stream].write(chunk)
        self._outlet.output(self._job, stream, chunk)
        self._outlet.check()  # output that cannot be logged stops the command


# Errors that end the run, not just the job: a dead container, a lost docker daemon, logs
# that cannot be written. They go to JobRunner, never to the job's Python.
RUN_ENDING = (ContainerDied, DockerUnavailable, StoreWriteFailed)


class JobServer:
    """quire's side of one job's runtime: answers what the job's Python asks for over its
    socket (`rt.sh`, `rt.secret`, `rt.jobs`, `rt.log`, its own output)."""

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx

    @property
    def job_id(self) -> str:
        return self._ctx.job.id

    def handle(self, request: Request) -> Message:
        """The answer to one request; quire's errors become `error` answers (raised as
        themselves in the job), an interrupt goes on."""
        try:
            if isinstance(request, ShRequest):
                return self.sh(request)
            if isinstance(request, ArtifactRequest):
                return {"t": "value", "value": self.artifact(request.path, request.name)}
            if request.kind == "secret":
                return {"t": "value", "value": self.secret(request.name)}
            return {"t": "value", "value": dict(self.jobs(request.name))}
        except RUN_ENDING:
            raise  # the run cannot go on, whatever the job would make of it
        except QuireError as exc:
            return {"t": "error", "kind": type(exc).__name__, "message": str(exc)}

    def sh(self, request: ShRequest) -> Message:
        """Run the command in the workspace; its outcome for the job's `ShOutput`."""
        interrupts.check()  # a caught Ctrl-C still stops the run: no command after it
        ctx = self._ctx
        ctx.outlet.check()  # nor after the run's logs could not be written
        cmd, given = request.cmd, self._checked_env(request.env)
        limit, by_job = self._timeout(request.timeout)
        environment = {**ctx.run_env, "QUIRE_JOB": ctx.job.id, **given}
        command = Command.from_user(self._checked(cmd), environment, limit)
        shown = ctx.outlet.emit(CommandStarted(ctx.job.id, _as_given(cmd), tuple(sorted(given))))
        display = shown.display  # masked: fit for error messages
        sink = _OutputSink(ctx)
        result = ctx.executor.execute(command, sink)
        interrupts.check()  # killed by an interrupt (jobs side by side): the job stops here
        ctx.outlet.emit(
            CommandFinished(ctx.job.id, result.exit, result.duration_s, result.timed_out)
        )
        if result.timed_out:
            raise self._timed_out(display, request.timeout, by_job)
        if request.check and result.exit != 0:
            raise CommandFailed(f"command `{display}` exited {result.exit}")
        return {
            "t": "sh_done",
            "exit": result.exit,
            "stdout": sink.captured["stdout"].text(),
            "stderr": sink.captured["stderr"].text(),
            "started_at": result.started_at.isoformat(),
            "duration_s": result.duration_s,
            "stdout_truncated": sink.captured["stdout"].truncated,
            "stderr_truncated": sink.captured["stderr"].truncated,
        }

    def artifact(self, path: str, name: str | None) -> str:
        """Copy `path` of the workspace into the run's artifacts (quire/ci/run/artifacts.py);
        the name it is kept under. Raises `ArtifactRefused`."""
        interrupts.check()
        ctx = self._ctx
        if ctx.keeper is None:
            raise ArtifactRefused(f"job {self.job_id!r}: this run keeps no artifacts")
        with ctx.executor.workspace_tree() as tree:
            kept, files = ctx.keeper.keep(self.job_id, tree, path, name)
        ctx.kept.extend(files)
        size = format_size(sum(f.size for f in files))
        ctx.outlet.emit(Message_(self.job_id, f"artifact {kept}: {len(files)} file(s), {size}"))
        return kept

    def log(self, message: str) -> None:
        """A line of the job's own, in its output."""
        self._ctx.outlet.emit(Message_(self.job_id, message))

    def output(self, stream: StreamName, data: bytes) -> None:
        """What the job's Python printed (print, sys.stdout/sys.stderr, logging)."""
        self._ctx.outlet.output(self.job_id, stream, data)

    def _checked(self, cmd: object) -> str | Sequence[str]:
        if isinstance(cmd, str) and cmd.strip():
            return cmd
        if isinstance(cmd, list | tuple) and cmd and all(isinstance(part, str) for part in cmd):
            return cmd
        raise BadCommand(
            f"job {self.job_id!r}: rt.sh needs a non-empty list of strings (argv) or a "
            f"non-empty string (run with sh -c), got {type(cmd).__name__}: {cmd!r:.80}"
        )

    def _checked_env(self, env: object) -> Mapping[str, str]:
        if env is None:
            return {}
        if isinstance(env, Mapping) and all(
            isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in env.items()
        ):
            return env
        raise BadCommand(f"job {self.job_id!r}: rt.sh env must map variable names to strings")

    def _timeout(self, asked: float | None) -> tuple[float | None, bool]:
        """The limit for the next command, and whether it is the job's (not the command's)."""
        deadline = self._ctx.deadline
        if deadline is None:
            return asked, False
        left = max(0.001, deadline - time.monotonic())
        return (asked, False) if asked is not None and asked <= left else (left, True)

    def _timed_out(self, display: str, asked: float | None, by_job: bool) -> JobError:
        if by_job:
            return self.job_timed_out(f"while running `{display}`")
        return CommandTimedOut(
            f"command `{display}` ran past its timeout of {asked:g}s and was killed"
        )

    def job_timed_out(self, doing: str) -> JobTimedOut:
        limit = self._ctx.job.timeout or 0
        return JobTimedOut(
            f"job {self.job_id!r} ran past its timeout of {limit:g}s "
            f"(@job timeout={limit:g}) {doing}"
        )

    def secret(self, name: str) -> str:
        """The value of a configured secret; raises `UnknownSecret`. Hidden (`***`) from here
        on everywhere quire shows or stores text."""
        value = self._ctx.secrets.get(name)
        self._ctx.outlet.hide(value)
        return value

    def jobs(self, name: str) -> Mapping[str, Any]:
        """The outputs of `name`, a transitive input of this job (or `quire/push`)."""
        ctx = self._ctx
        if name == ctx.job.id:
            raise JobAccessError(f"job {ctx.job.id!r} cannot read its own outputs")
        if name not in ctx.pipeline.ancestors(ctx.job.id):
            raise JobAccessError(
                f"job {ctx.job.id!r} cannot read outputs of {name!r}: it is not one of "
                f"{ctx.job.id!r}'s inputs, directly or transitively"
            )
        return ctx.outputs.get(name, {})


def _as_given(cmd: str | Sequence[str]) -> str | tuple[str, ...]:
    return cmd if isinstance(cmd, str) else tuple(cmd)
