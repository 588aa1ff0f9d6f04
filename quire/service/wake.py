"""Waking idle workers the moment a run is queued (SQLite has no NOTIFY).

    $QUIRE_STATE_DIR/queue.wake/<pid>    one empty file per listening worker

Each worker listens on a Linux abstract-namespace datagram socket named
after the state directory and its pid (no path length limit, and nothing
left on disk when it dies). The hook lists the directory and sends one
byte to each; a worker that is gone refuses it and is skipped. A lost
wake-up only delays a run until the worker's fallback poll.

Standard library only: the post-receive hook imports this on every push.
"""

from __future__ import annotations

import contextlib
import os
import socket

WAKE_DIR = "queue.wake"

TYPE_CHECKING = False  # typing itself costs the hook milliseconds
if TYPE_CHECKING:
    StrPath = str | os.PathLike[str]


def _address(state: StrPath, pid: int) -> str:
    # The state directory's device and inode name it (cheaper than hashing its path,
    # and the same whichever path leads to it).
    found = os.stat(state)
    return f"\0quire-wake-{found.st_dev:x}-{found.st_ino:x}-{pid}"


def wake_all(state: StrPath) -> int:
    """Nudge every worker of `state`; returns how many are listening."""
    try:
        names = os.listdir(os.path.join(state, WAKE_DIR))
    except OSError:
        return 0
    woken = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for name in names:
            if not name.isdigit():
                continue
            try:
                sock.sendto(b"!", _address(state, int(name)))
            except BlockingIOError:
                woken += 1  # its buffer is full of wake-ups already: it will look
            except OSError:
                continue  # ECONNREFUSED: that worker is gone
            else:
                woken += 1
    return woken


def listening(state: StrPath) -> int:
    """How many workers of `state` listen now (each probed without waking it: connecting
    a datagram socket sends nothing, and is refused when nobody is bound)."""
    try:
        names = os.listdir(os.path.join(state, WAKE_DIR))
    except OSError:
        return 0
    alive = 0
    for name in names:
        if not name.isdigit():
            continue
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect(_address(state, int(name)))
            except OSError:
                continue
            alive += 1
    return alive


class Listener:
    """A worker's wake-up socket (a context manager); `fileno()` for a selector."""

    def __init__(self, state: StrPath) -> None:
        from pathlib import Path  # the worker's side only

        self.state = state
        self.pid = os.getpid()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._sock.bind(_address(state, self.pid))
        self._marker = Path(state, WAKE_DIR, str(self.pid))
        self._marker.parent.mkdir(parents=True, exist_ok=True)
        self._marker.touch()
        self._forget_dead_workers()

    def _forget_dead_workers(self) -> None:
        """Remove markers of workers that no longer listen (after a kill -9)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            probe.setblocking(False)
            for marker in self._marker.parent.iterdir():
                if not marker.name.isdigit() or int(marker.name) == self.pid:
                    continue
                try:
                    probe.sendto(b"!", _address(self.state, int(marker.name)))
                except ConnectionRefusedError:
                    marker.unlink(missing_ok=True)
                except OSError:
                    continue

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self) -> int:
        """Read every pending wake-up; returns how many there were."""
        count = 0
        while True:
            try:
                self._sock.recv(64)
            except (BlockingIOError, InterruptedError):
                return count
            count += 1

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._marker.unlink()
        self._sock.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
