"""`quire ci serve` in the foreground: uvicorn on one socket, stopped by SIGINT or SIGTERM.

The socket is bound here, before uvicorn starts, so that the URL printed is
the real one (also with `--port 0`) and a port in use is a plain error.
Logs go to stderr. On SIGINT or SIGTERM uvicorn stops accepting, gives
open connections (live streams never end on their own) `GRACE_S` seconds,
and returns; the command then exits 0.

A client gets `REQUEST_TIMEOUT_S` seconds to send each request whole
(quire.web.protocol), `KEEP_ALIVE_S` seconds of quiet between requests,
and at most `MAX_HEAD_BYTES` of request line and headers: a connection
that sends nothing, or half a request, is closed rather than held.
"""

from __future__ import annotations

import ipaddress
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

from quire.errors import EnvironmentProblem, UsageError

GRACE_S = 2
# An idle connection between two requests is closed after this many seconds.
KEEP_ALIVE_S = 5
# Request line and headers beyond this are a 400 (h11's own default, said out loud).
MAX_HEAD_BYTES = 16 * 1024
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


class CannotListen(EnvironmentProblem):
    """The address to serve on cannot be bound (in use, not ours, not an address)."""


def is_loopback(host: str) -> bool:
    """Whether `host` only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; raises `CannotListen`."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise CannotListen(f"cannot listen on {host}:{port}: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(state: Path, host: str, port: int, *, rebuild_index: bool = False) -> int:
    """Serve the run store in `state` until SIGINT/SIGTERM; returns the exit code."""
    import uvicorn

    from quire.config import load_config
    from quire.web.accounts import open_accounts
    from quire.web.app import create_app
    from quire.web.protocol import RequestDeadlineProtocol

    loopback = is_loopback(host)
    accounts = open_accounts(state)
    if not loopback and not accounts.has_users():
        accounts.close()
        raise UsageError(
            f"refusing to serve on {host}: no user can log in yet, so nobody could act on the "
            "runs and nothing would stand between the network and them. Add one first: "
            "`quire ci user add NAME --role operator` (or serve on 127.0.0.1)"
        )
    anonymous = load_config().web.anonymous
    app = create_app(
        state,
        allowed_hosts=LOOPBACK_NAMES if loopback else None,
        accounts=accounts,
        anonymous=anonymous,
    )
    web = app.state.web
    if rebuild_index:
        web.index.rebuild()
    web.index.sync()  # the first page should not pay for reading every run
    sock = bind(host, port)
    if not loopback and anonymous == "read":
        _say(
            f"warning: listening on {host}, not on 127.0.0.1: anyone who can reach this "
            'address can read every run\'s records and logs ([web] anonymous = "none" in the '
            "config file asks them to log in first)"
        )
    _say(f"quire: serving the runs in {state} at {url_of(sock)} (Ctrl-C to stop)")
    config = uvicorn.Config(
        app,
        log_level="info",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=GRACE_S,
        server_header=False,
        # Not "auto": httptools, if installed, would lack the request deadline.
        http=RequestDeadlineProtocol,
        timeout_keep_alive=KEEP_ALIVE_S,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )
    server = uvicorn.Server(config)
    # uvicorn handles SIGINT/SIGTERM itself, then raises the signal again for the
    # handler it found installed. A signal is how serving normally ends, so that
    # handler ignores it and `quire ci serve` exits 0 instead of dying by SIGTERM.
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        web.index.close()
        accounts.close()
    return 0


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Swallows the signal uvicorn raises again once it has shut down."""


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
