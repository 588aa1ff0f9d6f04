"""Is the process that owns a run still alive? (pid + its start time, from /proc)."""

from __future__ import annotations

import os

from quire.tools import proctree


def process_start_ticks(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot, or None if unknown."""
    return proctree.start_ticks(pid)


def process_state(pid: int) -> str | None:
    """The one-letter state of `pid` (R, S, Z, ...) from /proc, or None if unknown."""
    return proctree.state(pid)


def is_alive(pid: int, start_ticks: int | None) -> bool:
    """Whether `pid` runs and is the same process (not a reused pid).

    A zombie (killed, not yet reaped by its parent) is dead: it will never
    finish its run.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    if process_state(pid) in ("Z", "X"):
        return False
    if start_ticks is None:
        return True
    current = process_start_ticks(pid)
    return current is None or current == start_ticks
