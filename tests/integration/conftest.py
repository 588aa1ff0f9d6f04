"""The real-engine suite: engines with a base image built from a static busybox, and leak checks.

No registry is reachable, so the base image is built `FROM scratch` with
/bin/busybox copied in. Without a working engine (or busybox) the suite is
skipped, unless QUIRE_REQUIRE_DOCKER=1 makes that a failure; podman's tests
are skipped when podman is not installed, unless QUIRE_REQUIRE_PODMAN=1.

Engines (tests/integration/support.py): a test runs on docker; a test
marked `@pytest.mark.engines("docker", "podman", ...)` runs once per engine
named, with QUIRE_DOCKER (and CONTAINERS_CONF, DOCKER_HOST) set for the
quire processes it starts and `support.docker_cli` talking to that engine.
`podman-remote` is podman's API service in a mount namespace of its own,
where this session's temp directory is hidden under an empty tmpfs: an
engine that cannot see the workspace, reached over tcp://.

The engines are shared with whoever else uses this machine: everything here
looks only at what this session created (repositories named with a
per-session prefix, runs in this test's own state directory). So the suite
may run in several processes (nox runs two, `--dist loadfile`): each is a
session of its own, with its own prefix, temp directory, podman service and
PostgreSQL servers.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from quire.paths import state_dir
from quire.tools.docker import short_image_name
from tests.integration import support
from tests.integration.support import (
    BASE_IMAGE,
    BUSYBOX,
    CONTAINERS_CONF,
    DOCKER,
    SESSION_PREFIX,
    Engine,
    docker_cli,
    engine_cli,
)

BASE_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
"""
ENGINE_NAMES = ("docker", "podman", "podman-remote")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "engines(*names): run the test once per container engine named "
        f"({', '.join(ENGINE_NAMES)}); unmarked tests run on docker",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("engines")
    if marker is None or "engine" not in metafunc.fixturenames:
        return
    names = list(marker.args)
    unknown = set(names) - set(ENGINE_NAMES)
    assert not unknown, f"unknown engines {unknown} on {metafunc.definition.name}"
    metafunc.parametrize("engine", names, indirect=True, ids=names)


class _Unavailable(Exception):
    """An engine this session cannot use; `require` says whether that fails the test."""

    def __init__(self, why: str, *, require: str) -> None:
        super().__init__(why)
        self.why = why
        self.require = require


