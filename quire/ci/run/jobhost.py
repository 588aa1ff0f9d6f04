"""quire's side of the job host: start it, load the pipeline in it, run jobs in it.

The protocol is in docs/architecture.md ("The job host"); its wire format in
quire/jobhost/protocol.py. Messages from the job host are checked here,
field by field, into typed values before anything uses them: whatever the
pipeline's Python sends, the worst it can do is fail its own job.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from quire.ci.events import StreamName
from quire.ci.pipeline import JOB_ID, CacheDef, JobDef, Pipeline, Registration, validate
from quire.errors import EnvironmentProblem, PipelineError, PipelineProblem, QuireError
from quire.jobhost.protocol import VERSION, Channel, Message, ProtocolError, pack
from quire.tools import process

# All the environment a sandboxed job host gets (bwrap starts it from an empty one): it
# never sees quire's, which may hold the values of `{ env = ... }` secrets.
SANDBOX_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp", "TMPDIR": "/tmp"}

# How long a job's processes get between SIGTERM and SIGKILL when it is stopped.
TERM_GRACE_S = 5.0


class JobHostFailed(EnvironmentProblem):
    """The job host could not be started, or ended while quire still needed it."""


class BadMessage(QuireError):
    """The job host (a pipeline's Python) sent something that is not a message we expect."""


# --- what comes back ----------------------------------------------------------------------------


def _field(
    message: Message, name: str, kind: type | tuple[type, ...], *, optional: bool = False
) -> Any:
    value = message.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise BadMessage(f"{message.get('t')!r} message: field {name!r} is {value!r:.60}")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


@dataclass(frozen=True)
class ShRequest:
    cmd: str | list[str]
    env: dict[str, str] | None
    check: bool
    timeout: float | None


@dataclass(frozen=True)
class Named:
    """`secret NAME` or `jobs NAME`."""

    kind: str
    name: str


@dataclass(frozen=True)
class ArtifactRequest:
    """`rt.artifact(path, name)`: quire copies it (quire/ci/run/artifacts.py)."""

    path: str
    name: str | None


@dataclass(frozen=True)
class Out:
    stream: StreamName
    data: bytes


@dataclass(frozen=True)
class LogLine:
    message: str


@dataclass(frozen=True)
class JobEnd:
    """How the job's Python ended: done (outputs), skip (reason), failed (error), or died
    (its process ended without saying, with `status`)."""

    kind: str
    outputs: dict[str, Any] | None = None
    text: str | None = None
    status: int | None = None


FromJob = ShRequest | Named | ArtifactRequest | Out | LogLine | JobEnd
# What the job asks and waits for an answer to.
Request = ShRequest | Named | ArtifactRequest


def parse(message: Message) -> FromJob:
    """A message from a job process, checked; raises `BadMessage`."""
    from quire.jobhost.protocol import unpack

    kind = message["t"]
    if kind == "sh":
        cmd = _field(message, "cmd", (str, list))
        if isinstance(cmd, list) and not all(isinstance(part, str) for part in cmd):
            raise BadMessage("'sh' message: cmd is not a list of strings")
        env = _field(message, "env", dict, optional=True)
        if env is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise BadMessage("'sh' message: env does not map strings to strings")
        timeout = _field(message, "timeout", (int, float), optional=True)
        return ShRequest(cmd, env, bool(message.get("check")), timeout)
    if kind in ("secret", "jobs"):
        return Named(kind, _field(message, "name", str))
    if kind == "artifact":
        return ArtifactRequest(
            _field(message, "path", str), _field(message, "name", str, optional=True)
        )
    if kind == "out":
        stream = _field(message, "stream", str)
        if stream != "stdout" and stream != "stderr":
            raise BadMessage(f"'out' message: no stream {stream!r}")
        try:
            data = unpack(_field(message, "data", str))
        except ValueError as exc:
            raise BadMessage(f"'out' message: data is not base64 ({exc})") from exc
        return Out(stream, data)
    if kind == "log":
        return LogLine(_field(message, "message", str))
    if kind == "done":
        return JobEnd("done", outputs=_field(message, "outputs", dict))
    if kind == "skip":
        return JobEnd("skip", text=_field(message, "reason", str))
    if kind == "failed":
        return JobEnd("failed", text=_field(message, "error", str))
    raise BadMessage(f"unknown message type {kind!r}")


# --- the host -----------------------------------------------------------------------------------


class JobHostLike(Protocol):
    """What JobRunner needs of a job host (a process; in unit tests, a thread)."""

    def start_job(self, job_id: str) -> JobProcess: ...

    def end_job(self, job_id: str, grace: float = ...) -> int | None: ...


class JobHost:
    """A running job host: the pipeline it loaded, and the jobs it runs for this run."""

    def __init__(self, child: process.Child | None, control: Channel, pid: int) -> None:
        self._child = child
        self._control = control
        self._lock = threading.Lock()  # jobs side by side share the control socket
        self._hello = False
        self.sandboxed = False
        self.pid = pid

    @classmethod
    def start(cls, *, sandboxed: bool = False) -> JobHost:
        """Start `python -m quire.jobhost` (`sandboxed`: in the bubblewrap sandbox,
        quire/tools/sandbox.py) and return at once: its interpreter starts while quire
        goes on (reading the commit); the first message waits for its hello."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fd = {"QUIRE_JOBHOST_FD": str(theirs.fileno())}
        try:
            if sandboxed:
                from quire.tools import sandbox

                argv = sandbox.wrap(
                    [str(sandbox.interpreter()), "-m", "quire.jobhost"],
                    env={**SANDBOX_ENV, **fd},
                )
            else:
                argv = [sys.executable, "-m", "quire.jobhost"]
            child = process.start_with_fds(argv, pass_fds=[theirs.fileno()], env=fd)
        except QuireError as exc:
            ours.close()
            if isinstance(exc, EnvironmentProblem):
                raise
            raise JobHostFailed(f"cannot start the job host: {exc}") from exc
        finally:
            theirs.close()
        host = cls(child, Channel(ours), child.pid)
        host.sandboxed = sandboxed
        return host

    def _greeted(self) -> None:
        """Wait for the job host's hello (once) and check its protocol version."""
        if self._hello:
            return
        try:
            hello = self._receive("start")
        except JobHostFailed:
            if self.sandboxed:  # say why the sandbox cannot work here, if that is it
                from quire.tools import sandbox

                sandbox.check_available()
            raise
        if hello.get("t") != "hello" or hello.get("v") != VERSION:
            raise JobHostFailed(
                f"the job host speaks protocol {hello.get('v')!r}, quire speaks {VERSION}: "
                "reinstall quire"
            )
        self._hello = True

    def _send(self, message: Message) -> None:
        try:
            self._control.send(message)
        except ProtocolError as exc:
            status = self._child.wait(1.0) if self._child is not None else None
            ended = f" (exit status {status})" if status is not None else ""
            raise JobHostFailed(
                f"the job host ended{ended}: quire could not send it {message['t']!r}"
            ) from exc

    def _receive(self, doing: str) -> Message:
        try:
            message = self._control.receive()
        except ProtocolError as exc:
            raise JobHostFailed(
                f"the job host sent nonsense while we waited to {doing}: {exc}"
            ) from exc
        if message is None:
            status = self._child.wait(1.0) if self._child is not None else None
            ended = f" (exit status {status})" if status is not None else ""
            raise JobHostFailed(f"the job host ended{ended} while we waited to {doing}")
        return message

    def load(self, files: Mapping[str, bytes]) -> Pipeline:
        """Run ci.py (and the modules beside it) in the job host and take its jobs as data;
        raises `PipelineError` listing every problem."""
        with self._lock:
            self._greeted()
            self._send({"t": "load", "files": {k: pack(v) for k, v in files.items()}})
            answer = self._receive("load the pipeline")
        if answer.get("t") == "invalid":
            problems = [
                PipelineProblem(
                    str(p.get("text")), p.get("line") if isinstance(p.get("line"), int) else None
                )
                for p in answer.get("problems", [])
                if isinstance(p, dict)
            ]
            raise PipelineError(".quire/ci.py", problems)
        try:
            return _pipeline(answer)
        except BadMessage as exc:
            raise JobHostFailed(f"the job host described the pipeline wrongly: {exc}") from exc

    def start_job(self, job_id: str) -> JobProcess:
        """Fork the job's process in the job host; returns its end of the job's socket."""
        with self._lock:
            self._send({"t": "start", "job": job_id})
            try:
                answer, fds = self._control.receive_with_fds(1)
            except (ProtocolError, OSError) as exc:
                raise JobHostFailed(f"the job host did not start job {job_id!r}: {exc}") from exc
        if answer is None or answer.get("t") != "started" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise JobHostFailed(f"the job host did not start job {job_id!r}: {answer!r:.200}")
        return JobProcess(self, job_id, Channel(socket.socket(fileno=fds[0])))

    def end_job(self, job_id: str, grace: float = TERM_GRACE_S) -> int | None:
        """Stop the job's processes (TERM, KILL after `grace`); its exit status."""
        with self._lock:
            self._send({"t": "end", "job": job_id, "grace": grace})
            answer = self._receive(f"end job {job_id!r}")
        status = answer.get("status")
        return status if isinstance(status, int) else None

    def close(self) -> None:
        """The job host exits once its control socket closes; a host that does not is
        killed with its whole session."""
        self._control.close()
        if self._child is None:
            return
        if not self._hello:  # never used (nothing to run): no need to wait for its start
            self._child.kill_group()
        if self._child.wait(TERM_GRACE_S) is None:
            self._child.kill_group()
            self._child.wait()


def _pipeline(answer: Message) -> Pipeline:
    """The pipeline the job host describes, checked again here: the job host runs ci.py,
    which may have rewritten it, and job ids become directory names in the store."""
    if answer.get("t") != "pipeline":
        raise BadMessage(f"expected the pipeline, got {answer.get('t')!r}")
    registrations = []
    for item in _field(answer, "jobs", list):
        if not isinstance(item, dict):
            raise BadMessage("a job is not an object")
        job_id = _field(item, "id", str)
        if not JOB_ID.fullmatch(job_id):
            raise BadMessage(f"job id {job_id[:80]!r} is not a valid name")
        inputs = _field(item, "inputs", list)
        if not all(isinstance(name, str) for name in inputs):
            raise BadMessage(f"job {job_id!r}: inputs are not names")
        timeout = _field(item, "timeout", (int, float), optional=True)
        if timeout is not None and timeout <= 0:
            raise BadMessage(f"job {job_id!r}: timeout {timeout!r}")
        line = _field(item, "line", int, optional=True)
        defined = JobDef(id=job_id, inputs=tuple(inputs), func=None, line=line, timeout=timeout)
        registrations.append(Registration(job=defined))
    for item in _field(answer, "caches", list):
        if not isinstance(item, dict):
            raise BadMessage("a cache is not an object")
        name, path = _field(item, "name", str), _field(item, "path", str)
        if not JOB_ID.fullmatch(name) or not path.startswith("/"):
            raise BadMessage(f"cache {name[:80]!r} at {path[:80]!r}")
        line = _field(item, "line", int, optional=True)
        registrations.append(Registration(job=None, cache=CacheDef(name, path, line)))
    try:
        return validate(registrations)  # the graph and its order, computed here
    except PipelineError as exc:
        raise BadMessage(f"the jobs it describes are no valid pipeline: {exc}") from exc


class JobProcess:
    """One job's process in the job host, and quire's end of its socket."""

    def __init__(self, host: JobHostLike, job_id: str, channel: Channel) -> None:
        self.host = host
        self.job_id = job_id
        self.channel = channel
        self.ended = False

    def messages(self, deadline: float | None = None) -> Iterator[FromJob]:
        """What the job sends, checked, until it says how it ended; a socket that closes
        first yields `JobEnd("died", status=...)`, a `deadline` (monotonic) that passes
        while the job's Python runs yields `JobEnd("timeout")`. Raises `BadMessage`."""
        while True:
            if deadline is not None:
                self.channel.sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                message = self.channel.receive()
            except TimeoutError:
                yield JobEnd("timeout")
                return
            except ProtocolError as exc:
                raise BadMessage(str(exc)) from exc
            if message is None:
                status = self.end()
                yield JobEnd("died", status=status)
                return
            parsed = parse(message)
            yield parsed
            if isinstance(parsed, JobEnd):
                return

    def answer(self, message: Message) -> None:
        with contextlib.suppress(ProtocolError):  # gone: its end says how
            self.channel.send(message)

    def end(self, grace: float = TERM_GRACE_S) -> int | None:
        """Stop whatever of the job still runs; its exit status (once)."""
        if self.ended:
            return None
        self.ended = True
        self.channel.close()
        try:
            return self.host.end_job(self.job_id, grace)
        except (JobHostFailed, ProtocolError):
            return None
