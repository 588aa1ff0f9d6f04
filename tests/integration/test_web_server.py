"""`quire ci serve` as a process: the printed URL, a clean stop on SIGTERM, the public warning,
connections that never send a whole request closed.

No browser and no docker needed; `serve()` is also how the browser tests
start their server (a free port, the test's private QUIRE_STATE_DIR,
stopped by pid).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from quire.paths import state_dir

pytestmark = pytest.mark.integration

STOP_TIMEOUT_S = 15
# Six times the server's request deadline, and inside pytest's 60 s per test.
CLOSED_WITHIN_S = 30


@pytest.fixture(autouse=True)
def no_container_left_behind() -> None:
    """Overrides the suite's docker leak check: nothing here starts a container."""


@dataclass
class Served:
    url: str
    state: Path
    proc: subprocess.Popen[bytes]
    log: Path


@contextmanager
def serve(log: Path, *args: str) -> Iterator[Served]:
    """`quire ci serve --port 0` on the test's state dir; stopped with SIGTERM by pid."""
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "quire", "ci", "serve", "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=sink,
            env=dict(os.environ),
        )
    try:
        url = _printed_url(proc, log)
        yield Served(url, state_dir(), proc, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _printed_url(proc: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"at (http://\S+/) ", log.read_text(errors="replace"))
        if found:
            return found.group(1)
        if proc.poll() is not None:
            raise AssertionError(f"quire ci serve exited {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.05)
    raise AssertionError(f"quire ci serve printed no URL:\n{log.read_text()}")


def test_serve_prints_its_url_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    with serve(tmp_path / "serve.log") as served:
        assert served.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(served.url, timeout=10) as response:
            assert response.status == 200
            assert "no runs yet" in response.read().decode()
        # A live stream never ends by itself: SIGTERM must still stop the server.
        stream = urllib.request.urlopen(served.url + "live/runs", timeout=10)
        assert stream.readline().startswith(b"retry:")
        served.proc.send_signal(signal.SIGTERM)
        code = served.proc.wait(STOP_TIMEOUT_S)
        stream.close()
    assert code == 0, served.log.read_text()
    assert "Shutting down" in served.log.read_text()


def test_serve_beyond_loopback_without_a_user_refuses_to_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "quire", "ci", "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert done.returncode == 2
    assert "quire ci user add NAME --role operator" in done.stderr


def test_serve_warns_when_listening_beyond_loopback(tmp_path: Path) -> None:
    added = subprocess.run(
        [sys.executable, "-m", "quire", "ci", "user", "add", "olive", "--password-stdin"],
        input="pw",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    with serve(tmp_path / "serve.log", "--host", "0.0.0.0") as served:
        text = served.log.read_text()
        assert "warning: listening on 0.0.0.0" in text
        assert '[web] anonymous = "none"' in text
        port = served.url.rsplit(":", 1)[1]
        # Not bound to loopback: any Host header is accepted.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=10) as response:
            assert response.status == 200


def test_serve_on_loopback_prints_no_warning(tmp_path: Path) -> None:
    with serve(tmp_path / "serve.log") as served:
        assert "warning" not in served.log.read_text()


def test_a_port_in_use_is_exit_3_with_a_message(tmp_path: Path) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "quire", "ci", "serve", "--port", str(taken.getsockname()[1])],
            capture_output=True,
            text=True,
            timeout=30,
            env=dict(os.environ),
        )
    finally:
        taken.close()
    assert done.returncode == 3
    assert "error: cannot listen on 127.0.0.1" in done.stderr


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=CLOSED_WITHIN_S)


def _closed_by_server(sock: socket.socket, *, trickle: bytes = b"") -> bool:
    """Whether the server closes `sock` (recv gives b'' or a reset) before
    CLOSED_WITHIN_S; reads and drops whatever it answers meanwhile. With
    `trickle`, sends one more byte of it every half second while waiting."""
    deadline = time.monotonic() + CLOSED_WITHIN_S
    sock.settimeout(0.5 if trickle else CLOSED_WITHIN_S)
    while time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            if trickle:
                try:
                    sock.sendall(trickle[:1])
                except (BrokenPipeError, ConnectionResetError):
                    return True
                trickle = trickle[1:] or b"X"
        except ConnectionResetError:
            return True
    return False


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}: {data!r}"
        data += chunk
    return data


@pytest.mark.parametrize("sent", [b"", b"GET / HT", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"])
def test_a_connection_that_never_sends_a_whole_request_is_closed(
    tmp_path: Path, sent: bytes
) -> None:
    with serve(tmp_path / "serve.log") as served, _connect(served.url) as sock:
        sock.sendall(sent)
        assert _closed_by_server(sock), served.log.read_text()


def test_a_request_trickled_a_byte_at_a_time_is_closed_all_the_same(tmp_path: Path) -> None:
    with serve(tmp_path / "serve.log") as served, _connect(served.url) as sock:
        assert _closed_by_server(sock, trickle=b"GET / HTTP/1.1\r\nX-Slow: "), (
            served.log.read_text()
        )


def test_half_a_second_request_on_a_kept_alive_connection_is_closed(tmp_path: Path) -> None:
    with serve(tmp_path / "serve.log") as served, _connect(served.url) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert b"200 OK" in _read_until(sock, b"</html>")
        sock.sendall(b"GET / HTTP/1.1\r\nHo")
        assert _closed_by_server(sock), served.log.read_text()


def test_a_live_stream_outlives_the_request_deadline(tmp_path: Path) -> None:
    with (
        serve(tmp_path / "serve.log") as served,
        _connect(served.url) as stream,
        _connect(served.url) as stalled,
    ):
        stream.sendall(b"GET /live/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert b"retry:" in _read_until(stream, b"retry:")
        stalled.sendall(b"GET / HT")
        # The stalled connection, opened after the stream, is closed by its deadline:
        # had a deadline run for the stream, it would have passed by now too.
        assert _closed_by_server(stalled), served.log.read_text()
        stream.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # open, with nothing new to say
            assert stream.recv(65536) != b"", "the server closed a live stream"