@dataclass
class Engines:
    """Engines made ready on first use (base image built), cleaned up at session end."""

    tmp: pytest.TempPathFactory
    ready: dict[str, Engine] = field(default_factory=dict)
    unusable: dict[str, _Unavailable] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    service: subprocess.Popen[bytes] | None = None
    scratch: Path | None = None  # outside the session's temp dir (podman-remote hides that)

    def get(self, name: str) -> Engine:
        if name in self.unusable:
            _skip_or_fail(self.unusable[name])
        if name not in self.ready:
            try:
                self.ready[name] = self._prepare(name)
            except _Unavailable as exc:
                self.unusable[name] = exc
                _skip_or_fail(exc)
        return self.ready[name]

    def _prepare(self, name: str) -> Engine:
        if name == "docker":
            return self._with_base_image(DOCKER, "QUIRE_REQUIRE_DOCKER")
        if name == "podman":
            if shutil.which("podman") is None:
                raise _Unavailable("podman is not installed", require="QUIRE_REQUIRE_PODMAN")
            podman = Engine("podman", "podman", {"CONTAINERS_CONF": self._containers_conf()})
            return self._with_base_image(podman, "QUIRE_REQUIRE_PODMAN")
        return self._remote_podman()

    def _containers_conf(self) -> str:
        given = os.environ.get("CONTAINERS_CONF")
        if given:
            return given
        if self.scratch is None:
            self.scratch = Path(tempfile.mkdtemp(prefix="quire-itest-engines-"))
        path = self.scratch / "containers.conf"
        path.write_text(CONTAINERS_CONF)
        return str(path)

    def _with_base_image(self, chosen: Engine, require: str) -> Engine:
        if shutil.which(chosen.binary) is None:
            raise _Unavailable(f"the {chosen.binary} CLI is not installed", require=require)
        try:
            version = engine_cli(chosen, "version", "--format", "{{.Server.Version}}", check=False)
        except subprocess.TimeoutExpired:
            raise _Unavailable(f"`{chosen.binary} version` timed out", require=require) from None
        if version.returncode != 0:
            why = f"`{chosen.binary} version` failed: {version.stderr.strip()[-500:]}"
            raise _Unavailable(why, require=require)
        if not BUSYBOX.is_file():
            why = f"{BUSYBOX} is missing (install busybox-static) to build the base image"
            raise _Unavailable(why, require=require)
        context = self.tmp.mktemp(f"base-image-{chosen.name}")
        shutil.copy2(BUSYBOX, context / "busybox")
        (context / "Dockerfile").write_text(BASE_DOCKERFILE)
        built = engine_cli(
            chosen, "build", "--quiet", "--tag", BASE_IMAGE, str(context), check=False
        )
        if built.returncode != 0:
            pytest.fail(f"building {BASE_IMAGE} on {chosen.name} failed:\n{built.stderr}")
        self.versions[chosen.name] = version.stdout.strip()
        return chosen

    def _remote_podman(self) -> Engine:
        """podman's API service, unable to see this session's files, over tcp://."""
        podman = self.get("podman")  # its storage (and so the base image) is shared
        require = "QUIRE_REQUIRE_PODMAN"
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            raise _Unavailable("a mount namespace of its own needs root and unshare", require="")
        hidden = self.tmp.getbasetemp()
        port = _free_port()
        script = (
            f"mount -t tmpfs -o size=1m quire-itest-hidden {shlex.quote(str(hidden))} && "
            f"exec podman system service --time=0 tcp://127.0.0.1:{port}"
        )
        assert self.scratch is not None or "CONTAINERS_CONF" in os.environ
        log = Path(tempfile.mkdtemp(prefix="quire-itest-service-")) / "service.log"
        with log.open("wb") as sink:
            self.service = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "slave", "sh", "-c", script],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, **podman.env},
                start_new_session=True,
            )
        remote = Engine("podman-remote", "docker", {"DOCKER_HOST": f"tcp://127.0.0.1:{port}"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.service.poll() is not None:
                raise _Unavailable(
                    f"podman system service exited: {log.read_text()}", require=require
                )
            probe = engine_cli(remote, "version", "--format", "{{.Server.Version}}", check=False)
            if probe.returncode == 0:
                self.versions[remote.name] = probe.stdout.strip()
                return remote
            time.sleep(0.2)
        raise _Unavailable(
            f"podman system service never answered: {log.read_text()}", require=require
        )

    def close(self) -> None:
        for chosen in self.ready.values():
            if chosen.name != "podman-remote":
                _remove_session_images(chosen)
        if self.service is not None and self.service.poll() is None:
            self.service.terminate()
            try:
                self.service.wait(10)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _skip_or_fail(problem: _Unavailable) -> None:
    if problem.require and os.environ.get(problem.require) == "1":
        pytest.fail(f"{problem.require}=1 but {problem.why}", pytrace=False)
    pytest.skip(problem.why)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _remove_session_images(chosen: Engine) -> None:
    listed = engine_cli(chosen, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", check=False)
    ours = [
        name
        for name in listed.stdout.split()
        if short_image_name(name).startswith(f"quire-ci/{SESSION_PREFIX}")
        and not name.endswith(":<none>")
    ]
    if ours:
        engine_cli(chosen, "image", "rm", "--no-prune", *ours, check=False)


@pytest.fixture(scope="session")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engines]:
    made = Engines(tmp_path_factory)
    yield made
    made.close()


@pytest.fixture(scope="session")
def docker_engine(engines: Engines) -> str:
    """The docker engine's version, its base image built (tests that only need docker)."""
    engines.get("docker")
    return engines.versions["docker"]


@pytest.fixture
def engine(
    request: pytest.FixtureRequest, engines: Engines, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Engine]:
    """The engine this test runs on (docker unless parametrized by `engines`): quire
    processes started from os.environ use it, and so does `support.docker_cli`."""
    chosen = engines.get(getattr(request, "param", "docker"))
    if chosen is not DOCKER:
        for key, value in chosen.quire_env.items():
            monkeypatch.setenv(key, value)
    support.use_engine(chosen)
    yield chosen
    support.use_engine(DOCKER)


def containers_labelled(label: str) -> list[str]:
    return docker_cli("ps", "--all", "--quiet", "--filter", f"label={label}").stdout.split()


def run_ids_in(state: Path) -> list[str]:
    """Every run id recorded under a state directory (any repository, any state)."""
    runs = state / "runs"
    if not runs.is_dir():
        return []
    return sorted(
        entry.name
        for entry in runs.glob("*/*/*")
        if entry.is_dir() and not entry.name.startswith(".")
    )


@pytest.fixture(autouse=True)
def no_container_left_behind(engine: Engine, isolated_dirs: Path) -> Iterator[None]:
    """After every test: no container of this test's runs (by run id or store) exists,
    on the engine the test used."""
    yield
    state = state_dir()
    leaked = {
        run_id: found
        for run_id in run_ids_in(state)
        if (found := containers_labelled(f"quire.run-id={run_id}"))
    }
    stray = containers_labelled(f"quire.store={state}")
    for container in {c for found in leaked.values() for c in found} | set(stray):
        docker_cli("rm", "--force", container, check=False)
    assert not leaked, f"containers left behind by runs on {engine.name}: {leaked}"
    assert not stray, f"containers of this test's state dir left behind on {engine.name}: {stray}"


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole suite, no process started in a test's directories is left: every
    command a job ran, in the foreground or not, was ended with its run."""
    base = str(tmp_path_factory.getbasetemp())
    yield
    deadline = time.monotonic() + 5
    while True:
        left = _processes_under(base)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, f"processes outlived the suite: {left}"


def _processes_under(base: str) -> list[str]:
    """`pid: command` of live processes whose working directory is below `base`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] == b"Z":
            continue  # a zombie has ended; only its parent has not collected it yet
        if cwd.startswith(base):
            found.append(f"{entry}: {command}")
    return found
