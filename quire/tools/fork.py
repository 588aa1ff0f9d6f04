"""The warm quire's own processes: a forked child per command, and itself started anew.

Every other process quire starts runs a program (quire/tools/process.py). The
warm server (quire/cli/warm.py) instead forks itself, so that a command runs
with quire already imported, and re-executes itself when quire's code has
changed. Those two calls live here, with the reaping of the children, so that
nothing outside quire/tools/ creates a process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn

# What a child that returned or raised into this module ends with: EX_SOFTWARE, as
# quire's own internal error (quire.errors.ExitCode.internal).
_CAME_BACK = 70


def fork_child(run: Callable[[], object]) -> int:
    """Fork; the child calls `run()`, which should end the process (`os._exit`); the parent
    gets the child's pid. A child whose `run` returns or raises ends with exit code 70: it
    never comes back into the caller's code (the server's loop). Raises OSError."""
    pid = os.fork()
    if pid == 0:
        try:
            run()
        finally:
            os._exit(_CAME_BACK)
    return pid


def reap() -> list[tuple[int, int]]:
    """The children that have ended, with their exit codes (negative: killed by that
    signal); never waits. Any child: those a server forked before it re-executed itself are
    its children too, and unknown to it."""
    ended: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if not pid:
            return ended
        ended.append((pid, os.waitstatus_to_exitcode(status)))


def reexec() -> NoReturn:
    """Replace this process by the same command line started afresh: same pid, arguments
    and environment, new code. Raises OSError when the interpreter cannot be executed."""
    os.execv(sys.executable, sys.orig_argv)
