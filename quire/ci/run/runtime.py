"""The Runtime a job function receives: `sh`, `secret`, `jobs`.

Each `rt.sh` output chunk takes two roads: the raw bytes go to the
`ShOutput` the job gets back (the last `capture_limit` bytes of each
stream), and the redacted bytes go to the job's log.jsonl and the terminal
as they arrive.
"""

from __future__ import annotations

import shlex
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from quire.ci.pipeline import JobDef, Pipeline
from quire.ci.run.executors.base import Command, Executor
from quire.ci.run.redact import Redactor, StreamRedactor
from quire.ci.run.report import Reporter, StreamName
from quire.ci.store.logs import ChunkEncoder, LogWriter
from quire.config import Secrets
from quire.errors import (
    BadCommand,
    CommandFailed,
    CommandTimedOut,
    JobAccessError,
    JobError,
    JobTimedOut,
)


@dataclass(frozen=True)
class ShOutput:
    """What `rt.sh` returns. `exit` < 0: killed by that signal.

    `stdout`/`stderr` are UTF-8 text (invalid bytes replaced), the last
    `capture_limit` bytes of each stream; `*_truncated` says the start was
    dropped (the log keeps everything).
    """

    cmd: str | list[str]
    exit: int
    stdout: str
    stderr: str
    started_at: datetime
    duration_s: float
    stdout_truncated: bool = False
    stderr_truncated: bool = False


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
    """Everything a Runtime needs about the run around its job."""

    job: JobDef
    pipeline: Pipeline
    executor: Executor
    outputs: Mapping[str, Mapping[str, Any]]
    secrets: Secrets
    redactor: Redactor
    log: LogWriter
    reporter: Reporter
    capture_limit: int
    deadline: float | None = None  # time.monotonic() the job must end by


class _OutputSink:
    """Fans one command's output out to capture, log and terminal."""

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx
        self.captured = {s: TailBuffer(ctx.capture_limit) for s in ("stdout", "stderr")}
        self._redactors: dict[str, StreamRedactor] = {
            s: ctx.redactor.stream() for s in ("stdout", "stderr")
        }
        self._encoders = {s: ChunkEncoder() for s in ("stdout", "stderr")}

    def __call__(self, stream: StreamName, chunk: bytes) -> None:
        self.captured[stream].write(chunk)
        self._emit(stream, self._redactors[stream].feed(chunk))

    def _emit(self, stream: StreamName, safe: bytes) -> None:
        if not safe:
            return
        fields = self._encoders[stream].feed(safe)
        if fields:
            self._ctx.log.event(stream, **fields)
        self._ctx.reporter.output(self._ctx.job.id, stream, safe)

    def close(self) -> None:
        for stream in ("stdout", "stderr"):
            self._emit(stream, self._redactors[stream].flush())
            fields = self._encoders[stream].flush()
            if fields:
                self._ctx.log.event(stream, **fields)


class Runtime:
    """The object every job function receives."""

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx

    @property
    def job_id(self) -> str:
        """The id of the job this runtime belongs to."""
        return self._ctx.job.id

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
        ctx = self._ctx
        limit, by_job = self._timeout(timeout)
        command = Command.from_user(self._checked(cmd), self._checked_env(env), limit)
        display = self._display(cmd)
        ctx.log.event("sh-start", cmd=display, env=sorted(command.env))
        ctx.reporter.command_started(ctx.job.id, display)
        sink = _OutputSink(ctx)
        try:
            result = ctx.executor.execute(command, sink)
        finally:
            sink.close()
        ctx.log.event("sh-exit", exit=result.exit, duration_s=round(result.duration_s, 6))
        ctx.reporter.command_finished(ctx.job.id, result.exit, result.duration_s)
        out = ShOutput(
            cmd=cmd if isinstance(cmd, str) else list(cmd),
            exit=result.exit,
            stdout=sink.captured["stdout"].text(),
            stderr=sink.captured["stderr"].text(),
            started_at=result.started_at,
            duration_s=result.duration_s,
            stdout_truncated=sink.captured["stdout"].truncated,
            stderr_truncated=sink.captured["stderr"].truncated,
        )
        if result.timed_out:
            raise self._timed_out(display, timeout, by_job)
        if check and result.exit != 0:
            raise CommandFailed(f"command `{display}` exited {result.exit}")
        return out

    def _display(self, cmd: str | Sequence[str]) -> str:
        """The command as shown and logged; each argv part is masked BEFORE quoting,
        since quoting could split a secret holding a quote."""
        if isinstance(cmd, str):
            return self._ctx.redactor.redact(cmd)
        return shlex.join(self._ctx.redactor.redact(part) for part in cmd)

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
            limit = self._ctx.job.timeout
            return JobTimedOut(
                f"job {self.job_id!r} ran past its timeout of {limit:g}s "
                f"(@job timeout={limit:g}) while running `{display}`"
            )
        return CommandTimedOut(
            f"command `{display}` ran past its timeout of {asked:g}s and was killed"
        )

    def secret(self, name: str) -> str:
        """The value of a configured secret; raises `UnknownSecret`.

        The value is hidden (`***`) everywhere quire shows or stores text.
        """
        value = self._ctx.secrets.get(name)
        self._ctx.redactor.add(value)
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
