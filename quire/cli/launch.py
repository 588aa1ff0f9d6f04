"""The `quire` entry point: hand the command to a warm quire if one runs, else run it here.

Most of a short quire command's time is Python importing its libraries
(pydantic, typer, plumbum, PyYAML): 0.2-0.4 s before quire reads a word.
`quire ci warm` (quire/cli/warm.py) keeps one process with all of that
imported; for each command it forks a child that runs the command with
this process's arguments, working directory, environment, umask and
standard streams (passed over the socket), and this process relays
signals to it and exits with its exit code.

When no warm quire answers for this state directory (the usual case), or
it refuses (another interpreter, code changed since it started), the
command runs here as always. So this module is on every command's path:
standard library only, nothing imported that the warm path does not use.

The socket is the file `warm.sock` in the state directory, which the
server makes private (0700), so no other user can take its name first (as
anyone could an abstract name). A path too long for a socket address is
reached through the directory's descriptor. Both ends still check the
other's uid (SO_PEERCRED): a state directory named in QUIRE_STATE_DIR may
be open to others.
"""

from __future__ import annotations

import _socket
import array
import marshal
import os
import signal
import struct
import sys
import time

TYPE_CHECKING = False  # typing costs this path milliseconds on every command
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType
    from typing import TypedDict

    class Identity(TypedDict):
        """What a warm quire must share with its launcher (see `identity`)."""

        executable: str
        prefix: str
        package: str
        python: list[str]
        process: list[str]

    class Request(Identity):
        """A command for a warm quire (with the descriptors `fds` attached)."""

        argv: list[str]
        cwd: str
        path0: str
        env: dict[str, str]
        umask: int
        fds: list[int]


# Set to run every command here, never through a warm quire.
NO_WARM_ENV = "QUIRE_NO_WARM"
# Commands that must run in this process: the server itself, and completion,
# which finds the shell by walking up from its parent process.
_LOCAL_WORDS = frozenset({"warm", "--install-completion", "--show-completion"})
_HEADER = struct.Struct("!I")
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_MAX_MESSAGE = 16 * 1024 * 1024
# How long a warm quire may take to fork a child for the command; past it, the
# command runs here (the child, if any, never gets the go-ahead and ends).
ANSWER_TIMEOUT_S = 5.0
# Signals a terminal sends to the whole foreground process group: relayed to the
# child's group (the job's commands are in it), as the terminal would have done.
_GROUP_SIGNALS = (signal.SIGINT, signal.SIGQUIT)
# Signals someone sends to quire itself: relayed to the child alone.
_PROCESS_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGWINCH)
# What the child inherits from the warm quire, not from its launcher, and Python
# fixed at start-up: a launcher that differs in any of these runs its command itself.
_STATUS_FIELDS = frozenset(
    [
        "Uid",
        "Gid",
        "Groups",
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
        "Seccomp",
    ]
)
_NAMESPACES = ("cgroup", "ipc", "mnt", "pid", "user", "uts")
_STARTUP_ENV = ("LANG", "LC_ALL", "LC_CTYPE")
SOCKET_NAME = "warm.sock"
# sun_path holds 108 bytes; keep one for the NUL some systems want.
_SOCKET_PATH_MAX = 107


class _Abort(Exception):
    """A stop signal came before the warm quire's child was ready to receive it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def main() -> None:
    """Console-script entry point: run the command warm if a warm quire serves it, else here."""
    if not os.environ.get(NO_WARM_ENV) and not _LOCAL_WORDS.intersection(sys.argv[1:]):
        code = run_warm(sys.argv)
        if code is not None:
            sys.exit(code)
    from quire.cli import finish
    from quire.cli.app import main as run_here

    finish.finish(finish.exit_code(run_here))


def state_dir() -> str:
    """The state directory, as `quire.paths.state_dir` (and platformdirs) resolve it."""
    override = os.environ.get("QUIRE_STATE_DIR")
    if override:
        return override
    base = os.environ.get("XDG_STATE_HOME", "").strip()
    if not base:
        base = os.path.expanduser("~/.local/state")
    return os.path.join(base, "quire")


def socket_path(state: str) -> str:
    """The warm quire's socket for the state directory `state`."""
    return os.path.join(state, SOCKET_NAME)


