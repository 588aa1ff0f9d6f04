"""The processes a job left behind: found through the kernel, ended on purpose.

quire makes itself a child subreaper (`PR_SET_CHILD_SUBREAPER`): a process
a command started and abandoned (`cmd &`, `nohup`, `setsid`, a daemon's
double fork) is re-parented to quire instead of to init, so every process
a job started stays a descendant of quire, found through
`/proc/<pid>/task/<tid>/children`, never by name. `terminate` ends a set of
them (SIGTERM, then SIGKILL after a grace) and reaps the ones that became
quire's own children.

What this cannot catch: a process that was handed to another supervisor
(`systemd-run`, a `docker run` whose container lives in the engine), and,
while quire itself is killed with -9, descendants that re-parent to init
before reconcile kills the recorded ones.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
_PR_GET_CHILD_SUBREAPER = 37


@dataclass(frozen=True)
class Proc:
    """A process, told apart from a later one with the same pid by its start time."""

    pid: int
    start: int | None


@contextmanager
def subreaper() -> Iterator[bool]:
    """While inside, this process is the reaper of its orphaned descendants (yields
    False where the kernel does not offer it); afterwards, as it was."""
    prctl = _prctl()
    if prctl is None:
        yield False
        return
    was = ctypes.c_int(0)
    prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0)
    became = prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield became
    finally:
        if became and not was.value:
            prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def children(pid: int) -> list[int]:
    """The direct children of `pid` (every thread's), from /proc."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                found.extend(int(child) for child in handle.read().split())
        except OSError:
            continue
    return found


def descendants(pid: int, *, skip: Iterable[int] = ()) -> list[int]:
    """Every living descendant of `pid`, parents before children; the processes in `skip`
    and their descendants left out (never walked)."""
    found: list[int] = []
    skipped = set(skip)
    todo = [child for child in children(pid) if child not in skipped]
    seen = set(todo) | skipped
    while todo:
        current = todo.pop(0)
        found.append(current)
        for child in children(current):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return found


def _stat(pid: int) -> list[bytes]:
    """The fields of /proc/<pid>/stat after the command name (state first); [] if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return []
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    return stat[stat.rfind(b")") + 2 :].split()


def state(pid: int) -> str | None:
    """The one-letter state of `pid` (R, S, Z, ...), or None if there is no such process."""
    fields = _stat(pid)
    return fields[0].decode() if fields else None


def start_ticks(pid: int) -> int | None:
    """/proc start time of `pid` in clock ticks since boot (None: no such process)."""
    try:
        return int(_stat(pid)[19])
    except (IndexError, ValueError):
        return None


def described(pids: Iterable[int]) -> list[Proc]:
    """`pids` with their start times (ones already gone are left out)."""
    procs = [Proc(pid, start_ticks(pid)) for pid in pids]
    return [proc for proc in procs if proc.start is not None]


def terminate(procs: Iterable[Proc], *, grace_s: float = 0.5) -> list[Proc]:
    """SIGTERM each process still the same one, SIGKILL those alive after `grace_s`;
    reaps quire's own children among them. Returns the ones that were signalled
    (ended ones, zombies, are only collected)."""
    given = list(procs)
    reap(proc.pid for proc in given if _same(proc) and not _running(proc))
    targets = [proc for proc in given if _running(proc)]
    for proc in targets:
        _signal(proc.pid, signal.SIGTERM)
    pids = [proc.pid for proc in targets]
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_running(proc) for proc in targets):
        reap(pids)
        time.sleep(0.02)
    for proc in targets:
        if _running(proc):
            _signal(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(_running(proc) for proc in targets):
        reap(pids)
        time.sleep(0.01)
    reap(pids)
    return targets


def kill_group_and_tree(pid: int) -> None:
    """SIGKILL `pid`'s process group and every descendant of `pid` (a timed-out command)."""
    tree = described(descendants(pid))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    for child in tree:
        _signal(child.pid, signal.SIGKILL)
    # Orphans among them are our children now: collect them, or they linger as zombies.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and any(_running(child) for child in tree):
        time.sleep(0.01)
    reap(child.pid for child in tree)


def kill_recorded(procs: Iterable[Proc]) -> list[Proc]:
    """SIGKILL processes recorded by a runner that died, and their process groups; only
    those whose start time still matches (a reused pid is someone else's)."""
    killed = []
    for proc in procs:
        if proc.start is None or start_ticks(proc.pid) != proc.start:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        _signal(proc.pid, signal.SIGKILL)
        killed.append(proc)
    return killed


def reap(pids: Iterable[int]) -> None:
    """Collect the exit status of those of `pids` that are our ended children (adopted
    orphans too). Only these: a command another part of quire waits for keeps its own."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def reap_adopted(ours: Callable[[int], bool]) -> None:
    """Collect orphans adopted as a subreaper that have ended (zombies), leaving alone
    the children `ours` says quire started itself (their Popen collects them)."""
    for child in children(os.getpid()):
        if not ours(child) and _zombie(child):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child, os.WNOHANG)


def _zombie(pid: int) -> bool:
    return state(pid) == "Z"


def _same(proc: Proc) -> bool:
    return proc.start is not None and start_ticks(proc.pid) == proc.start


def _running(proc: Proc) -> bool:
    return _same(proc) and state(proc.pid) != "Z"  # a zombie is over


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)
