"""The one place quire spawns processes (through plumbum).

Three shapes, all returning typed results and raising `QuireError`s:

- `run(argv)`: a short tool call whose output is small (git rev-parse,
  docker inspect); both streams captured.
- `stream(argv, on_output)`: a job's command; stdout and stderr are read
  concurrently as they arrive and handed over chunk by chunk, so memory
  stays flat however much the command prints.
- `pipe(first, second)`: `first | second` through an OS pipe with both
  processes' exit status and stderr kept (plumbum's own `|` drops the
  first stage's stderr).

Children run in their own session: a Ctrl-C at the terminal reaches quire
only, and quire decides how to stop them (see `stream`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Literal

from plumbum import local
from plumbum.commands.processes import CommandNotFound

from quire.errors import ProgramNotFound
from quire.tools import proctree
from quire.tools.drain import Drainer

StreamName = Literal["stdout", "stderr"]
OutputHandler = Callable[[StreamName, bytes], None]

# Big reads and big pipes: fewer wakeups, fewer log events per MiB. A read
# still returns as soon as any data is there, so output stays live.
_CHUNK = 256 * 1024
_F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, named in the module only from Python 3.10 on Linux


@dataclass(frozen=True)
class Completed:
    """A finished short tool call."""

    argv: tuple[str, ...]
    exit: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.exit == 0

    def stderr_tail(self, lines: int = 15) -> str:
        """The last lines of stderr as text, for error messages."""
        return tail_text(self.stderr, lines)


@dataclass(frozen=True)
class Streamed:
    """A finished streamed command: its exit (negative: killed by that signal)."""

    exit: int
    started_at: datetime
    duration_s: float
    timed_out: bool = False


def tail_text(data: bytes, lines: int = 15) -> str:
    """The last `lines` lines of `data`, decoded leniently and stripped."""
    text = data.decode("utf-8", errors="replace").strip()
    return "\n".join(text.splitlines()[-lines:])


def refresh_environment() -> None:
    """Make programs started from now on get `os.environ` as it is now.

    plumbum copies `os.environ` when it is imported; a process that replaced its
    environment since (a warm quire's child taking on its launcher's) calls this.
    """
    local.env.clear()
    local.env.update(os.environ)


def find_program(name: str, *, search_path: str | None = None) -> str:
    """The absolute path of program `name` as a shell would find it on PATH.

    `search_path` replaces PATH for the lookup (a job may set its own).
    Raises `ProgramNotFound`.
    """
    try:
        if search_path is None:
            return str(local.which(name))
        with local.env(PATH=search_path):
            return str(local.which(name))
    except CommandNotFound as exc:
        raise ProgramNotFound(f"{name}: command not found on PATH") from exc


def _command(argv: Sequence[str]) -> Any:
    if not argv:
        raise ValueError("empty argv")
    program = argv[0]
    # A path (absolute or with a slash) is taken as given; a bare name is
    # looked up per call, so PATH changes (and test shims) are seen.
    target = local.path(program) if "/" in program else find_program(program)
    return local[target]


# Every pid quire started itself: a subreaper's orphan-collecting must leave these to the
# Popen that waits for them (stealing one's status would turn its exit code into 0).
_spawned: set[int] = set()


# Spawning and orphan-collecting exclude each other. Between fork and `_spawned.add` a fast
# child may already be a zombie; a collector looking then would take it for an orphan, steal
# its exit status and make `pidfd_open` fail. Under this lock every child quire started is
# in `_spawned` whenever the collector looks.
_spawn_lock = threading.Lock()


def reap_orphans() -> None:
    """Collect ended orphans adopted as a subreaper; never a child quire started itself."""
    with _spawn_lock:
        proctree.reap_adopted(spawned)


def spawned(pid: int) -> bool:
    """Whether quire started `pid` itself (as opposed to adopting it as an orphan)."""
    return pid in _spawned


def _popen(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdin: Any = subprocess.DEVNULL,
    stdout: Any = subprocess.PIPE,
    stderr: Any = subprocess.PIPE,
    pass_fds: Sequence[int] = (),
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session; stderr is a pipe unless asked otherwise (error
    messages need it).

    Every spawn of quire goes through here.
    """
    command = _command(argv)
    try:
        with _spawn_lock:
            proc: subprocess.Popen[bytes] = command.popen(
                list(argv[1:]),
                cwd=None if cwd is None else str(cwd),
                env=dict(env) if env else None,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                new_session=True,
                pass_fds=tuple(pass_fds),
                preexec_fn=preexec_fn,
            )
            _spawned.add(proc.pid)
    except PermissionError as exc:
        raise ProgramNotFound(f"{argv[0]}: permission denied") from exc
    except OSError as exc:  # no such file, exec format error (no #! line), ...
        raise ProgramNotFound(f"{argv[0]}: cannot be started ({exc.strerror})") from exc
    return proc


