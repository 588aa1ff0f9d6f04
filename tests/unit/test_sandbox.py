"""The job host's sandbox, with the real bwrap and real processes.

One sandboxed python looks around and reports what it sees as JSON; each
test asserts one fact of that report. Without a working bwrap the tests are
skipped, unless QUIRE_REQUIRE_SANDBOX=1 (CI) makes that a failure.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from plumbum import local

from quire.errors import ExitCode, SandboxUnavailable
from quire.tools import process, sandbox
from tests.helpers import write_shim

# Runs inside the sandbox; argv[1] holds the host paths to look for and the port to try.
LOOK_AROUND = r"""
import importlib.util, json, os, socket, sys
given = json.loads(sys.argv[1])

def attempt(action):
    try:
        action()
        return "ok"
    except OSError as exc:
        return type(exc).__name__ + ": " + (exc.strerror or str(exc))

def connect():
    socket.create_connection(("127.0.0.1", given["port"]), timeout=5).close()

def write_into(directory):
    return lambda: open(os.path.join(directory, "planted"), "w").close()

tmp_at_start = os.listdir("/tmp")
import quire
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines())
print(json.dumps({
    "tmp_at_start": tmp_at_start,
    "tmp_write": attempt(write_into("/tmp")),
    "cwd": os.getcwd(),
    "env": dict(os.environ),
    "uid": [os.getuid(), os.geteuid()],
    "gid": [os.getgid(), os.getegid()],
    "pid": os.getpid(),
    "pids": sorted(int(name) for name in os.listdir("/proc") if name.isdigit()),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "cap_eff": status["CapEff"].strip(),
    "cap_bnd": status["CapBnd"].strip(),
    "shadow": attempt(lambda: open("/etc/shadow").read()),
    "etc": os.path.exists("/etc"),
    "state_dir": os.path.exists(given["state_dir"]),
    "home": os.path.exists(given["home"]),
    "run": os.path.exists("/run"),
    "var_run": os.path.exists("/var/run"),
    "docker_sock": [os.path.exists(p) for p in ("/run/docker.sock", "/var/run/docker.sock")],
    "connect": attempt(connect),
    "interfaces": [line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]],
    "quire": quire.__file__,
    "quire_write": attempt(write_into(os.path.dirname(quire.__file__))),
    "root_write": attempt(lambda: os.mkdir("/planted")),
    "root": sorted(os.listdir("/")),
    "installed": [m for m in ("pydantic", "plumbum", "pip") if importlib.util.find_spec(m)],
}))
"""

REQUIRED = os.environ.get("QUIRE_REQUIRE_SANDBOX") == "1"
ENV = {"QUIRE_SANDBOX_TEST": "given", "LC_ALL": "C.UTF-8"}


@pytest.fixture(scope="module")
def working_sandbox() -> None:
    """Skip (or, with QUIRE_REQUIRE_SANDBOX=1, fail) where bwrap cannot sandbox."""
    try:
        sandbox.check_available()
    except SandboxUnavailable as exc:
        if REQUIRED:
            pytest.fail(f"QUIRE_REQUIRE_SANDBOX=1 but {exc}", pytrace=False)
        pytest.skip(f"no working bubblewrap here: {exc}")


@pytest.fixture(scope="module")
def listener() -> Iterator[int]:
    """A socket listening on the host's loopback; its port."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture(scope="module")
