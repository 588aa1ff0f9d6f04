"""Is the process that owns a run still alive? (pid + its start time, from /proc)."""

from __future__ import annotations

import os
from pathlib import Path


def process_start_ticks(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot, or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def process_state(pid: int) -> str | None:
    """The one-letter state of `pid` (R, S, Z, ...) from /proc, or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[0] if fields else None


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