def run(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> Completed:
    """Run a short tool call to completion and capture both streams.

    `env` adds to quire's environment. Raises `ProgramNotFound`; a non-zero
    exit is returned, the caller turns it into its own error.
    """
    return begin(argv, cwd=cwd, env=env).wait(timeout)


class Pending:
    """A short tool call started in the background (`begin`): quire goes on with other
    work while it runs, then `wait()` collects it, or `cancel()` ends it unread."""

    def __init__(self, argv: Sequence[str], proc: subprocess.Popen[bytes]) -> None:
        self.argv = tuple(argv)
        self._proc = proc

    def wait(self, timeout: float | None = None) -> Completed:
        """Its result, once it has exited (killed, and the exception passed on, if the wait
        is interrupted or times out)."""
        try:
            out, err = self._proc.communicate(timeout=timeout)
        except BaseException:
            _kill(self._proc)
            raise
        return Completed(self.argv, self._proc.returncode, out, err)

    def cancel(self) -> None:
        """Kill it if it still runs, and reap it; its output is dropped."""
        _kill(self._proc)


def begin(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Pending:
    """Start a short tool call without waiting for it (`run` is `begin(...).wait()`).
    Raises `ProgramNotFound`."""
    return Pending(argv, _popen(argv, cwd=cwd, env=env))


def stream(
    argv: Sequence[str],
    on_output: OutputHandler,
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    leftovers: Drainer | None = None,
    on_start: Callable[[int], None] | None = None,
) -> Streamed:
    """Run `argv`, handing each chunk of stdout/stderr to `on_output` as it arrives.

    Both pipes are drained together (no deadlock when a command fills one
    while we wait on the other). With `leftovers`, the command ends when its
    own process exits: what is already in the pipes is read, and pipes that
    background children still hold are handed to `leftovers` to go on
    reading; without it, the command ends at EOF on both pipes. On timeout
    the command's process group and every descendant are killed and
    `timed_out` is set. If anything interrupts us (Ctrl-C, an exception from
    `on_output`), the same happens before the exception goes on. `on_start`
    gets the pid once the process runs. Raises `ProgramNotFound`.
    """
    started_at = datetime.now(UTC)
    t0 = time.monotonic()
    proc = _popen(argv, cwd=cwd, env=env)
    timed_out = False
    try:
        if on_start is not None:
            on_start(proc.pid)
        deadline = None if timeout is None else t0 + timeout
        timed_out, held = _pump(proc, on_output, deadline, until_exit=leftovers is not None)
        if timed_out:
            _kill(proc)
        proc.wait()
    except BaseException:
        _kill(proc)
        raise
    for pipe, name in held:
        assert leftovers is not None
        leftovers.adopt(pipe, name, on_output, owner=proc)
    return Streamed(proc.returncode, started_at, time.monotonic() - t0, timed_out)


def _pump(
    proc: subprocess.Popen[bytes],
    on_output: OutputHandler,
    deadline: float | None,
    *,
    until_exit: bool,
) -> tuple[bool, list[tuple[IO[bytes], StreamName]]]:
    """Read both pipes until EOF (or, `until_exit`, until the process exits); returns
    whether the deadline passed first, and the pipes still open (held by others)."""
    assert proc.stdout is not None and proc.stderr is not None
    pipes: dict[int, tuple[IO[bytes], StreamName]] = {
        proc.stdout.fileno(): (proc.stdout, "stdout"),
        proc.stderr.fileno(): (proc.stderr, "stderr"),
    }
    for fd in pipes:
        _grow_pipe(fd)
    exit_fd = os.pidfd_open(proc.pid) if until_exit else None
    try:
        with selectors.DefaultSelector() as sel:
            for fd in pipes:
                sel.register(fd, selectors.EVENT_READ)
            if exit_fd is not None:
                sel.register(exit_fd, selectors.EVENT_READ)
            while pipes or exit_fd is not None:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                events = sel.select(wait)
                if not events and deadline is not None and time.monotonic() >= deadline:
                    return True, []
                fds = [key.fd for key, _ in events]
                for fd in fds:
                    if fd == exit_fd:
                        continue
                    assert isinstance(fd, int)
                    if not _read_some(fd, pipes, on_output):
                        sel.unregister(fd)
                if exit_fd is not None and exit_fd in fds:
                    return False, _what_is_left(pipes, on_output)
    finally:
        if exit_fd is not None:
            os.close(exit_fd)
    return False, []


def _read_some(
    fd: int, pipes: dict[int, tuple[IO[bytes], StreamName]], on_output: OutputHandler
) -> bool:
    """One read of a ready pipe; False (and the pipe closed) at EOF."""
    pipe, name = pipes[fd]
    data = os.read(fd, _CHUNK)
    if data:
        on_output(name, data)
        return True
    pipe.close()
    del pipes[fd]
    return False


def _what_is_left(
    pipes: dict[int, tuple[IO[bytes], StreamName]], on_output: OutputHandler
) -> list[tuple[IO[bytes], StreamName]]:
    """The process exited: what its pipes already hold is its output; pipes still open
    afterwards are held by its background children."""
    for fd in list(pipes):
        os.set_blocking(fd, False)
        while fd in pipes:
            try:
                if not _read_some(fd, pipes, on_output):
                    break
            except BlockingIOError:
                break
    return list(pipes.values())


def _grow_pipe(fd: int) -> None:
    # Over the user's pipe quota the default size still works, only slower.
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, _CHUNK)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill the child's process group and all its descendants (also ones that left the
    group), and reap it."""
    if proc.poll() is None:
        try:
            proctree.kill_group_and_tree(proc.pid)
        except (ProcessLookupError, PermissionError):
            proc.kill()
    proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def read_stdout(
    argv: Sequence[str], consume: Callable[[IO[bytes]], None]
) -> tuple[Completed, Exception | None]:
    """Run `argv` with its stdout handed to `consume` as a stream (a tar archive read as it
    arrives, never held whole); stderr is kept in a temporary file, so a chatty stderr
    cannot stall it. What `consume` raised comes back beside the result (the process is
    killed then): the caller tells a failed command from a bad stream. Raises
    `ProgramNotFound`."""
    import tempfile

    problem: Exception | None = None
    with tempfile.TemporaryFile() as errors:
        proc = _popen(argv, stderr=errors)
        try:
            assert proc.stdout is not None
            try:
                consume(proc.stdout)
            except Exception as exc:
                problem = exc
                _kill(proc)
            else:
                while proc.stdout.read(_CHUNK):  # what the consumer left (tar's padding)
                    pass
                proc.wait()
        except BaseException:
            _kill(proc)
            raise
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
        errors.seek(0)
        return Completed(tuple(argv), proc.returncode, b"", errors.read()), problem


def run_all(argvs: Sequence[Sequence[str]]) -> list[Completed]:
    """Run several short tool calls at the same time; results in the same order.

    For independent calls whose latency adds up (removing a container and
    untagging its image).
    """
    procs = []
    try:
        for argv in argvs:
            procs.append(_popen(argv))
        results = []
        for argv, proc in zip(argvs, procs, strict=True):
            out, err = proc.communicate()
            results.append(Completed(tuple(argv), proc.returncode, out, err))
    except BaseException:
        for proc in procs:
            _kill(proc)
        raise
    return results


def pipe(
    first: Sequence[str],
    second: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
) -> tuple[Completed, Completed]:
    """Run `first | second` through an OS pipe; both results come back.

    Both stderr streams are captured. `first`'s stderr is read after
    `second` ends, which is fine for the tools we pipe (git archive writes a
    line or two there); a chatty producer would need a reader thread.
    Neither the data in between nor `second`'s stdout is kept.
    """
    producer = _popen(first, cwd=cwd)
    try:
        consumer = _popen(second, cwd=cwd, stdin=producer.stdout, stdout=subprocess.DEVNULL)
    except BaseException:
        _kill(producer)
        raise
    assert producer.stdout is not None
    # Our copy of the pipe's read end must go, or `first` never sees EPIPE
    # when `second` dies early.
    producer.stdout.close()
    try:
        err2 = consumer.communicate()[1]
        err1 = producer.communicate()[1]
    except BaseException:
        _kill(consumer)
        _kill(producer)
        raise
    return (
        Completed(tuple(first), producer.returncode, b"", err1),
        Completed(tuple(second), consumer.returncode, b"", err2),
    )


# --- long-running children (the push worker's runs) ---------------------------------------------

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class Child:
    """A long-running child started by `start`: poll it, signal it, wait for it."""

    argv: tuple[str, ...]
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        """Its exit status once it has ended (negative: killed by that signal), else None."""
        return self.proc.poll()

    def signal(self, signum: int) -> None:
        """Send `signum` to the child itself (it decides what to do with its own children)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signum)

    def kill_group(self) -> None:
        """SIGKILL the child's whole process group (its session: it leads one)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to `timeout` seconds; its exit status, or None if it still runs."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


def _die_with_parent(signum: int) -> Callable[[], None]:
    """A preexec hook: the child gets `signum` when its parent dies (PR_SET_PDEATHSIG).

    Without it, children of a SIGKILLed parent would run on unsupervised.
    Linux sends the signal when the parent THREAD that forked ends: start
    children from the main thread.
    """
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in the child
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no signal would come
            os.kill(os.getpid(), signum)

    return hook


def start(
    argv: Sequence[str],
    *,
    output: str | os.PathLike[str],
    parent_death_signal: int | None = signal.SIGTERM,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Child:
    """Start `argv` in its own session and return at once; stdout and stderr are
    appended to the file `output` (nobody has to drain a pipe).

    With `parent_death_signal` the child receives that signal if we die
    (kill -9 included). `env` adds to quire's environment. Raises
    `ProgramNotFound`, or `OSError` when `output` cannot be opened.
    """
    preexec = None if parent_death_signal is None else _die_with_parent(parent_death_signal)
    with open(output, "ab") as sink:
        proc = _popen(
            argv, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=preexec
        )
    return Child(tuple(argv), proc)


def start_with_fds(
    argv: Sequence[str],
    *,
    pass_fds: Sequence[int],
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Child:
    """Start `argv` in its own session with the file descriptors `pass_fds` kept open (a
    socket to talk to it); its stdout and stderr are quire's stderr. It gets SIGKILL if we
    die. `env` adds to quire's environment. Raises `ProgramNotFound`."""
    proc = _popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=2,
        stderr=2,
        pass_fds=pass_fds,
        preexec_fn=_die_with_parent(signal.SIGKILL),
    )
    return Child(tuple(argv), proc)
