"""`quire ci warm`: one process with quire imported, forking a child to run each command.

The `quire` launcher (quire/cli/launch.py) connects to this server's socket
and sends its arguments, working directory, environment, umask and standard
streams. The server forks; the child takes all of those on, becomes the
leader of a new session (no controlling terminal: the launcher holds the
terminal and relays Ctrl-C to the child's process group), tells the
launcher its pid, runs the command exactly as `quire.cli.app.main` would,
and reports its exit code. If the launcher goes away, the child treats it
as a SIGHUP: a run tears down and records itself as interrupted.

The server refuses, and the launcher runs the command itself, when the
launcher is another interpreter or another copy of quire, or when quire's
code or the installed packages changed since the server started; after
refusing for the last reason, the server re-executes itself to load the
new code. It serves only its own uid (SO_PEERCRED), logs to stderr, and
stops on SIGTERM, SIGINT or SIGHUP; commands it started go on to their end.

    $QUIRE_STATE_DIR/            0700: no other user can make a file in it
      warm.sock                  the socket launchers connect to, removed on stop
      warm.lock                  flock()ed by the one server that holds warm.sock
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import gc
import importlib
import io
import logging
import os
import selectors
import signal
import site
import socket
import stat
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from quire.ci.store.runs import make_private
from quire.cli import finish, launch
from quire.errors import EnvironmentProblem
from quire.service.signals import SignalWatch
from quire.tools import fork

log = logging.getLogger("quire.warm")

# What quire's commands import, at the top or lazily: the time a child saves.
PRELOAD = (
    "quire.cli.app",
    "quire.cli.console",
    "quire.cli.history_commands",
    "quire.cli.prune_command",
    "quire.cli.service_commands",
    "quire.ci.run.orchestrator",
    "quire.ci.run.executors.host",
    "quire.ci.run.executors.docker",
    "quire.ci.store.reconcile",
    "quire.ci.store.views",
    "quire.tools.tar",
    "platformdirs",
    "rich.console",
    "rich.live",
    "rich.table",
    "rich.text",
    "rich.spinner",
)
_REQUEST_TIMEOUT_S = 2.0  # a launcher sends its request at once
_BACKOFF_S = 0.5
_GO_TIMEOUT_S = 10.0
LOCK_NAME = "warm.lock"


class WarmAlreadyRunning(EnvironmentProblem):
    """Another warm quire serves this state directory."""


class WarmSocketUnavailable(EnvironmentProblem):
    """The warm quire's socket cannot be made in the state directory."""


@dataclass
class WarmSocket:
    """The socket a server listens on, and the lock that makes it this server's."""

    listener: socket.socket
    lock_fd: int
    path: Path

    def release_in_child(self) -> None:
        """In a forked child: let go of both, leaving the file to the server, so that a
        server started after this one stops is not told one still runs."""
        self.listener.close()
        os.close(self.lock_fd)


@contextlib.contextmanager
def claim_socket(state: Path) -> Iterator[WarmSocket]:
    """Listen on the warm socket of `state` (made private, 0700) until the block ends, then
    remove it. A socket file left by a server that died is replaced.

    Raises WarmAlreadyRunning when a server holds it, WarmSocketUnavailable when it cannot
    be made (both exit 3, naming the socket).
    """
    path = Path(launch.socket_path(str(state)))
    lock_fd = _lock(state, path)
    try:
        listener = _listen(state, path)
        try:
            yield WarmSocket(listener, lock_fd, path)
        finally:
            # Still under the lock: no other server can have bound a new file here.
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            listener.close()
    finally:
        os.close(lock_fd)