def seen(
    working_sandbox: None, listener: int, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """What a sandboxed python reports, started by a quire whose state dir and HOME are set."""
    state_dir = tmp_path_factory.mktemp("state")
    (state_dir / "record.yml").write_text("secret: record\n")
    home = tmp_path_factory.mktemp("home")
    (home / ".netrc").write_text("machine example password hunter2\n")
    given = {"state_dir": str(state_dir), "home": str(home), "port": listener}
    python = [str(sandbox.interpreter()), "-c", LOOK_AROUND, json.dumps(given)]
    argv = sandbox.wrap(python, env=ENV)
    done = process.run(argv, env={"QUIRE_STATE_DIR": str(state_dir), "HOME": str(home)})
    assert done.ok, done.stderr_tail()
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_etc_shadow_does_not_exist_inside(seen: dict[str, Any]) -> None:
    assert seen["shadow"].startswith("FileNotFoundError")
    assert seen["etc"] is False


def test_state_dir_and_home_are_neither_visible_nor_named(seen: dict[str, Any]) -> None:
    assert seen["state_dir"] is False
    assert seen["home"] is False
    assert "QUIRE_STATE_DIR" not in seen["env"]
    assert "HOME" not in seen["env"]


def test_only_the_given_environment_is_set(seen: dict[str, Any]) -> None:
    # PYTHONPATH finds quire's bind; bwrap sets PWD when it changes directory.
    pythonpath = str(sandbox.python_install().pythonpath)
    assert seen["env"] == {**ENV, "PYTHONPATH": pythonpath, "PWD": "/tmp"}


def test_proc_shows_only_the_sandbox_processes(seen: dict[str, Any]) -> None:
    # pid 1 is bwrap's own init in the new PID namespace; the python is its child.
    assert seen["pids"] == [1, seen["pid"]]


def test_runs_as_nobody_without_capabilities_or_new_privileges(seen: dict[str, Any]) -> None:
    assert seen["uid"] == [sandbox.SANDBOX_UID] * 2
    assert seen["gid"] == [sandbox.SANDBOX_GID] * 2
    assert seen["no_new_privs"] == "1"
    assert int(seen["cap_eff"], 16) == 0
    assert int(seen["cap_bnd"], 16) == 0


def test_a_host_loopback_listener_is_unreachable(seen: dict[str, Any]) -> None:
    # The sandbox's loopback is its own (bwrap brings it up): nobody listens there.
    assert seen["connect"].startswith("ConnectionRefusedError")
    assert seen["interfaces"] == ["lo"]


def test_no_docker_socket_nor_run_directories(seen: dict[str, Any]) -> None:
    assert seen["docker_sock"] == [False, False]
    assert seen["run"] is False
    assert seen["var_run"] is False


def test_root_holds_only_what_quire_hands_it(seen: dict[str, Any]) -> None:
    install = sandbox.python_install()
    handed = {"dev", "proc", "tmp", "usr", "lib", "lib64"}
    handed |= {p.parts[1] for p in (install.interpreter, install.package)}
    assert set(seen["root"]) <= handed


def test_quire_imports_from_a_read_only_bind(seen: dict[str, Any]) -> None:
    package = sandbox.python_install().package
    assert seen["quire"] == str(package / "__init__.py")
    assert seen["quire_write"].startswith("OSError: Read-only file system")
    assert not (package / "planted").exists()


def test_no_installed_package_is_importable(seen: dict[str, Any]) -> None:
    assert seen["installed"] == []


def test_tmp_is_empty_writable_and_the_working_directory(seen: dict[str, Any]) -> None:
    # Empty but for the way to quire itself when it is installed under /tmp (a clone there).
    install = sandbox.python_install()
    under_tmp = [path for path in (install.package, *install.binds) if path.is_relative_to("/tmp")]
    assert seen["tmp_at_start"] == sorted({path.parts[2] for path in under_tmp})
    assert seen["tmp_write"] == "ok"
    assert seen["cwd"] == "/tmp"


def test_the_root_itself_is_read_only(seen: dict[str, Any]) -> None:
    assert seen["root_write"].startswith("OSError: Read-only file system")


def test_an_inherited_descriptor_stays_open_inside(working_sandbox: None) -> None:
    read_end, write_end = os.pipe()
    code = f"import os; os.write({write_end}, b'through the sandbox')"
    argv = sandbox.wrap([str(sandbox.interpreter()), "-c", code], env={})
    try:
        child = process.start_with_fds(argv, pass_fds=[write_end])
    finally:
        os.close(write_end)  # ours goes, so the read below ends when the sandbox's does
    with os.fdopen(read_end, "rb") as pipe:
        received = pipe.read()
    assert child.wait(30) == 0
    assert received == b"through the sandbox"


def test_a_read_only_bind_under_tmp_is_seen_inside(working_sandbox: None, tmp_path: Path) -> None:
    """quire installed from a clone under /tmp: its bind survives the private /tmp."""
    shown = tmp_path / "shown"
    shown.mkdir()
    (shown / "file").write_text("seen\n")
    code = f"print(open({str(shown / 'file')!r}).read(), end='')"
    argv = sandbox.wrap([str(sandbox.interpreter()), "-c", code], env={}, read_only=[shown])
    done = process.run(argv)
    assert (done.exit, done.stdout) == (0, b"seen\n"), done.stderr


def test_check_available_passes_where_bwrap_works(working_sandbox: None) -> None:
    sandbox.check_available()
    sandbox.check_available()  # the cached answer


def test_missing_bwrap_names_the_package_and_the_unsandboxed_setting(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    with local.env(PATH=str(empty)), pytest.raises(SandboxUnavailable) as caught:
        sandbox.check_available()
    assert caught.value.exit_code == ExitCode.environment
    assert "apt-get install bubblewrap" in caught.value.message
    assert "[docker] sandbox = false" in caught.value.message


def test_a_bwrap_that_cannot_sandbox_names_the_sysctls_and_the_setting(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    write_shim(
        bin_dir, "bwrap", "echo 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n"
    )
    with local.env(PATH=str(bin_dir)), pytest.raises(SandboxUnavailable) as caught:
        sandbox.check_available()
    message = caught.value.message
    assert "setting up uid map: Permission denied" in message
    assert "kernel.unprivileged_userns_clone" in message
    assert "user.max_user_namespaces" in message
    assert "[docker] sandbox = false" in message
