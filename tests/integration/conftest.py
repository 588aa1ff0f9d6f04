"""The real-docker suite: a base image built from a static busybox, and leak checks.

No registry is reachable, so the base image is built `FROM scratch` with
/bin/busybox copied in. Without a working engine (or busybox) the suite is
skipped, unless QUIRE_REQUIRE_DOCKER=1 makes that a failure.

The engine is shared with whoever else uses this machine: everything here
looks only at what this session created (repositories named with a
per-session prefix, runs in this test's own state directory).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from quire.paths import state_dir
from tests.integration.support import BASE_IMAGE, BUSYBOX, SESSION_PREFIX, docker_cli

BASE_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
"""


def _unavailable(why: str) -> None:
    if os.environ.get("QUIRE_REQUIRE_DOCKER") == "1":
        pytest.fail(f"QUIRE_REQUIRE_DOCKER=1 but {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A reachable engine with the base image built; removes this session's images after."""
    if shutil.which("docker") is None:
        _unavailable("the docker CLI is not installed")
    try:
        info = docker_cli("info", "--format", "{{.ServerVersion}}", check=False)
    except subprocess.TimeoutExpired:
        _unavailable("`docker info` timed out")
    if info.returncode != 0:
        _unavailable(f"`docker info` failed: {info.stderr.strip()[-500:]}")
    if not BUSYBOX.is_file():
        _unavailable(f"{BUSYBOX} is missing (install busybox-static) to build the base image")
    context = tmp_path_factory.mktemp("base-image")
    shutil.copy2(BUSYBOX, context / "busybox")
    (context / "Dockerfile").write_text(BASE_DOCKERFILE)
    built = docker_cli("build", "--quiet", "--tag", BASE_IMAGE, str(context), check=False)
    if built.returncode != 0:
        pytest.fail(f"building {BASE_IMAGE} failed:\n{built.stderr}", pytrace=False)
    yield info.stdout.strip()
    _remove_session_images()


def _remove_session_images() -> None:
    listed = docker_cli(
        "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", "quire-ci/*", check=False
    )
    ours = [
        name
        for name in listed.stdout.split()
        if name.startswith(f"quire-ci/{SESSION_PREFIX}") and not name.endswith(":<none>")
    ]
    if ours:
        docker_cli("image", "rm", "--no-prune", *ours, check=False)


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
def no_container_left_behind(docker_engine: str, isolated_dirs: Path) -> Iterator[None]:
    """After every test: no container of this test's runs (by run id or store) exists."""
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
    assert not leaked, f"containers left behind by runs: {leaked}"
    assert not stray, f"containers of this test's state dir left behind: {stray}"