def reach(state: str, act: Callable[[str], object]) -> None:
    """`act(address)` (a socket's connect or bind) with an address of `state`'s warm socket:
    its path, or, when that is too long for a socket address, the same file reached through
    the directory's descriptor (/proc/self/fd/N/warm.sock). Raises OSError."""
    path = socket_path(state)
    if len(os.fsencode(path)) <= _SOCKET_PATH_MAX:
        act(path)
        return
    fd = os.open(state, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        act(f"/proc/self/fd/{fd}/{SOCKET_NAME}")
    finally:
        os.close(fd)


def identity() -> Identity:
    """What a warm quire must share with this process to run its commands as this process
    would: interpreter, code, Python's start-up settings, and the process's credentials,
    limits, priority, cgroup and namespaces (a fork keeps the server's)."""
    import resource

    limits = [
        resource.getrlimit(getattr(resource, name))
        for name in sorted(dir(resource))
        if name.startswith("RLIMIT_")
    ]
    process = [
        line
        for line in _read("/proc/self/status").splitlines()
        if line.split(":", 1)[0] in _STATUS_FIELDS
    ]
    process.append(_read("/proc/self/cgroup"))
    for name in _NAMESPACES:
        try:
            process.append(os.readlink(f"/proc/self/ns/{name}"))
        except OSError:
            process.append(f"{name}:?")
    process.append(f"nice {os.getpriority(os.PRIO_PROCESS, 0)} limits {limits}")
    startup = [
        f"{key}={value}"
        for key, value in sorted(os.environ.items())
        if key.startswith("PYTHON") or key in _STARTUP_ENV
    ]
    return {
        "executable": sys.executable,
        "prefix": sys.prefix,
        "package": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        "python": [*sys.path[1:], *startup, str(tuple(sys.flags))],
        "process": process,
    }


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def run_warm(argv: list[str]) -> int | None:
    """Run `argv` in a warm quire; its exit code, or None when none serves this command."""
    # _socket, not socket: the socket module's enums cost every command milliseconds.
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            reach(state_dir(), conn.connect)
            if peer_uid(conn) != os.getuid():
                return None  # a state directory others can write to: never talk to them
            cwd = os.getcwd()
        except OSError:
            return None  # no state directory yet, nobody listening, no working directory
        umask = os.umask(0o22)
        os.umask(umask)
        fds = [fd for fd in (0, 1, 2) if _is_open(fd)]
        request: Request = {
            "argv": argv,
            "cwd": cwd,
            "path0": sys.path[0] if sys.path else "",
            "env": dict(os.environ),
            "umask": umask,
            "fds": fds,
            **identity(),
        }

        def abort(signum: int, _frame: FrameType | None) -> None:
            raise _Abort(signum)

        stops = (*_GROUP_SIGNALS, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, abort) for sig in (*stops, signal.SIGWINCH)}
        signal.signal(signal.SIGWINCH, signal.SIG_IGN)
        try:
            conn.settimeout(ANSWER_TIMEOUT_S)
            try:
                send(conn, request, fds)
                reply = receive(conn)
                pid = None if reply is None else reply.get("pid")
                if not isinstance(pid, int) or pid <= 1 or pid == os.getpid():
                    return None  # refused (another interpreter, changed code), or nonsense
                conn.settimeout(None)
                return _relay(conn, pid)
            except OSError:
                return None  # the warm quire did not answer in time: run here
        except _Abort as stopped:
            return _die_of(stopped.signum)  # as this process would have, starting cold
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        conn.close()