def _lock(state: Path, path: Path) -> int:
    """The lock only the server holding `path` holds: two servers starting at once never
    both take the socket (each removing the other's as stale)."""
    try:
        make_private(state)
        fd = os.open(state / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise WarmSocketUnavailable(
            f"cannot make the warm quire's socket {path}: {exc.strerror or exc}"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise WarmAlreadyRunning(_already(state, path)) from None
        raise WarmSocketUnavailable(f"cannot lock {state / LOCK_NAME}: {exc}") from exc
    return fd


def _listen(state: Path, path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            launch.reach(str(state), listener.bind)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            _remove_stale(state, path)
            launch.reach(str(state), listener.bind)
        listener.listen(64)
    except OSError as exc:
        listener.close()
        raise WarmSocketUnavailable(f"cannot listen on {path}: {exc.strerror or exc}") from exc
    except BaseException:
        listener.close()
        raise
    return listener


def _remove_stale(state: Path, path: Path) -> None:
    """Remove the socket file at `path` if no server listens on it (it died)."""
    if not stat.S_ISSOCK(path.lstat().st_mode):
        raise WarmSocketUnavailable(f"cannot listen on {path}: it is there and not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            launch.reach(str(state), probe.connect)
        except ConnectionRefusedError:
            pass  # nobody listens: a server that died left it
        else:
            raise WarmAlreadyRunning(_already(state, path))
    log.info("replacing %s, left by a warm quire that has stopped", path)
    path.unlink()


def _already(state: Path, path: Path) -> str:
    return (
        f"a warm quire already serves {state} (socket {path}); "
        "stop it (SIGTERM) before starting another"
    )


def log_to_stderr() -> None:
    """The server's log lines go to stderr; nothing else's logging is touched."""
    handler = logging.StreamHandler()
    formatter = logging.Formatter("%(asctime)s quire-warm: %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


class WarmServer:
    """The server: `serve()` runs in the foreground until a stop signal."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.fingerprint: dict[str, int] = {}
        self.held: WarmSocket | None = None

    def serve(self) -> int:
        """Serve until SIGTERM, SIGINT or SIGHUP; returns the exit code (0).

        Raises WarmAlreadyRunning or WarmSocketUnavailable."""
        for name in PRELOAD:
            importlib.import_module(name)
        from quire.cli.app import command
        from quire.cli.lazy_tree import build_everything

        build_everything(command())  # so no child builds a command of its own
        self.fingerprint = code_fingerprint()
        # Listening only now: until then a launcher finds nobody and runs its command itself.
        with claim_socket(self.state) as held:
            self.held = held
            with SignalWatch() as signals:
                # Children share the server's objects copy-on-write; a collection would
                # touch (and so copy) every page of them.
                gc.freeze()
                log.info("warm quire %d serving commands for %s", os.getpid(), self.state)
                stale = self._loop(held.listener, signals)
        if stale:
            log.info("quire's code changed: restarting to load it")
            fork.reexec()
        log.info("warm quire %d stopped", os.getpid())
        return 0

    def _loop(self, listener: socket.socket, signals: SignalWatch) -> bool:
        """Accept commands until stopped; True when stopped because the code changed."""
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(signals, selectors.EVENT_READ)
            while not signals.stops:
                for key, _events in selector.select():
                    if key.fileobj is signals:
                        signals.drain()
                        self._reap()
                    elif self._accept(listener, signals):
                        return True
        return False

    def _accept(self, listener: socket.socket, signals: SignalWatch) -> bool:
        """Serve one connection; True if it found the code changed."""
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                # Out of descriptors: the connection stays queued and the listener readable;
                # wait rather than spin.
                log.warning("cannot accept a command: %s; retrying in %.1fs", exc, _BACKOFF_S)
                time.sleep(_BACKOFF_S)
            return False
        fds: list[int] = []
        with conn:
            try:
                if launch.peer_uid(conn) != os.getuid():
                    log.warning("refused a connection from another user")
                    return False
                deadline = time.monotonic() + _REQUEST_TIMEOUT_S
                request, fds = launch.receive_with_fds(conn, 3, deadline)
                if request is None:
                    return False
                refusal = self._refusal(request)
                if refusal:
                    log.info("refused %s: %s", _shown(request), refusal)
                    launch.send(conn, {"refused": refusal})
                    return refusal == CODE_CHANGED
                conn.settimeout(None)
                pid = fork.fork_child(
                    functools.partial(_child, conn, request, fds, self._let_go, signals)
                )
                log.info("child %d runs %s", pid, _shown(request))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("dropped a request: %s", exc)
            finally:
                for fd in fds:
                    os.close(fd)
        return False

    def _let_go(self) -> None:
        """In a forked child: the socket and its lock stay the server's alone."""
        if self.held is not None:
            self.held.release_in_child()

    def _refusal(self, request: dict[str, object]) -> str | None:
        for key, mine in launch.identity().items():
            if request.get(key) != mine:
                shown = f" ({request.get(key)!r})" if isinstance(mine, str) else ""
                return f"another {key}{shown} than this server's"
        if code_fingerprint() != self.fingerprint:
            return CODE_CHANGED
        return None

    def _reap(self) -> None:
        for pid, code in fork.reap():
            log.info("child %d ended with exit code %d", pid, code)


CODE_CHANGED = "quire's code or the installed packages changed since this server started"


def code_fingerprint() -> dict[str, int]:
    """Modification times of quire's loaded modules and of the site-packages directories."""
    package = Path(launch.identity()["package"])
    files = {
        str(module.__file__)
        for module in list(sys.modules.values())
        if getattr(module, "__file__", None) and str(module.__file__).startswith(str(package))
    }
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    stamps: dict[str, int] = {}
    for path in (*sorted(files), *dirs):
        with contextlib.suppress(OSError):
            stamps[path] = os.stat(path).st_mtime_ns
    return stamps


def _shown(request: dict[str, object]) -> str:
    argv = request.get("argv")
    return " ".join(str(a) for a in argv[1:]) if isinstance(argv, list) else "?"


def _child(
    conn: socket.socket,
    request: dict[str, object],
    fds: list[int],
    let_go: Callable[[], None],
    signals: SignalWatch,
) -> None:
    """In the forked child: become the launcher's process and run its command; never returns."""
    code = 70
    ended = threading.Event()
    try:
        let_go()
        signals.__exit__(None, None, None)  # the server's handlers and wake-up fd
        log.handlers.clear()
        os.setsid()
        _take_streams(request, fds)
        _take_process_state(request)
        launch.send(conn, {"pid": os.getpid()})
        conn.settimeout(_GO_TIMEOUT_S)
        go = launch.receive(conn)
        if go is None or go.get("go") is not True:
            os._exit(0)  # the launcher gave up on us and runs the command itself
        conn.settimeout(None)
        threading.Thread(target=_hang_up_when_gone, args=(conn, ended), daemon=True).start()
        code = _run(request)
    except BaseException:  # the child must end here, never back in the server's loop
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        ended.set()  # before the launcher can read the code and close its end
        with contextlib.suppress(Exception):
            launch.send(conn, {"exit": code})
        os._exit(code)


def _take_streams(request: dict[str, object], fds: list[int]) -> None:
    sent = request["fds"]
    assert isinstance(sent, list) and len(sent) == len(fds)
    # Move the received descriptors above 2 first: one of them may have been given
    # number 0-2 (a server started with a standard stream closed).
    given = {}
    for target, fd in zip(sent, fds, strict=True):
        given[target] = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
        os.close(fd)
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for target in (0, 1, 2):
        os.dup2(given.get(target, devnull), target)
    for fd in (*given.values(), devnull):
        os.close(fd)
    # Python chose the streams' buffering for the server's own stdio; choose again, as
    # Python does at start-up: stdout line-buffered on a terminal, stderr always.
    sys.stdin = _text_stream(0, "r", sys.stdin)
    sys.stdout = _text_stream(1, "w", sys.stdout, line_buffering=os.isatty(1))
    sys.stderr = _text_stream(2, "w", sys.stderr, line_buffering=True)


def _text_stream(
    fd: int, mode: str, like: io.TextIOWrapper | object, *, line_buffering: bool = False
) -> io.TextIOWrapper:
    encoding = getattr(like, "encoding", None) or "utf-8"
    errors = getattr(like, "errors", None) or "strict"
    # The server started with the launcher's PYTHON* settings (launch.identity), so its
    # streams' write-through (PYTHONUNBUFFERED, -u) is what the launcher's would be.
    write_through = bool(getattr(like, "write_through", False))
    buffer = open(fd, mode + "b", closefd=False)  # noqa: SIM115 - lives as long as the process
    return io.TextIOWrapper(
        buffer,
        encoding=encoding,
        errors=errors,
        line_buffering=line_buffering,
        write_through=write_through,
    )


def _take_process_state(request: dict[str, object]) -> None:
    from quire.tools.process import refresh_environment

    cwd, env, umask, argv = request["cwd"], request["env"], request["umask"], request["argv"]
    assert isinstance(cwd, str) and isinstance(env, dict) and isinstance(umask, int)
    assert isinstance(argv, list)
    os.environ.clear()
    os.environ.update(env)
    refresh_environment()
    time.tzset()
    os.umask(umask)
    os.chdir(cwd)
    sys.argv = [str(a) for a in argv]
    path0 = request.get("path0")
    if isinstance(path0, str) and sys.path:
        sys.path[0] = path0  # the rest is the server's, and the same (see launch.identity)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


def _hang_up_when_gone(conn: socket.socket, ended: threading.Event) -> None:
    """The launcher closed its end before the command ended (it was killed): hang up on
    ourselves, as a terminal would."""
    with contextlib.suppress(OSError):
        while conn.recv(1024):
            pass
    if not ended.is_set():
        os.kill(os.getpid(), signal.SIGHUP)


def _run(request: dict[str, object]) -> int:
    """Run the command as `quire.cli.app.main` does in a process of its own; its exit code,
    once the threads, atexit handlers and flushes the interpreter's exit does are done."""
    from quire.cli.app import main

    try:
        code = finish.exit_code(main)
    except KeyboardInterrupt:
        code = 130
    return finish.wind_down(code)
