"""Turning SIGINT, SIGTERM and SIGHUP into one exception, and shielding teardown from them.

During a run, any of the three raises `Interrupted` in the main thread, so
the run unwinds through its context managers (container teardown, records).
Inside `shielded()`, a signal is only noted: a second Ctrl-C while tearing
down must not skip the teardown.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from quire.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_shield_depth = 0
_noted: list[int] = []


def _handler(signum: int, frame: FrameType | None) -> None:
    if _shield_depth:
        _noted.append(signum)
        return
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
    """While inside, signals handled by `raising()` are noted, not raised."""
    global _shield_depth
    _shield_depth += 1
    try:
        yield
    finally:
        _shield_depth -= 1


def noted() -> bool:
    """Whether a signal arrived while shielded (teardown may cut waits short)."""
    return bool(_noted)