def _relay(conn: _socket.socket, pid: int) -> int:
    """Let the child start, forward signals to it until it reports its exit code."""
    relayed: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        if signum != signal.SIGWINCH:
            relayed.append(signum)
        _signal(pid, signum, group=signum in _GROUP_SIGNALS)

    def suspend(signum: int, _frame: FrameType | None) -> None:
        # Ctrl-Z: stop the child's group, then ourselves, as the terminal would have. SIGSTOP,
        # as the kernel discards SIGTSTP sent to a group with no parent in its session.
        _signal(pid, signal.SIGSTOP, group=True)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)
        signal.signal(signal.SIGTSTP, suspend)  # continued (`fg`): the child too
        _signal(pid, signal.SIGCONT, group=True)

    for sig in (*_GROUP_SIGNALS, *_PROCESS_SIGNALS):
        signal.signal(sig, forward)
    previous_tstp = signal.signal(signal.SIGTSTP, suspend)
    try:
        send(conn, {"go": True})
        done = receive(conn)
    except OSError:
        done = None
    finally:
        signal.signal(signal.SIGTSTP, previous_tstp)
    code = None if done is None else done.get("exit")
    if isinstance(code, int):
        return code
    if relayed:  # it ended of a signal we relayed, before it could say so
        return _die_of(relayed[-1])
    sys.stderr.write(f"error: quire's warm process {pid} ended without an exit status\n")
    return 70


def _die_of(signum: int) -> int:
    """End this process by `signum`'s default action; 128 + signum if that does not end it."""
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return 128 + signum


def _signal(pid: int, signum: int, *, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except OSError:
        pass  # it has just ended


def peer_uid(conn: _socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = conn.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _CREDENTIALS.size)
    _pid, uid, _gid = _CREDENTIALS.unpack(raw)
    return int(uid)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def send(
    conn: _socket.socket, message: Request | dict[str, object], fds: list[int] | None = None
) -> None:
    """Send one message (plain values only), with `fds` attached to its first byte."""
    body = marshal.dumps(dict(message))
    data = _HEADER.pack(len(body)) + body
    if fds:
        rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", fds))]
        sent = conn.sendmsg([data], rights)  # what socket.send_fds does
    else:
        sent = conn.send(data)
    if sent < len(data):
        conn.sendall(data[sent:])


def receive(conn: _socket.socket) -> dict[str, object] | None:
    """One message sent by `send`, or None when the peer closed the connection first."""
    message, _fds = receive_with_fds(conn, 0)
    return message


def receive_with_fds(
    conn: _socket.socket, max_fds: int, deadline: float | None = None
) -> tuple[dict[str, object] | None, list[int]]:
    """One message and the descriptors that came with it (which the caller must close).

    With a `deadline` (time.monotonic()), a peer too slow to send it all raises TimeoutError.
    """
    head = b""
    fds: list[int] = []
    while len(head) < _HEADER.size:
        _time_left(conn, deadline)
        if max_fds and not fds:
            chunk, fds = _recv_fds(conn, _HEADER.size - len(head), max_fds)
        else:
            chunk = conn.recv(_HEADER.size - len(head))
        if not chunk:
            return None, fds
        head += chunk
    (length,) = _HEADER.unpack(head)
    if length > _MAX_MESSAGE:
        raise OSError(f"message of {length} bytes is too large")
    body = b""
    while len(body) < length:
        _time_left(conn, deadline)
        chunk = conn.recv(length - len(body))
        if not chunk:
            return None, fds
        body += chunk
    # marshal, not json: it costs no import. The server reads only from its own uid.
    message = marshal.loads(body)
    if not isinstance(message, dict):
        raise OSError("malformed message")
    return message, fds


def _recv_fds(conn: _socket.socket, size: int, max_fds: int) -> tuple[bytes, list[int]]:
    """Up to `size` bytes and the descriptors sent with them (what socket.recv_fds does)."""
    ints = array.array("i")
    data, ancillary, _flags, _addr = conn.recvmsg(size, _socket.CMSG_LEN(max_fds * ints.itemsize))
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            ints.frombytes(payload[: len(payload) - len(payload) % ints.itemsize])
    return data, list(ints)


def _time_left(conn: _socket.socket, deadline: float | None) -> None:
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the peer is too slow")
        conn.settimeout(left)
