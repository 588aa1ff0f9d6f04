"""`quire ci warm` end to end: a real server, real launchers, real runs.

Every server is started as a user starts it (`python -m quire ci warm`) with this test's own
state directory, and stopped by pid (SIGTERM) in a `finally`. Launchers are started as a user
runs quire (`python -m quire ...`), and the server's log shows they were served warm.
"""

from __future__ import annotations

import marshal
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import quire
from quire.ci.store.records import RunResult, read_record
from quire.cli import launch
from quire.paths import state_dir
from tests.helpers import GIT_ENV, make_repo, terminate
from tests.integration.support import BASE_IMAGE, SESSION_PREFIX
from tests.integration.test_worker import all_done, pushable, rows, worker
from tests.integration.test_worker import push as git_push
from tests.integration.test_worker import wait_for as wait_for_worker

pytestmark = pytest.mark.integration

QUIRE = [sys.executable, "-m", "quire"]


@dataclass
class Warm:
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


@contextmanager
def warm_server(tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[Warm]:
    """A running `quire ci warm` (once it says it serves); SIGTERM, then KILL, at the end."""
    log_path = tmp_path / "warm.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*QUIRE, "ci", "warm"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env={**os.environ, **GIT_ENV, **(env or {})},
        )
    warm = Warm(proc, log_path)
    try:
        wait_for(
            lambda: "serving commands" in warm.log() or proc.poll() is not None,
            "the warm server to start",
        )
        assert proc.poll() is None, warm.log()
        yield warm
    finally:
        terminate(proc, timeout=20)


def quire_cmd(
    *args: str, cwd: Path, env: dict[str, str] | None = None, **kwargs: object
) -> subprocess.Popen[str]:
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [*QUIRE, *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV, **(env or {})},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,
    )


