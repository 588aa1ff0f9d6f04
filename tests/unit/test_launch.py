"""The `quire` launcher and the warm server's pieces, without forking a server.

A thread stands in for the server: it accepts on the state directory's warm socket, reads the
request and its descriptors, and answers as the server and its child would.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import pytest

from quire.cli import launch, warm
from quire.paths import state_dir


@pytest.fixture(autouse=True)
def foreground_signals() -> Iterator[None]:
    """SIGINT handled as in a foreground pytest, whatever the suite inherited.

    A suite started with `&` from a script inherits SIGINT ignored; the launcher would then
    restore "ignored" after relaying, and the processes these tests start would ignore the
    Ctrl-C they are sent (a program keeps an ignored disposition across exec).
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    monkeypatch.setenv("QUIRE_STATE_DIR", str(path))
    return path


@pytest.fixture
def ended(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The codes a command run here ended with: `finish` recorded instead of exiting."""
    codes: list[int] = []
    monkeypatch.setattr("quire.cli.finish.finish", codes.append)
    return codes


class FakeServer:
    """Answers one request on `state`'s warm socket with `answer(conn, request, fds)`."""

    def __init__(self, state: Path, answer: Callable[[socket.socket, dict[str, object]], None]):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        launch.reach(str(state), self.listener.bind)
        self.listener.listen(1)
        self.answer = answer
        self.request: dict[str, object] | None = None
        self.fds_seen: list[int] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            request, fds = launch.receive_with_fds(conn, 3)
            if request is None:
                return  # the launcher hung up without asking
            self.request = request
            for fd in fds:
                self.fds_seen.append(os.fstat(fd).st_ino)
                os.close(fd)
            self.answer(conn, request)

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()


@pytest.fixture
def other_pid() -> Iterator[int]:
    """The pid of a process that stands for the warm quire's child."""
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    yield child.pid
    child.kill()
    child.wait()


@pytest.fixture
def serving(state: Path) -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def start(answer: Callable[[socket.socket, dict[str, object]], None]) -> FakeServer:
        servers.append(FakeServer(state, answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


# --- where the launcher looks ------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {"QUIRE_STATE_DIR": "/srv/quire-state"},
        {"XDG_STATE_HOME": "/tmp/xdg-state"},
        {"HOME": "/home/someone"},
    ],
)
def test_launcher_finds_the_state_directory_where_quire_keeps_it(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("QUIRE_STATE_DIR", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert launch.state_dir() == str(state_dir())


def test_no_warm_quire_means_the_command_runs_here(state: Path) -> None:
    assert launch.run_warm(["quire", "--version"]) is None


def test_a_state_directory_not_yet_made_means_the_command_runs_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUIRE_STATE_DIR", str(tmp_path / "absent"))
    assert launch.run_warm(["quire", "--version"]) is None


@pytest.mark.parametrize(
    "argv",
    [
        ["quire", "ci", "warm"],
        ["quire", "--show-completion"],
        ["quire", "--install-completion"],
    ],
)
def test_the_server_itself_and_completion_never_go_to_a_warm_quire(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, ended: list[int]
) -> None:
    ran_here: list[list[str]] = []

    def no_warm(argv: list[str]) -> int:
        raise AssertionError(f"{argv} was sent to a warm quire")

    monkeypatch.setattr(launch, "run_warm", no_warm)
    monkeypatch.setattr("quire.cli.app.main", lambda: ran_here.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", argv)
    launch.main()
    assert ran_here == [argv]
    assert ended == [0]


def test_quire_no_warm_runs_every_command_here(
    monkeypatch: pytest.MonkeyPatch, ended: list[int]
) -> None:
    ran_here: list[bool] = []
    monkeypatch.setenv(launch.NO_WARM_ENV, "1")
    monkeypatch.setattr(launch, "run_warm", lambda argv: pytest.fail("sent to a warm quire"))
    monkeypatch.setattr("quire.cli.app.main", lambda: ran_here.append(True))
    monkeypatch.setattr(sys, "argv", ["quire", "ci", "runs"])
    launch.main()
    assert ran_here == [True]
    assert ended == [0]


# --- the conversation ----------------------------------------------------------------------------


def test_messages_and_descriptors_cross_the_socket_intact() -> None:
    left, right = socket.socketpair()
    with left, right, open(os.devnull) as attached:
        launch.send(
            left, {"argv": ["quire", "ci", "run"], "env": {"A": "\udcff"}}, [attached.fileno()]
        )
        message, fds = launch.receive_with_fds(right, 3)
        assert message == {"argv": ["quire", "ci", "run"], "env": {"A": "\udcff"}}
        assert len(fds) == 1
        assert os.fstat(fds[0]).st_ino == os.fstat(attached.fileno()).st_ino
        os.close(fds[0])


def test_a_request_sent_too_slowly_is_dropped() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.send(b"\0")  # one byte of the header, then nothing
        with pytest.raises(TimeoutError):
            launch.receive_with_fds(right, 3, time.monotonic() + 0.2)


def test_a_peer_that_closes_before_answering_is_no_message() -> None:
    left, right = socket.socketpair()
    with right:
        left.close()
        assert launch.receive(right) is None


def test_the_launcher_sends_its_arguments_directory_environment_umask_and_streams(
    state: Path,
    serving: Callable[..., FakeServer],
    monkeypatch: pytest.MonkeyPatch,
    other_pid: int,
) -> None:
    monkeypatch.setenv("QUIRE_TEST_MARK", "seen")
    monkeypatch.chdir(state)
    previous_umask = os.umask(0o027)
    try:

        def answer(conn: socket.socket, request: dict[str, object]) -> None:
            launch.send(conn, {"pid": other_pid})
            assert launch.receive(conn) == {"go": True}
            launch.send(conn, {"exit": 3})

        server = serving(answer)
        code = launch.run_warm(["quire", "ci", "run", "--jobs", "2"])
    finally:
        os.umask(previous_umask)
    server.close()
    assert code == 3
    request = server.request
    assert request is not None
    assert request["argv"] == ["quire", "ci", "run", "--jobs", "2"]
    assert request["cwd"] == str(state)
    assert isinstance(request["env"], dict) and request["env"]["QUIRE_TEST_MARK"] == "seen"
    assert request["umask"] == 0o027
    assert request["executable"] == sys.executable
    sent = [fd for fd in (0, 1, 2) if launch._is_open(fd)]
    assert request["fds"] == sent
    assert server.fds_seen == [os.fstat(fd).st_ino for fd in sent]


def test_a_warm_quire_of_another_user_is_never_sent_the_command(
    state: Path, serving: Callable[..., FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A state directory others can write to (QUIRE_STATE_DIR may name one) could hold another
    # uid's socket: it must get nothing.
    server = serving(lambda conn, request: pytest.fail("the command was sent"))
    monkeypatch.setattr(launch, "peer_uid", lambda conn: os.getuid() + 1)
    assert launch.run_warm(["quire", "ci", "run"]) is None
    server.close()
    assert server.request is None


@pytest.mark.parametrize("pid", [-1, 0, 1, "self"])
def test_a_nonsense_pid_means_the_command_runs_here(
    pid: int | str, state: Path, serving: Callable[..., FakeServer]
) -> None:
    # os.kill(-1, ...) would signal every process of the user.
    answer = os.getpid() if pid == "self" else pid
    serving(lambda conn, request: launch.send(conn, {"pid": answer}))
    assert launch.run_warm(["quire", "ci", "run"]) is None


def test_a_warm_quire_that_does_not_answer_in_time_leaves_the_command_to_the_launcher(
    state: Path, serving: Callable[..., FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(launch, "ANSWER_TIMEOUT_S", 0.2)
    serving(lambda conn, request: time.sleep(1))
    started = time.monotonic()
    assert launch.run_warm(["quire", "ci", "run"]) is None
    assert time.monotonic() - started < 0.9


def test_a_stop_signal_before_the_child_is_ready_ends_the_launcher_by_that_signal(
    state: Path, serving: Callable[..., FakeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    died_of: list[int] = []
    monkeypatch.setattr(launch, "_die_of", lambda signum: died_of.append(signum) or 99)
    serving(lambda conn, request: time.sleep(1))
    threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()
    assert launch.run_warm(["quire", "ci", "run"]) == 99
    assert died_of == [signal.SIGTERM]


def test_a_refusal_means_the_command_runs_here(
    state: Path, serving: Callable[..., FakeServer]
) -> None:
    serving(lambda conn, request: launch.send(conn, {"refused": "another executable"}))
    assert launch.run_warm(["quire", "--version"]) is None


def test_a_child_that_dies_without_a_word_is_an_internal_error(
    state: Path,
    serving: Callable[..., FakeServer],
    capsys: pytest.CaptureFixture[str],
    other_pid: int,
) -> None:
    serving(lambda conn, request: launch.send(conn, {"pid": other_pid}))
    assert launch.run_warm(["quire", "ci", "run"]) == 70
    assert f"warm process {other_pid} ended without an exit status" in capsys.readouterr().err


def test_ctrl_c_goes_to_the_childs_whole_process_group(
    state: Path, serving: Callable[..., FakeServer]
) -> None:
    # The "child" leads a process group, as the server's child does after setsid, and
    # runs a command in it, as a job does: a terminal's Ctrl-C would reach both.
    # It takes Ctrl-C's default action, as a child started from a terminal does.
    spawn = (
        "import signal, subprocess; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "p = subprocess.Popen(['sleep', '30']); print(p.pid, flush=True); p.wait()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", spawn], start_new_session=True, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    command = int(child.stdout.readline())
    try:

        def answer(conn: socket.socket, request: dict[str, object]) -> None:
            launch.send(conn, {"pid": child.pid})
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
            child.wait(10)
            launch.send(conn, {"exit": 130})

        serving(answer)
        code = launch.run_warm(["quire", "ci", "run"])
        deadline = time.monotonic() + 5
        while Path(f"/proc/{command}").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not Path(f"/proc/{command}").exists(), "the job's command missed the Ctrl-C"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(command, signal.SIGKILL)
        child.kill()
        child.communicate()
    assert code == 130


def test_the_launchers_signal_handlers_are_restored_after_the_command(
    state: Path, serving: Callable[..., FakeServer], other_pid: int
) -> None:
    before = signal.getsignal(signal.SIGTERM)

    def answer(conn: socket.socket, request: dict[str, object]) -> None:
        launch.send(conn, {"pid": other_pid})
        assert launch.receive(conn) == {"go": True}
        launch.send(conn, {"exit": 0})

    serving(answer)
    assert launch.run_warm(["quire", "--version"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


# --- the server's pieces -------------------------------------------------------------------------


def test_peer_credentials_name_the_connecting_user() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert launch.peer_uid(right) == os.getuid()


def test_a_request_from_another_interpreter_is_refused(tmp_path: Path) -> None:
    server = warm.WarmServer(tmp_path)
    server.fingerprint = warm.code_fingerprint()
    request = {**launch.identity(), "executable": "/usr/bin/python9"}
    refusal = server._refusal(request)
    assert refusal == "another executable ('/usr/bin/python9') than this server's"
    assert server._refusal(dict(launch.identity())) is None


def test_a_launcher_with_other_limits_is_another_process(tmp_path: Path) -> None:
    import resource

    before = launch.identity()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft - 1, hard))
    try:
        lowered = launch.identity()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert lowered["process"] != before["process"]
    assert lowered["python"] == before["python"]
    refusal = warm.WarmServer(tmp_path)._refusal(dict(lowered))
    assert refusal == "another process than this server's"


def test_out_of_descriptors_the_server_waits_instead_of_spinning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Exhausted:
        def accept(self) -> tuple[socket.socket, object]:
            raise OSError(errno.EMFILE, "Too many open files")

    slept: list[float] = []
    monkeypatch.setattr(warm.time, "sleep", slept.append)
    server = warm.WarmServer(tmp_path)
    assert server._accept(Exhausted(), None) is False  # type: ignore[arg-type]
    assert slept and slept[0] > 0


def test_installed_packages_changing_makes_the_server_refuse_and_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packages = tmp_path / "site-packages"
    packages.mkdir()
    monkeypatch.setattr(warm.site, "getsitepackages", lambda: [str(packages)])
    server = warm.WarmServer(tmp_path)
    server.fingerprint = warm.code_fingerprint()
    assert server._refusal(dict(launch.identity())) is None
    later = time.time() + 5
    os.utime(packages, (later, later))
    assert server._refusal(dict(launch.identity())) == warm.CODE_CHANGED


def test_quires_own_modules_are_in_the_fingerprint() -> None:
    stamps = warm.code_fingerprint()
    assert warm.__file__ in stamps
    assert launch.__file__ in stamps


@pytest.fixture
def hangups() -> Iterator[list[int]]:
    received: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = signal.signal(signal.SIGHUP, note)
    yield received
    signal.signal(signal.SIGHUP, previous)


def test_a_child_whose_launcher_vanished_hangs_up_on_itself(hangups: list[int]) -> None:
    left, right = socket.socketpair()
    with right:
        left.close()  # the launcher was killed
        warm._hang_up_when_gone(right, threading.Event())
    deadline = time.monotonic() + 5
    while not hangups and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hangups == [signal.SIGHUP]


def test_a_child_that_has_ended_ignores_its_launcher_leaving(hangups: list[int]) -> None:
    left, right = socket.socketpair()
    ended = threading.Event()
    ended.set()
    with right:
        left.close()
        warm._hang_up_when_gone(right, ended)
    time.sleep(0.05)
    assert hangups == []
