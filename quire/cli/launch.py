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

The socket is in Linux's abstract namespace, named after the state
directory's device and inode (nothing on disk to go stale, no path length
limit), like the worker's wake-up socket; the server only serves peers of
its own uid (SO_PEERCRED).
"""

from __future__ import annotations

import marshal
import os
import signal
import socket
import struct
import sys

TYPE_CHECKING = False  # typing costs this path milliseconds on every command
if TYPE_CHECKING:
    from types import FrameType
    from typing import TypedDict

    class Identity(TypedDict):
        """What a warm quire must share with its launcher: interpreter and code."""

        executable: str
        prefix: str
        package: str

    class Request(Identity):
        """A command for a warm quire (with the descriptors `fds` attached)."""

        argv: list[str]
        cwd: str
        env: dict[str, str]
        umask: int
        fds: list[int]


# Set to run every command here, never through a warm quire.
NO_WARM_ENV = "QUIRE_NO_WARM"
# Commands that must run in this process: the server itself, and completion,
# which finds the shell by walking up from its parent process.
_LOCAL_WORDS = frozenset({"warm", "--install-completion", "--show-completion"})
_HEADER = struct.Struct("!I")
_MAX_MESSAGE = 16 * 1024 * 1024
# Signals a terminal sends to the whole foreground process group: relayed to the
# child's group (the job's commands are in it), as the terminal would have done.
_GROUP_SIGNALS = (signal.SIGINT, signal.SIGQUIT)
# Signals someone sends to quire itself: relayed to the child alone.
_PROCESS_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGWINCH)


def main() -> None:
    """Console-script entry point: run the command warm if a warm quire serves it, else here."""
    if not os.environ.get(NO_WARM_ENV) and not _LOCAL_WORDS.intersection(sys.argv[1:]):
        code = run_warm(sys.argv)
        if code is not None:
            sys.exit(code)
    from quire.cli.app import main as run_here

    run_here()


def state_dir() -> str:
    """The state directory, as `quire.paths.state_dir` (and platformdirs) resolve it."""
    override = os.environ.get("QUIRE_STATE_DIR")
    if override:
        return override
    base = os.environ.get("XDG_STATE_HOME", "").strip()
    if not base:
        base = os.path.expanduser("~/.local/state")
    return os.path.join(base, "quire")


def address(state: str) -> str:
    """The warm quire's socket for `state`: abstract, named after the directory's identity."""
    found = os.stat(state)
    return f"\0quire-warm-{found.st_dev:x}-{found.st_ino:x}"


def identity() -> Identity:
    """What a warm quire must share with this process to run its commands: interpreter and code."""
    return {
        "executable": sys.executable,
        "prefix": sys.prefix,
        "package": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    }


def run_warm(argv: list[str]) -> int | None:
    """Run `argv` in a warm quire; its exit code, or None when none serves this command."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with conn:
        try:
            conn.connect(address(state_dir()))
        except OSError:
            return None  # no state directory yet, or nobody listening
        umask = os.umask(0o22)
        os.umask(umask)
        fds = [fd for fd in (0, 1, 2) if _is_open(fd)]
        request: Request = {
            "argv": argv,
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "umask": umask,
            "fds": fds,
            **identity(),
        }
        pending: list[int] = []
        previous = {
            sig: signal.signal(sig, lambda signum, _frame: pending.append(signum))
            for sig in (*_GROUP_SIGNALS, *_PROCESS_SIGNALS)
        }
        try:
            send(conn, request, fds)
            reply = receive(conn)
            pid = None if reply is None else reply.get("pid")
            if not isinstance(pid, int):
                return None  # refused: another interpreter, or its code changed
            return _relay(conn, pid, pending)
        except OSError:
            return None if not pending else 128 + pending[0]
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _relay(conn: socket.socket, pid: int, pending: list[int]) -> int:
    """Forward signals to the child until it reports its exit code."""

    def forward(signum: int, _frame: FrameType | None) -> None:
        try:
            if signum in _GROUP_SIGNALS:
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)
        except OSError:
            pass  # it has just ended

    for signum in pending:
        forward(signum, None)

    def relay(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)
        forward(signum, frame)

    for sig in (*_GROUP_SIGNALS, *_PROCESS_SIGNALS):
        signal.signal(sig, relay)
    done = receive(conn)
    code = None if done is None else done.get("exit")
    if isinstance(code, int):
        return code
    if pending:  # it ended of a signal we relayed, before it could say so
        return 128 + pending[-1]
    sys.stderr.write(f"error: quire's warm process {pid} ended without an exit status\n")
    return 70


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def send(
    conn: socket.socket, message: Request | dict[str, object], fds: list[int] | None = None
) -> None:
    """Send one message (plain values only), with `fds` attached to its first byte."""
    body = marshal.dumps(dict(message))
    data = _HEADER.pack(len(body)) + body
    sent = socket.send_fds(conn, [data], fds) if fds else conn.send(data)
    if sent < len(data):
        conn.sendall(data[sent:])


def receive(conn: socket.socket) -> dict[str, object] | None:
    """One message sent by `send`, or None when the peer closed the connection first."""
    message, _fds = receive_with_fds(conn, 0)
    return message


def receive_with_fds(
    conn: socket.socket, max_fds: int
) -> tuple[dict[str, object] | None, list[int]]:
    """One message and the descriptors that came with it (which the caller must close)."""
    head = b""
    fds: list[int] = []
    while len(head) < _HEADER.size:
        if max_fds and not fds:
            chunk, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size - len(head), max_fds)
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
        chunk = conn.recv(length - len(body))
        if not chunk:
            return None, fds
        body += chunk
    # marshal, not json: it costs no import. The server reads only from its own uid.
    message = marshal.loads(body)
    if not isinstance(message, dict):
        raise OSError("malformed message")
    return message, fds
