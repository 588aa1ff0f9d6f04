"""The process tree helpers, on real processes: descendants, subreaping, terminating."""

from __future__ import annotations

import os
import subprocess
import time

from quire.tools import proctree
from quire.tools.drain import Drainer


def wait_for(predicate: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_descendants_include_grandchildren_and_a_subreaper_adopts_orphans() -> None:
    with proctree.subreaper() as became:
        assert became
        # sh starts a background sleep and exits: the sleep is orphaned, and adopted by us.
        subprocess.run(["sh", "-c", "exec 1>&-; sleep 30 &"], check=True)

        def orphans() -> list[int]:
            return [pid for pid in proctree.children(os.getpid()) if _name(pid) == "sleep"]

        wait_for(lambda: len(orphans()) == 1)  # the forked child may not have exec'd yet
        (orphan,) = orphans()
        assert orphan in proctree.descendants(os.getpid())
        ended = proctree.terminate(proctree.described([orphan]), grace_s=0.5)
        assert [proc.pid for proc in ended] == [orphan]
        assert not os.path.exists(f"/proc/{orphan}")  # killed and reaped


def test_terminate_kills_what_ignores_sigterm_after_the_grace() -> None:
    proc = subprocess.Popen(["sh", "-c", "trap '' TERM; while true; do sleep 0.05; done"])
    try:
        wait_for(lambda: proctree.children(proc.pid))  # the trap is set by then
        tree = proctree.described([proc.pid])
        t0 = time.monotonic()
        ended = proctree.terminate(tree, grace_s=0.3)
        took = time.monotonic() - t0
        assert took >= 0.3  # TERM was ignored for the whole grace, then KILL
        assert [p.pid for p in ended] == [proc.pid]
        assert not os.path.exists(f"/proc/{proc.pid}")  # gone, and reaped
    finally:
        proc.kill()
        proc.wait()


def test_a_reused_pid_is_never_signalled() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        real = proctree.Proc(proc.pid, proctree.start_ticks(proc.pid))
        impostor = proctree.Proc(proc.pid, (real.start or 0) + 1)
        assert proctree.terminate([impostor]) == []
        assert proctree.kill_recorded([impostor]) == []
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_the_subreaper_setting_is_put_back() -> None:
    with proctree.subreaper():
        pass
    subprocess.run(["sh", "-c", "sleep 0.2 &"], check=True)
    assert all(_name(pid) != "sleep" for pid in proctree.children(os.getpid()))


def test_a_drainer_reads_in_order_until_the_writer_closes() -> None:
    read_end, write_end = os.pipe()
    got: list[bytes] = []
    drainer = Drainer()
    pipe = os.fdopen(read_end, "rb", buffering=0)
    drainer.adopt(pipe, "stdout", lambda name, data: got.append(data), owner=None)
    for i in range(50):
        os.write(write_end, b"%d\n" % i)
    os.close(write_end)
    drainer.close(wait_s=2)
    assert b"".join(got) == b"".join(b"%d\n" % i for i in range(50))
    assert drainer.open == 0


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def test_adopted_orphans_are_collected_but_not_the_children_quire_waits_for() -> None:
    with proctree.subreaper():
        ours = subprocess.Popen(["sh", "-c", "exit 3"])
        subprocess.run(["sh", "-c", "exec 1>&-; true &"], check=True)
        wait_for(
            lambda: any(_zombie(pid) for pid in proctree.children(os.getpid()) if pid != ours.pid)
        )
        wait_for(lambda: _zombie(ours.pid))
        proctree.reap_adopted(lambda pid: pid == ours.pid)
        left = proctree.children(os.getpid())
        assert left == [ours.pid]  # the orphan is gone; ours still waits for its Popen
        assert ours.wait(5) == 3  # its exit status was not stolen


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] == b"Z"


def test_descendants_and_their_ending_reach_four_levels_down(tmp_path: object) -> None:
    """quire -> sh -> sh -> sh -> sleep: the whole tree is found and ended, even once
    the middle shells are gone and the sleep was adopted on the way."""
    import shlex

    chain = "sleep 300 & echo $! > /dev/stderr; wait"
    for _ in range(2):
        chain = f"sh -c {shlex.quote(chain)} & wait"
    with proctree.subreaper():
        top = subprocess.Popen(["sh", "-c", chain], stderr=subprocess.PIPE)
        try:
            assert top.stderr is not None
            deepest = int(top.stderr.readline())
            tree = proctree.descendants(os.getpid())
            assert deepest in tree
            assert len([pid for pid in tree if pid in _tree_of(top.pid)]) == 4
            assert tree.index(top.pid) < tree.index(deepest)  # parents before children
            ended = proctree.terminate(proctree.described(tree), grace_s=0.5)
            assert deepest in [proc.pid for proc in ended]
            wait_for(lambda: _name(deepest) != "sleep")
        finally:
            top.kill()
            top.wait()
            if top.stderr is not None:
                top.stderr.close()


def _tree_of(pid: int) -> list[int]:
    """`pid` and everything under it, walked here independently of proctree."""
    found = [pid]
    for child in proctree.children(pid):
        found.extend(_tree_of(child))
    return found
