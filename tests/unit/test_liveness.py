"""quire.ci.store.liveness against real processes: a pid is alive only while it runs AND
is the same process that wrote runner.yml (its /proc start time matches)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quire.ci.store.liveness import is_alive, process_start_ticks, process_state


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child whose command name holds spaces and parentheses, as /proc/<pid>/stat shows it."""
    odd = tmp_path / "a) 1 2 (b"
    odd.symlink_to(sys.executable)
    child = subprocess.Popen([str(odd), "-c", "import time; time.sleep(60)"])
    try:
        # Until its exec completes, the child still carries our command name.
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/comm").read_text() != "a) 1 2 (b\n":
            assert time.monotonic() < deadline, "the child never took its odd name"
            time.sleep(0.005)
        yield child
    finally:
        child.kill()
        child.wait()


def start_field(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat, found by the command name read from /proc/<pid>/comm."""
    comm = Path(f"/proc/{pid}/comm").read_text().rstrip("\n")
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.split(f"({comm}) ", 1)[1].split()[19])


def test_this_process_is_alive_and_a_reused_pid_is_not() -> None:
    me = os.getpid()
    start = process_start_ticks(me)
    assert start is not None
    assert is_alive(me, start)
    assert is_alive(me, None)
    assert not is_alive(me, start + 1)  # same pid, another process


@pytest.mark.parametrize("offset", [-1, 1, 10_000])
def test_a_running_pid_with_another_start_time_is_dead(offset: int) -> None:
    me = os.getpid()
    start = process_start_ticks(me)
    assert start is not None
    assert not is_alive(me, start + offset)


def test_a_running_pid_without_a_recorded_start_time_is_alive() -> None:
    # runner.yml from before pid_start existed: the pid is all there is to go on.
    assert is_alive(os.getpid(), None)


def test_start_time_and_state_are_read_past_an_odd_command_name(
    sleeper: subprocess.Popen[bytes],
) -> None:
    start = process_start_ticks(sleeper.pid)
    assert start is not None
    assert start == start_field(sleeper.pid)
    assert process_state(sleeper.pid) in ("R", "S")
    assert is_alive(sleeper.pid, start)
    assert not is_alive(sleeper.pid, start + 1)


def test_a_pid_that_cannot_exist_has_no_start_time_or_state_and_is_dead() -> None:
    beyond = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    assert process_start_ticks(beyond) is None
    assert process_state(beyond) is None
    assert not is_alive(beyond, None)


def test_a_process_that_exited_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = process_start_ticks(child.pid)
    child.wait()
    assert not is_alive(child.pid, start)


def test_a_killed_but_unreaped_runner_is_not_alive() -> None:
    # kill -9 of a runner whose parent has not waited for it yet: a zombie.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = process_start_ticks(child.pid)
        assert is_alive(child.pid, start)
        os.kill(child.pid, 9)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not is_alive(child.pid, start)
    finally:
        child.kill()
        child.wait()
