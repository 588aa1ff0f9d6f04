"""Turning SIGINT, SIGTERM and SIGHUP into one exception, and shielding teardown from them.

During a run, any of the three raises `Interrupted` in the main thread, so
the run unwinds through its context managers (container teardown, records).
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


def _handler(signum: int, frame: FrameType | None) -> None:
    if _shield_depth:
        return  # teardown and the final records go on; the run is failing already
    raise Interrupted(f"interrupted by {signal.Signals(signum).name}")


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
