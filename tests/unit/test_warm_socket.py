"""The warm quire's socket: a file in the user's private state directory.

The server claims it (`warm.claim_socket`); the launcher looks for it (`launch.reach`).
Nothing here forks a server: sockets are bound and connected in this process.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from quire.cli import launch, warm
from quire.cli.app import app
from quire.errors import EnvironmentProblem, ExitCode


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state"
    monkeypatch.setenv("QUIRE_STATE_DIR", str(path))
    return path


@pytest.fixture
def quiet_warm_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """`quire ci warm` points the server's log at this test's stderr: undo it afterwards."""
    monkeypatch.setattr(warm.log, "handlers", [])
    monkeypatch.setattr(warm.log, "propagate", warm.log.propagate)
    monkeypatch.setattr(warm.log, "level", warm.log.level)


def connects(state: Path) -> bool:
    """Whether a launcher reaches a listener for `state`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        try:
            launch.reach(str(state), conn.connect)
        except OSError:
            return False
        return True


def leave_stale_socket(path: Path) -> None:
    """A socket file whose server is gone, as a killed warm quire leaves it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))
    assert stat.S_ISSOCK(path.lstat().st_mode)


@pytest.fixture
def claimed(state: Path) -> Iterator[warm.WarmSocket]:
    with warm.claim_socket(state) as claim:
        yield claim


# --- where it is ---------------------------------------------------------------------------------


def test_the_socket_is_a_file_in_the_state_directory(state: Path) -> None:
    assert launch.socket_path(str(state)) == str(state / "warm.sock")


def test_the_server_makes_the_state_directory_private_and_listens_there(
    state: Path, claimed: warm.WarmSocket
) -> None:
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_ISSOCK((state / "warm.sock").lstat().st_mode)
    assert connects(state)


def test_a_state_directory_left_open_by_an_older_version_is_closed(state: Path) -> None:
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    with warm.claim_socket(state):
        assert stat.S_IMODE(state.stat().st_mode) == 0o700


def test_a_stopped_server_removes_its_socket(state: Path) -> None:
    with warm.claim_socket(state):
        pass
    assert not (state / "warm.sock").exists()
    assert not connects(state)


def test_no_socket_file_means_the_command_runs_in_the_launcher(state: Path) -> None:
    state.mkdir()
    assert not connects(state)
    assert launch.run_warm(["quire", "--version"]) is None


def test_a_state_directory_too_long_for_a_socket_address_still_serves(tmp_path: Path) -> None:
    # sun_path holds 108 bytes: both ends go through the directory's descriptor instead.
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "state"
    assert len(os.fsencode(launch.socket_path(str(deep)))) > 108
    with warm.claim_socket(deep):
        assert connects(deep)
        assert stat.S_ISSOCK((deep / "warm.sock").lstat().st_mode)


# --- who holds it ---------------------------------------------------------------------------------


def test_a_socket_left_by_a_dead_warm_quire_is_replaced(state: Path) -> None:
    leave_stale_socket(state / "warm.sock")
    assert not connects(state)
    with warm.claim_socket(state):
        assert connects(state)


def test_a_running_warm_quire_means_already_running(state: Path, claimed: warm.WarmSocket) -> None:
    with pytest.raises(warm.WarmAlreadyRunning) as raised, warm.claim_socket(state):
        pass
    assert raised.value.exit_code == ExitCode.environment
    assert str(state / "warm.sock") in str(raised.value)
    assert "already" in str(raised.value)
    assert connects(state), "the running server's socket was taken from it"


def test_a_live_listener_without_the_lock_is_never_replaced(state: Path) -> None:
    state.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(state / "warm.sock"))
        live.listen(1)
        with pytest.raises(warm.WarmAlreadyRunning), warm.claim_socket(state):
            pass
        assert connects(state)


def test_a_file_that_is_not_a_socket_is_left_alone_and_named(state: Path) -> None:
    state.mkdir(mode=0o700)
    (state / "warm.sock").write_text("not mine to delete")
    with pytest.raises(warm.WarmSocketUnavailable) as raised, warm.claim_socket(state):
        pass
    assert isinstance(raised.value, EnvironmentProblem)
    assert str(state / "warm.sock") in str(raised.value)
    assert (state / "warm.sock").read_text() == "not mine to delete"


def test_a_state_directory_that_cannot_be_made_is_an_environment_problem(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(warm.WarmSocketUnavailable) as raised, warm.claim_socket(blocker / "state"):
        pass
    assert raised.value.exit_code == ExitCode.environment
    assert str(blocker / "state") in str(raised.value)


def test_a_second_quire_ci_warm_exits_3_naming_the_socket(
    state: Path, claimed: warm.WarmSocket, quiet_warm_log: None
) -> None:
    result = CliRunner().invoke(app, ["ci", "warm"], prog_name="quire")
    assert result.exit_code == ExitCode.environment, result.output
    assert f"error: a warm quire already serves {state}" in result.stderr
    assert str(state / "warm.sock") in result.stderr


def test_quire_ci_warm_that_cannot_bind_exits_3_naming_the_socket(
    state: Path, quiet_warm_log: None
) -> None:
    state.mkdir(mode=0o700)
    (state / "warm.sock").mkdir()
    result = CliRunner().invoke(app, ["ci", "warm"], prog_name="quire")
    assert result.exit_code == ExitCode.environment, result.output
    assert f"cannot listen on {state / 'warm.sock'}" in result.stderr


def test_a_new_server_may_start_while_a_child_of_the_old_one_still_runs(state: Path) -> None:
    # The server's child inherits its socket and lock; it must let go of both, or the next
    # `quire ci warm` would be told one already runs until that child's command ends.
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    with warm.claim_socket(state) as claim:
        pid = os.fork()
        if pid == 0:  # the child: let go, say so, wait to be told to end
            try:
                claim.release_in_child()
                os.write(ready_w, b"x")
                os.read(done_r, 1)
            finally:
                os._exit(0)
        assert os.read(ready_r, 1) == b"x"
        assert (state / "warm.sock").exists(), "the child removed the server's socket"
        assert connects(state)
    try:
        with warm.claim_socket(state):
            assert connects(state)
    finally:
        os.write(done_w, b"x")
        os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, done_r, done_w):
            os.close(fd)
