"""Host mode contains its processes: nothing a job starts outlives it, however it left.

Real quire runs (`python -m quire ci run --executor host`) of pipelines that
leave processes behind in every way people do: `&`, `nohup`, `setsid`, a
double fork, a command that times out, Ctrl-C, and quire itself killed with
-9 (then `quire ci reconcile`). Each pipeline writes the pids it started to
a file outside the workspace, and the test checks those processes are gone.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quire.ci.store.runs import store_for
from tests.helpers import alive
from tests.integration.test_docker_runs import repo_with

pytestmark = pytest.mark.integration

QUIRE = [sys.executable, "-m", "quire"]


def pids_in(path: Path) -> list[int]:
    return [int(word) for word in path.read_text().split()] if path.exists() else []


# A shell loop that returns once the pid file is written.
UNTIL_PIDS = "until [ -s {PIDS} ]; do sleep 0.01; done"


def wait_gone(pids: list[int], seconds: float = 30.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


def run_quire(repo: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*QUIRE, "ci", "run", "--executor", "host", "--repo", str(repo), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def pipeline(tmp_path: Path, name: str, body: str) -> tuple[Path, Path]:
    """A repository whose one job runs `body` (Python, `rt` and `PIDS` in scope)."""
    pids = tmp_path / f"{name}.pids"
    indented = "\n".join("    " + line for line in body.strip().splitlines())
    source = (
        "from quire.ci import job\n\n"
        f"PIDS = {str(pids)!r}\n\n"
        '@job(inputs=["quire/push"])\n'
        f"def leave(rt):\n{indented}\n\n"
        '@job(inputs=["leave"])\n'
        "def after(rt):\n"
        '    rt.sh("echo after ran")\n'
    )
    return repo_with(tmp_path, name, {".quire/ci.py": source}), pids


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("ampersand", 'rt.sh(f"sleep 300 & echo $! >> {PIDS}")'),
        ("nohup", 'rt.sh(f"nohup sleep 300 >/dev/null 2>&1 & echo $! >> {PIDS}")'),
        # The command waits for the pid to be written (a condition, not a time): a job that
        # ended first would have its leftovers killed before they could say who they are.
        (
            "setsid",
            f"rt.sh(f\"setsid sh -c 'sleep 300 & echo $! >> {{PIDS}}; wait' & {UNTIL_PIDS}\")",
        ),
        (
            "double-fork",
            f"rt.sh(f\"sh -c '(sleep 300 & echo $! >> {{PIDS}}) &' && {UNTIL_PIDS}\")",
        ),
        (
            "four-levels-deep",
            "import shlex\n"
            "chain = f'sleep 300 & echo $! >> {PIDS}; wait'\n"
            "for _ in range(3):\n"
            "    chain = f'sh -c {shlex.quote(chain)} & wait'\n"
            f'rt.sh(chain + f" & {UNTIL_PIDS}")',
        ),
    ],
)
def test_a_job_that_leaves_a_process_behind_finishes_and_the_process_ends_with_it(
    tmp_path: Path, docker_engine: str, name: str, body: str
) -> None:
    repo, pids_file = pipeline(tmp_path, name, body)
    done = run_quire(repo, timeout=120)  # far less than `sleep 300`: it did not wait for it
    assert done.returncode == 0, done.stdout + done.stderr
    assert "after ran" in done.stdout
    assert re.search(r"ended \d+ process\(es\) the job left running", done.stdout)
    pids = pids_in(pids_file)
    assert pids, done.stdout
    assert wait_gone(pids) == []


def test_a_background_server_serves_the_jobs_later_commands_and_its_output_is_logged(
    tmp_path: Path, docker_engine: str
) -> None:
    body = """
rt.sh(f"(while true; do echo tick; sleep 0.1; done) & echo $! >> {PIDS}")
rt.sh("sleep 1")
alive = rt.sh(f"kill -0 $(cat {PIDS})").exit == 0
rt.log(f"server alive for later commands: {alive}")
"""
    repo, pids_file = pipeline(tmp_path, "server", body)
    done = run_quire(repo)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "server alive for later commands: True" in done.stdout
    logs = subprocess.run(
        [*QUIRE, "ci", "logs", "latest", "leave", "--repo", str(repo)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert logs.stdout.count("tick") >= 5, logs.stdout  # printed while `sleep 1` ran
    assert wait_gone(pids_in(pids_file)) == []


def test_a_command_ends_when_its_process_exits_not_when_its_children_do(
    tmp_path: Path, docker_engine: str
) -> None:
    body = """
out = rt.sh(f"sleep 100 & echo $! >> {PIDS}; echo hi", timeout=2)
rt.log(f"exit {out.exit} in {out.duration_s:.1f}s: {out.stdout.strip()}")
"""
    repo, pids_file = pipeline(tmp_path, "timeout-bg", body)
    done = run_quire(repo)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exit 0 in 0." in done.stdout and ": hi" in done.stdout
    assert "ran past its timeout" not in done.stdout
    assert wait_gone(pids_in(pids_file)) == []


def test_a_timed_out_command_has_its_whole_tree_killed_also_children_that_left_its_group(
    tmp_path: Path, docker_engine: str
) -> None:
    body = """
try:
    rt.sh(f"setsid sleep 300 & echo $! >> {PIDS}; wait", timeout=1)
except Exception as exc:
    rt.log(f"raised {type(exc).__name__}")
still = rt.sh(f"kill -0 $(cat {PIDS}) 2>/dev/null").exit == 0
rt.log(f"still alive after the timeout: {still}")
"""
    repo, _ = pipeline(tmp_path, "timeout-tree", body)
    done = run_quire(repo)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "raised CommandTimedOut" in done.stdout
    assert "still alive after the timeout: False" in done.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_ends_the_processes_a_job_started(
    tmp_path: Path, docker_engine: str, sig: signal.Signals
) -> None:
    body = 'rt.sh(f"setsid sleep 300 & echo $! >> {PIDS}; sleep 300")'
    repo, pids_file = pipeline(tmp_path, f"interrupt-{sig.name}", body)
    proc = subprocess.Popen(
        [*QUIRE, "ci", "run", "--executor", "host", "--repo", str(repo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while not pids_in(pids_file) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pids_in(pids_file)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    assert wait_gone(pids_in(pids_file)) == []


def test_reconcile_ends_a_killed_runners_commands_before_it_removes_their_workspace(
    tmp_path: Path, docker_engine: str
) -> None:
    body = 'rt.sh(f"echo $$ >> {PIDS}; sleep 0.1; pwd >> {PIDS}.cwd; sleep 300")'
    repo, pids_file = pipeline(tmp_path, "kill9", body)
    proc = subprocess.Popen(
        [*QUIRE, "ci", "run", "--executor", "host", "--repo", str(repo)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    cwd_file = Path(f"{pids_file}.cwd")
    while not cwd_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    (command,) = pids_in(pids_file)
    workspace = Path(cwd_file.read_text().strip())

    def recorded() -> bool:  # processes.yml is written as the command starts
        files = [run.path / "processes.yml" for run in store_for(repo).runs()]
        return any(f.exists() and f"pid: {command}" in f.read_text() for f in files)

    while not recorded() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert recorded()
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert alive(command)  # in its own session: killing quire does not end it
    done = subprocess.run(
        [*QUIRE, "ci", "reconcile", "--repo", str(repo)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "processes-killed" in done.stdout, done.stdout
    assert wait_gone([command]) == []
    assert not workspace.exists()
    (run,) = store_for(repo).runs()
    assert run.state.value == "failed"
