"""`quire ci serve` on the command line: registered, lazy, careful about where it listens."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from quire.cli.app import app
from quire.errors import ExitCode
from quire.web.server import CannotListen, bind, is_loopback, url_of

WEB_STACK = ("starlette", "uvicorn", "jinja2", "quire.web")


def test_serve_is_a_ci_command_with_host_and_port() -> None:
    result = CliRunner().invoke(app, ["ci", "serve", "--help"])
    assert result.exit_code == 0
    assert "--host" in result.output and "--port" in result.output
    assert "127.0.0.1" in result.output and "8765" in result.output


def test_the_cli_and_a_run_never_import_the_web_stack() -> None:
    code = (
        "import sys, quire.cli.app, quire.ci.run.orchestrator, quire.cli.history_commands\n"
        f"print([m for m in {WEB_STACK!r} if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_bind_reports_the_real_port_of_port_zero() -> None:
    sock = bind("127.0.0.1", 0)
    try:
        port = sock.getsockname()[1]
        assert port > 0 and url_of(sock) == f"http://127.0.0.1:{port}/"
    finally:
        sock.close()


def test_a_port_in_use_is_an_environment_error() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(CannotListen, match=r"cannot listen on 127\.0\.0\.1") as caught:
            bind("127.0.0.1", taken.getsockname()[1])
        assert caught.value.exit_code == ExitCode.environment
    finally:
        taken.close()
