"""The warm quire's own processes (quire/tools/fork.py), and the rule that puts them there:
nothing outside quire/tools/ forks, execs or spawns, and the CLI reaches git through the
layers below it."""

from __future__ import annotations

import ast
import os
import time
from pathlib import Path

import quire
from quire.tools import fork
from tests.helpers import fresh_python

QUIRE_DIR = Path(quire.__file__).parent
_SPAWNS = {"fork", "forkpty", "execv", "execve", "execl", "execle", "execlp", "execvp", "execvpe"}
_SPAWNS |= {"posix_spawn", "posix_spawnp", "spawnv", "spawnve", "system", "popen"}


def spawns_in(path: Path) -> list[str]:
    """`os.<spawn>(...)` calls and subprocess/plumbum imports in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "os" and node.attr in _SPAWNS:
                found.append(f"{path.name}:{node.lineno}: os.{node.attr}")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names]
            for name in names:
                if name.split(".")[0] in ("subprocess", "plumbum", "multiprocessing"):
                    found.append(f"{path.name}:{node.lineno}: import {name}")
    return found


def test_nothing_outside_tools_forks_execs_or_spawns() -> None:
    # The job host (python -m quire.jobhost) is a program of its own, stdlib-only by design
    # (DESIGN.md, "The job host"): its forks of job processes are its own business.
    allowed = (QUIRE_DIR / "tools", QUIRE_DIR / "jobhost")
    found = [
        hit
        for path in sorted(QUIRE_DIR.rglob("*.py"))
        if not any(place in path.parents for place in allowed)
        for hit in spawns_in(path)
    ]
    assert found == []


def test_the_cli_reaches_git_through_the_run_layer() -> None:
    tree = ast.parse((QUIRE_DIR / "cli" / "app.py").read_text())
    imported = [
        node.module + "." + alias.name if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
        if not isinstance(node, ast.ImportFrom) or node.module
    ]
    assert [name for name in imported if name.startswith("quire.tools")] == []


# --- fork_child ----------------------------------------------------------------------------------


def test_a_forked_child_runs_the_function_and_its_pid_comes_back() -> None:
    read, write = os.pipe()
    try:

        def child() -> None:
            os.write(write, str(os.getpid()).encode())
            os._exit(7)

        pid = fork.fork_child(child)
        os.close(write)
        assert os.read(read, 32) == str(pid).encode()
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7
    finally:
        os.close(read)


def test_a_child_whose_function_returns_never_comes_back_into_the_caller() -> None:
    read, write = os.pipe()
    try:
        pid = fork.fork_child(lambda: None)
        if pid == 0:  # only a child that came back would get here
            os.write(write, b"came back")
            os._exit(0)
        os.close(write)
        assert os.read(read, 32) == b""
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 70
    finally:
        os.close(read)


def test_a_child_whose_function_raises_never_comes_back_into_the_caller() -> None:
    def child() -> None:
        raise SystemExit(0)  # not even this may unwind into pytest

    pid = fork.fork_child(child)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 70


def test_reap_collects_every_ended_child_without_waiting_for_running_ones() -> None:
    ended = fork.fork_child(lambda: os._exit(3))
    read, write = os.pipe()

    def running() -> None:
        os.read(read, 1)
        os._exit(0)

    alive = fork.fork_child(running)
    try:
        reaped: dict[int, int] = {}
        while ended not in reaped:  # it ends on its own, at once
            reaped.update(fork.reap())
            time.sleep(0.01)
        assert reaped[ended] == 3
        assert alive not in reaped
    finally:
        os.write(write, b"x")
        os.waitpid(alive, 0)
        os.close(read)
        os.close(write)


# --- reexec --------------------------------------------------------------------------------------


def test_reexec_starts_the_same_command_line_again_in_the_same_process(
    tmp_path: Path,
) -> None:
    done = fresh_python(
        """
        import os
        from quire.tools import fork

        print(os.getpid(), sys.argv[1:], flush=True)
        if not os.environ.get("REEXECUTED"):
            os.environ["REEXECUTED"] = "1"
            fork.reexec()
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first == second
