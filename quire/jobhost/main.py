"""The job host process: load ci.py once, then fork one process per job (a zygote).

    python -m quire.jobhost      (QUIRE_JOBHOST_FD names its end of the control socket)

It answers quire's control messages one at a time (docs/architecture.md,
"The job host"): `load` runs ci.py and describes its jobs; `start` forks a
job process with a socket of its own, handed to quire with the answer;
`end` stops a job's process group (TERM, then KILL after the grace) and
says how it ended. It exits when quire closes the control socket.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time

from quire.ci.pipeline import PIPELINE_FILE, Pipeline, Skip, load_pipeline, pipeline_line
from quire.errors import PipelineError, QuireError
from quire.jobhost.capture import FdCapture, capture
from quire.jobhost.protocol import VERSION, Channel, Message, ProtocolError, unpack
from quire.jobhost.runtime import JobLink, Runtime

FD_VARIABLE = "QUIRE_JOBHOST_FD"


class Zygote:
    """The job host's main loop and the jobs it forked."""

    def __init__(self, control: Channel) -> None:
        self.control = control
        self.pipeline: Pipeline | None = None
        self.jobs: dict[str, int] = {}  # job id -> its process (a process group leader)

    def serve(self) -> int:
        self.control.send({"t": "hello", "v": VERSION, "pid": os.getpid()})
        while True:
            message = self.control.receive()
            if message is None:
                return 0
            kind = message["t"]
            if kind == "load":
                self.control.send(self.load(message))
            elif kind == "start":
                self.start(str(message["job"]))
            elif kind == "end":
                self.control.send(self.end(str(message["job"]), float(message.get("grace", 5))))
            else:
                self.control.send({"t": "error", "message": f"unknown message {kind!r}"})

    def load(self, message: Message) -> Message:
        files = {str(path): unpack(str(text)) for path, text in dict(message["files"]).items()}
        source = files.pop(PIPELINE_FILE)
        modules = {path.removeprefix(".quire/"): text for path, text in files.items()}
        try:
            pipeline = load_pipeline(source, modules, keep_modules=True)
        except PipelineError as exc:
            problems = [{"text": p.text, "line": p.line} for p in exc.problems]
            return {"t": "invalid", "problems": problems}
        self.pipeline = pipeline
        return {
            "t": "pipeline",
            "order": pipeline.order,
            "jobs": [
                {"id": d.id, "inputs": list(d.inputs), "timeout": d.timeout, "line": d.line}
                for d in pipeline.jobs.values()
            ],
            "caches": [
                {"name": c.name, "path": c.path, "line": c.line} for c in pipeline.caches.values()
            ],
        }

    def start(self, job_id: str) -> None:
        if self.pipeline is None or job_id not in self.pipeline.jobs:
            self.control.send({"t": "error", "message": f"no job {job_id!r} loaded"})
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sys.stdout.flush()
        sys.stderr.flush()
        me = os.getpid()
        pid = os.fork()
        if pid == 0:  # the job process
            try:
                theirs.close()
                self.control.close()
                os.setsid()  # its own process group: ended as one
                _die_with(me)
                run_job(self.pipeline, job_id, Channel(ours))
            except ProtocolError:
                os._exit(3)  # quire is gone: nobody to tell
            finally:
                os._exit(0)
        ours.close()
        self.jobs[job_id] = pid
        self.control.send({"t": "started", "job": job_id, "pid": pid}, fds=[theirs.fileno()])
        theirs.close()

    def end(self, job_id: str, grace: float) -> Message:
        """Stop the job's process group (it may have ended already) and collect its status."""
        pid = self.jobs.pop(job_id, None)
        if pid is None:
            return {"t": "ended", "job": job_id, "status": None}
        status = _wait(pid, 0.0)
        if status is None:
            _signal_group(pid, signal.SIGTERM)
            status = _wait(pid, grace)
        _signal_group(pid, signal.SIGKILL)  # whatever of the job is still there
        if status is None:
            status = _wait(pid, None)
        if not self.jobs:  # orphans the job left, adopted by us: nobody else's
            _end_orphans()
        return {"t": "ended", "job": job_id, "status": status}


def run_job(
    pipeline: Pipeline, job_id: str, channel: Channel, *, capture_output: bool = True
) -> None:
    """Run the job function and send how it ended (in the job process; on a thread in
    unit tests, without `capture_output`). Raises `ProtocolError` when quire is gone."""
    link = JobLink(channel)
    fds = None
    if capture_output:
        capture(link)
        fds = FdCapture(link)
    defined = pipeline.jobs[job_id]
    assert defined.func is not None
    try:
        result = defined.func(Runtime(link, job_id))
        end = _outputs(job_id, result)
    except Skip as exc:
        end = {"t": "skip", "reason": str(exc) or "skipped"}
    except ProtocolError:
        raise
    except (Exception, SystemExit, KeyboardInterrupt) as exc:
        end = {"t": "failed", "error": _describe(exc)}
    if fds is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        fds.finish()  # its last words at the fd level come before its end
    link.tell(end)


def _outputs(job_id: str, result: object) -> Message:
    if result is None:
        return {"t": "done", "outputs": {}}
    if not isinstance(result, dict):
        message = f"job {job_id!r} returned {type(result).__name__}; return None or a dict"
        return {"t": "failed", "error": message}
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        return {"t": "failed", "error": f"job {job_id!r} returned outputs that are not JSON: {exc}"}
    return {"t": "done", "outputs": result}


def _describe(exc: BaseException) -> str:
    """A job's exception as one line: quire's own errors as they are, others with the line
    of ci.py they came from."""
    if isinstance(exc, QuireError):
        return str(exc)
    line = pipeline_line(exc)
    where = f" ({PIPELINE_FILE}:{line})" if line else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _wait(pid: int, seconds: float | None) -> int | None:
    """The exit status of our child `pid` (negative: the signal), or None if it still runs
    after `seconds` (None: wait as long as it takes)."""
    deadline = None if seconds is None else time.monotonic() + seconds
    while True:
        try:
            done, status = os.waitpid(pid, 0 if deadline is None else os.WNOHANG)
        except ChildProcessError:
            return None
        if done == pid:
            return os.waitstatus_to_exitcode(status)
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def _signal_group(pid: int, signum: int) -> None:
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            continue


def _end_orphans() -> None:
    """Kill and reap every child left (processes the jobs started and abandoned)."""
    try:
        children = _children()
    except OSError:
        return
    for pid in children:
        _signal_group(pid, signal.SIGKILL)
    for pid in children:
        _wait(pid, 1.0)


def _children() -> list[int]:
    me = os.getpid()
    found: list[int] = []
    for tid in os.listdir(f"/proc/{me}/task"):
        with open(f"/proc/{me}/task/{tid}/children") as handle:
            found.extend(int(pid) for pid in handle.read().split())
    return found


def _die_with(parent: int) -> None:
    """The job process gets SIGKILL when the job host dies (quire killed with -9 takes the
    job host with it, and so the jobs: nothing is left to run on unsupervised)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before prctl: no signal would come
        os._exit(1)


def _become_subreaper() -> None:
    """Orphans of a job are re-parented to us, not to init: we end them with the job."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    fd = int(os.environ.get(FD_VARIABLE, "3"))
    os.environ.pop(FD_VARIABLE, None)
    _become_subreaper()
    control = Channel(socket.socket(fileno=fd))
    try:
        code = Zygote(control).serve()
    except ProtocolError:
        code = 3
    # No interpreter teardown: quire waits for this exit, and nothing is left to flush.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
