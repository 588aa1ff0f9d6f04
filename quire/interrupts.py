"""Turning SIGINT, SIGTERM and SIGHUP into one exception, and shielding teardown from them.

During a run, any of the three raises `Interrupted` in the main thread, so
the run unwinds through its context managers (container teardown, records).
The signal is also remembered: job code that catches the exception cannot
make the run go on (`check` raises it again at the next command or job).
Inside `shielded()`, a signal is ignored: a second Ctrl-C while tearing
down must not skip the teardown.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from quire.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_shield_depth = 0
# The signal that interrupted the run, once one has: job code may catch the
# Interrupted it raised, but the run stays interrupted (see `check`).
_received: str | None = None


def _handler(signum: int, frame: FrameType | None) -> None:
    global _received
    message = f"interrupted by {signal.Signals(signum).name}"
    _received = _received or message
    if _shield_depth:
        return  # teardown and the final records go on; the run is failing already
    raise Interrupted(message)


def received() -> Interrupted | None:
    """The interrupt this process received (since `clear`), or None."""
    return None if _received is None else Interrupted(_received)


def check() -> None:
    """Raise `Interrupted` again if a signal arrived, whatever job code did with it."""
    if _received is not None:
        raise Interrupted(_received)


def clear() -> None:
    """Forget a received interrupt (a new run starts)."""
    global _received
    _received = None


@contextmanager
def raising() -> Iterator[None]:
    """While inside, the three signals raise `Interrupted` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def shielded() -> Iterator[None]:
    """While inside, the three signals are noted, not raised, and never kill us.

    Also outside `raising()`: the bookkeeping after a run (removing the
    workspace, the final records) must not be cut short by a SIGTERM's
    default action, or the run would be left in active/.
    """
    global _shield_depth
    installed: dict[signal.Signals, Any] = {}
    main = threading.current_thread() is threading.main_thread()
    if main:
        # Blocked while the handlers change hands: no signal slips in between.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        _shield_depth += 1
        if main:
            for sig in SIGNALS:
                if signal.getsignal(sig) is not _handler:
                    installed[sig] = signal.signal(sig, _handler)
    finally:
        if main:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    try:
        yield
    finally:
        if main:
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            for sig, old in installed.items():
                if old is not None:  # None: not installed from Python; leave ours
                    signal.signal(sig, old)
            _shield_depth -= 1
        finally:
            if main:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