def finished(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def repo_with(tmp_path: Path, pipeline: str, name: str = "warm", **files: str) -> Path:
    repo = tmp_path / f"{SESSION_PREFIX}-{name}"
    make_repo(repo, {".quire/ci.py": pipeline, **files})
    return repo


def served(warm: Warm, command: str) -> int:
    return warm.log().count(f"runs {command}")


def processes_running(marker: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        if marker in cmdline and stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z":
            found.append(f"{entry}: {cmdline}")
    return found


def only_run() -> tuple[str, RunResult | None]:
    """The state (complete, failed, ...) and result of the one run in this test's store."""
    runs = list(state_dir().glob("runs/*/*/*/meta.yml"))
    assert len(runs) == 1, runs
    result = runs[0].parent / "result.yml"
    return runs[0].parent.parent.name, read_record(result, RunResult) if result.exists() else None


ECHO_PIPELINE = """\
from quire.ci import job


@job(inputs=["quire/push"])
def hello(rt):
    rt.sh("echo mark=$QUIRE_TEST_MARK; umask", check=True)
"""

SLEEP_PIPELINE = """\
from quire.ci import job


@job(inputs=["quire/push"])
def slow(rt):
    rt.sh(["sleep", "{seconds}"])
"""


# --- the same command, warm ----------------------------------------------------------------------


def test_a_run_through_a_warm_quire_takes_the_launchers_directory_environment_and_umask(
    tmp_path: Path,
) -> None:
    repo = repo_with(tmp_path, ECHO_PIPELINE)
    with warm_server(tmp_path) as warm:
        proc = quire_cmd(
            "ci", "run", cwd=repo, env={"QUIRE_TEST_MARK": "from-the-launcher"}, umask=0o027
        )
        code, out, err = finished(proc)
    assert code == 0, err
    assert served(warm, "ci run") == 1, warm.log()
    assert "mark=from-the-launcher" in out
    assert "0027" in out
    assert "<== hello success" in out
    assert only_run()[0] == "complete"


def test_exit_codes_and_messages_come_back_from_a_warm_quire(tmp_path: Path) -> None:
    failing = ECHO_PIPELINE.replace("check=True", "check=True)\n    rt.sh('exit 3', check=True")
    repo = repo_with(tmp_path, failing)
    with warm_server(tmp_path) as warm:
        failed = finished(quire_cmd("ci", "run", cwd=repo))
        unknown = finished(quire_cmd("ci", "run", "helo", cwd=repo))
    assert failed[0] == 1, failed
    assert unknown[0] == 2, unknown
    assert "did you mean 'hello'" in unknown[2]
    assert served(warm, "ci run") == 2, warm.log()


def test_ctrl_c_interrupts_a_warm_run_and_ends_its_commands(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, SLEEP_PIPELINE.format(seconds="41.5"))
    with warm_server(tmp_path) as warm:
        proc = quire_cmd("ci", "run", cwd=repo)
        wait_for(lambda: processes_running("sleep 41.5"), "the job's command to start")
        proc.send_signal(signal.SIGINT)  # what a terminal sends the launcher on Ctrl-C
        code, out, err = finished(proc)
        assert served(warm, "ci run") == 1, warm.log()
    assert code == 130, (out, err)
    assert "interrupted by SIGINT" in out
    assert not processes_running("sleep 41.5")
    state, result = only_run()
    assert state == "failed"
    assert result is not None and "SIGINT" in (result.error or ""), result


def test_a_killed_launcher_ends_its_warm_run_as_a_hangup(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, SLEEP_PIPELINE.format(seconds="42.5"))
    with warm_server(tmp_path) as warm:
        proc = quire_cmd("ci", "run", cwd=repo)
        wait_for(lambda: processes_running("sleep 42.5"), "the job's command to start")
        proc.kill()
        finished(proc)
        wait_for(lambda: "ended with exit code 130" in warm.log(), "the child to end")
    assert not processes_running("sleep 42.5")
    state, result = only_run()
    assert state == "failed"
    assert result is not None and "SIGHUP" in (result.error or ""), result


def test_sigterm_stops_the_server_and_the_commands_it_started_finish(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, SLEEP_PIPELINE.format(seconds="1.5"))
    with warm_server(tmp_path) as warm:
        proc = quire_cmd("ci", "run", cwd=repo)
        wait_for(lambda: processes_running("sleep 1.5"), "the job's command to start")
        warm.proc.send_signal(signal.SIGTERM)
        assert warm.proc.wait(timeout=10) == 0
        assert "stopped" in warm.log()
        code, out, err = finished(proc)
    assert code == 0, (out, err)
    assert only_run()[0] == "complete"
    # And with the server gone, commands run in their own process again.
    assert finished(quire_cmd("--version", cwd=repo))[:2] == (0, f"quire {quire.__version__}\n")


def test_a_terminal_stays_a_terminal_through_a_warm_quire(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, ECHO_PIPELINE)
    with warm_server(tmp_path) as warm:
        main, secondary = pty.openpty()
        proc = subprocess.Popen(
            [*QUIRE, "ci", "run"],
            cwd=repo,
            env={**os.environ, **GIT_ENV, "TERM": "xterm-256color"},
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
        )
        os.close(secondary)
        shown = b""
        while True:
            ready, _, _ = select.select([main], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        os.close(main)
        assert proc.wait(timeout=30) == 0, shown
        assert served(warm, "ci run") == 1, warm.log()
    assert b"mark=" in shown
    assert b"\x1b[" in shown, "quire did not see a terminal: no colour, no live area"


def process_state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3].decode()


def test_ctrl_z_stops_the_warm_run_with_its_launcher_and_fg_resumes_both(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, SLEEP_PIPELINE.format(seconds="1.25"))
    with warm_server(tmp_path) as warm:
        # In a process group of its own, as a shell starts a job: the kernel discards a
        # SIGTSTP's stop in an orphaned group, which the suite's own group may be.
        proc = quire_cmd("ci", "run", cwd=repo, process_group=0)
        wait_for(lambda: processes_running("sleep 1.25"), "the job's command to start")
        child = int(warm.log().split("child ")[1].split()[0])
        proc.send_signal(signal.SIGTSTP)  # what a terminal sends on Ctrl-Z
        wait_for(lambda: process_state(proc.pid) == "T", "the launcher to stop")
        wait_for(lambda: process_state(child) == "T", "the warm child to stop")
        time.sleep(1.5)  # the job's command has ended by now, but quire is stopped
        assert proc.poll() is None
        assert process_state(child) == "T"
        proc.send_signal(signal.SIGCONT)  # `fg`
        code, out, err = finished(proc)
    assert code == 0, (out, err)
    assert only_run()[0] == "complete"


# --- when a warm quire must not serve ------------------------------------------------------------


def test_the_server_reloads_when_quires_code_changes(tmp_path: Path) -> None:
    copy = tmp_path / "code"
    shutil.copytree(
        Path(quire.__file__).parent, copy / "quire", ignore=shutil.ignore_patterns("__pycache__")
    )
    env = {"PYTHONPATH": str(copy)}
    with warm_server(tmp_path, env) as warm:
        assert finished(quire_cmd("--version", cwd=tmp_path, env=env))[0] == 0
        assert served(warm, "--version") == 1, warm.log()
        later = time.time() + 10
        os.utime(copy / "quire" / "errors.py", (later, later))
        stale = finished(quire_cmd("--version", cwd=tmp_path, env=env))
        assert stale[:2] == (0, f"quire {quire.__version__}\n"), stale  # ran in the launcher
        assert "refused --version: quire's code" in warm.log()
        wait_for(lambda: warm.log().count("serving commands") == 2, "the server to reload")
        assert warm.proc.poll() is None
        assert finished(quire_cmd("--version", cwd=tmp_path, env=env))[0] == 0
        assert served(warm, "--version") == 2, warm.log()


def test_a_launcher_of_another_quire_runs_its_command_itself(tmp_path: Path) -> None:
    copy = tmp_path / "code"
    shutil.copytree(
        Path(quire.__file__).parent, copy / "quire", ignore=shutil.ignore_patterns("__pycache__")
    )
    with warm_server(tmp_path) as warm:
        done = finished(quire_cmd("--version", cwd=tmp_path, env={"PYTHONPATH": str(copy)}))
        assert done[0] == 0, done
        assert "refused --version: another package" in warm.log()
        assert served(warm, "--version") == 0


def test_a_launcher_with_other_limits_runs_its_command_itself(tmp_path: Path) -> None:
    import resource

    def lower_open_files() -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft // 2, hard))

    repo = repo_with(tmp_path, ECHO_PIPELINE)
    with warm_server(tmp_path) as warm:
        proc = quire_cmd("ci", "run", cwd=repo, preexec_fn=lower_open_files)
        code, out, err = finished(proc)
        assert "refused ci run: another process than this server's" in warm.log()
    assert code == 0, (out, err)
    assert "mark=" in out
    assert served(warm, "ci run") == 0


def test_a_launcher_in_a_deleted_directory_runs_its_command_itself(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    with warm_server(tmp_path) as warm:
        proc = subprocess.Popen(
            [
                "sh",
                "-c",
                f'cd "{gone}" && rmdir "{gone}" && exec "$0" -m quire --version',
                *QUIRE[:1],
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "QUIRE_DUMMY": "1"},
        )
        out, err = proc.communicate(timeout=60)
        assert served(warm, "--version") == 0
    assert (proc.returncode, out) == (0, f"quire {quire.__version__}\n"), err
    assert "Traceback" not in err


def as_nobody(program: str) -> subprocess.CompletedProcess[str]:
    """Run a Python `program` as uid 65534 (needs root and setpriv)."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    assert python, "a python for the other user"
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", program],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )


@pytest.fixture
def reachable_state() -> Iterator[Path]:
    """A state directory whose parents another user may pass through (pytest's tmp is
    0700, which would deny that user before quire's own protection is met)."""
    parent = Path(tempfile.mkdtemp(prefix=f"{SESSION_PREFIX}-"))
    parent.chmod(0o755)
    yield parent / "state"
    shutil.rmtree(parent, ignore_errors=True)


def other_user_client(state: Path) -> str:
    request = marshal.dumps({"argv": ["quire", "--version"], "fds": []})
    return f"""
import socket, struct
conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    conn.connect({launch.socket_path(str(state))!r})
except PermissionError:
    raise SystemExit("answer: denied")
body = {request!r}
try:
    conn.sendall(struct.pack("!I", len(body)) + body)
    answer = conn.recv(1024)
except (ConnectionResetError, BrokenPipeError):
    answer = b""  # closed with our request unread
print("answer:", answer)
"""


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_another_user_cannot_reach_the_socket(tmp_path: Path, reachable_state: Path) -> None:
    with warm_server(tmp_path, {"QUIRE_STATE_DIR": str(reachable_state)}) as warm:
        done = as_nobody(other_user_client(reachable_state))
        assert done.stderr.strip() == "answer: denied", done
        assert "runs" not in warm.log()


@pytest.mark.skipif(os.getuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_another_user_is_never_served(tmp_path: Path, reachable_state: Path) -> None:
    with warm_server(tmp_path, {"QUIRE_STATE_DIR": str(reachable_state)}) as warm:
        # As if the state directory and socket were open to all: the server's own check holds.
        reachable_state.chmod(0o755)
        Path(launch.socket_path(str(reachable_state))).chmod(0o777)
        done = as_nobody(other_user_client(reachable_state))
        assert done.stdout.strip() == "answer: b''", done
        assert "refused a connection from another user" in warm.log()
        assert "runs" not in warm.log()


def test_a_second_warm_quire_for_the_same_state_directory_exits_3(tmp_path: Path) -> None:
    with warm_server(tmp_path) as warm:
        second = finished(quire_cmd("ci", "warm", cwd=tmp_path))
        assert second[0] == 3, second
        assert f"a warm quire already serves {state_dir()}" in second[2]
        assert warm.proc.poll() is None
        assert finished(quire_cmd("--version", cwd=tmp_path))[0] == 0
        assert served(warm, "--version") == 1, warm.log()


def test_a_socket_left_by_a_killed_warm_quire_is_replaced(tmp_path: Path) -> None:
    with warm_server(tmp_path) as warm:
        warm.proc.kill()
        warm.proc.wait(timeout=10)
    assert Path(launch.socket_path(str(state_dir()))).exists()
    assert finished(quire_cmd("--version", cwd=tmp_path))[0] == 0  # runs in its launcher
    with warm_server(tmp_path) as warm:
        assert finished(quire_cmd("--version", cwd=tmp_path))[0] == 0
        assert served(warm, "--version") == 1, warm.log()


def test_a_docker_run_through_a_warm_quire_leaves_no_container(tmp_path: Path) -> None:
    repo = repo_with(
        tmp_path, ECHO_PIPELINE, name="warm-docker", **{".quire/Dockerfile": f"FROM {BASE_IMAGE}\n"}
    )
    with warm_server(tmp_path) as warm:
        code, out, err = finished(quire_cmd("ci", "run", "--executor", "docker", cwd=repo))
    assert code == 0, (out, err)
    assert served(warm, "ci run --executor docker") == 1, warm.log()
    assert only_run()[0] == "complete"


def test_a_workers_runs_go_through_the_warm_quire_of_its_state_directory(
    tmp_path: Path,
) -> None:
    _bare, work = pushable(tmp_path, "warm-worker", {".quire/ci.py": ECHO_PIPELINE})
    with warm_server(tmp_path) as warm, worker(tmp_path) as proc:
        git_push(work, "HEAD:main")
        wait_for_worker(all_done(1), "the run", proc=proc)
        assert served(warm, "ci run --rev") == 1, warm.log()
    (row,) = rows()
    assert row.outcome == "complete"
