"""What each engine needs from quire: podman beside docker, and engines shared by hosts.

Runs on docker and podman (conftest.py's `engines` marker): the container's
stop signal and labels, how long its teardown takes (printed; the figures
are in bench/README.md), reconcile judging only its own host's containers
on a shared engine, and a failed build's message.
"""

from __future__ import annotations

import json
import secrets
import socket
from datetime import datetime
from pathlib import Path

import pytest
from plumbum import local

from quire.ci.store.logs import LogReader
from quire.paths import state_dir
from quire.tools import docker
from tests.integration.support import (
    BASE_IMAGE,
    SESSION_PREFIX,
    Engine,
    docker_cli,
    without_sandbox,
)
from tests.integration.test_docker_runs import pipeline, quire_run, repo_with
from tests.integration.test_reliability import quire

pytestmark = pytest.mark.integration

INSPECT_SELF = """
import json, os, subprocess
from quire.ci import job

@job(inputs=["quire/push"])
def inspect(rt):
    me = rt.sh(["hostname"], check=True).stdout.strip()
    engine = os.environ.get("QUIRE_DOCKER", "docker")
    out = subprocess.run(
        [engine, "container", "inspect", "--format",
         "{{json .Config.Labels}}|{{json .Config.StopSignal}}", me],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    labels, signal = out.split("|")
    return {"labels": json.loads(labels), "stop_signal": json.loads(signal)}
"""


@pytest.mark.engines("docker", "podman")
def test_the_container_stops_with_sigkill_carries_its_host_and_goes_quickly(
    tmp_path: Path, engine: Engine
) -> None:
    without_sandbox()  # the job's Python inspects its container through the engine's CLI
    done = pipeline(tmp_path, "inspect", INSPECT_SELF)
    assert done.code == 0, done.stdout + done.stderr
    out = done.outputs("inspect")
    # docker says "SIGKILL"; podman keeps the number.
    assert out["stop_signal"] in ("SIGKILL", 9), out
    assert out["labels"]["quire.host"] == socket.gethostname()
    assert out["labels"]["quire.store"] == str(state_dir())
    events = {e["event"]: e for e in LogReader(done.run().path / "log.jsonl")}
    stopping = datetime.fromisoformat(events["container-stop"]["t"].replace("Z", "+00:00"))
    removed = datetime.fromisoformat(events["container-end"]["t"].replace("Z", "+00:00"))
    print(f"{engine.name}: teardown {(removed - stopping).total_seconds():.2f}s")


def start_bare_container(engine: Engine, run_id: str, host: str) -> str:
    """A sleeping container labelled as quire labels a run's, made on `host`."""
    return docker_cli(
        "run",
        "--detach",
        "--rm",
        "--stop-signal",
        "SIGKILL",
        "--label",
        f"quire.run-id={run_id}",
        "--label",
        "quire.repo=shared",
        "--label",
        f"quire.store={state_dir()}",
        "--label",
        f"quire.host={host}",
        BASE_IMAGE,
        "sleep",
        "120",
    ).stdout.strip()


def exists(container: str) -> bool:
    return docker_cli("container", "inspect", container, check=False).returncode == 0


@pytest.mark.engines("docker", "podman")
def test_reconcile_on_a_shared_engine_removes_only_its_own_hosts_orphans(
    engine: Engine,
) -> None:
    # Two hosts share the engine and the state path (a shared disk). Neither
    # run is known alive here; only this host's container is this host's to judge.
    theirs = start_bare_container(engine, f"20200101-000000-000000-{secrets.token_hex(3)}", "b")
    ours = start_bare_container(
        engine, f"20200101-000000-000001-{secrets.token_hex(3)}", socket.gethostname()
    )
    try:
        done = quire("ci", "reconcile")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "containers not checked" not in done.stderr
        assert f"container-removed: {ours[:12]}" in done.stdout
        assert theirs[:12] not in done.stdout
        assert exists(theirs)
        assert not exists(ours)
    finally:
        for container in (theirs, ours):  # one at a time: podman skips all if one is gone
            docker_cli("rm", "--force", container, check=False)


@pytest.mark.engines("docker", "podman")
def test_a_failed_build_says_the_engines_error_not_the_legacy_builders_banner(
    tmp_path: Path, engine: Engine
) -> None:
    dockerfile = f"FROM {BASE_IMAGE}\nCOPY not-in-the-repository.txt /x\n"
    noop = 'from quire.ci import job\n\n@job(inputs=["quire/push"])\ndef noop(rt):\n    pass\n'
    repo = repo_with(tmp_path, "bad-copy", {".quire/ci.py": noop, ".quire/Dockerfile": dockerfile})
    done = quire_run(repo)
    assert done.code == 3, done.stdout + done.stderr
    error = done.stderr[done.stderr.rindex("error: ") :]
    print(f"{engine.name}: {error}")
    assert "not-in-the-repository.txt" in error
    assert "DEPRECATED" not in error and "buildx" not in error


def test_labels_of_a_run_container_read_back_as_json_on_docker(tmp_path: Path) -> None:
    # `container inspect --format {{json .Config.Labels}}` is what reconcile reads:
    # a container without labels prints `null`, never `<no value>`.
    bare = docker_cli("create", BASE_IMAGE, "true").stdout.strip()
    try:
        line = docker_cli(
            "container", "inspect", "--format", "{{.Id}}\t{{json .Config.Labels}}", bare
        ).stdout.strip()
    finally:
        docker_cli("rm", "--force", bare, check=False)
    container_id, raw = line.split("\t")
    assert container_id == bare
    assert json.loads(raw) in (None, {})


@pytest.mark.engines("docker", "podman", "podman-remote")
def test_only_engines_that_refuse_an_unseen_bind_source_go_without_the_marker_check(
    tmp_path: Path, engine: Engine
) -> None:
    # quire trusts a bind mount on Docker Engine and a local podman, without reading a
    # marker back, because they refuse a source they cannot find: pinned here for real.
    with local.env(**engine.quire_env):  # plumbum took its environment at import
        found = docker.engine()
        refused = refuses_a_missing_source(tmp_path) if found.refuses_unseen_bind_sources else None
    expected = {"docker": "docker", "podman": "podman-local", "podman-remote": "other"}
    assert found.kind == expected[engine.name], found
    assert refused in (True, None), f"{engine.name} started a container on a missing source"


def refuses_a_missing_source(tmp_path: Path) -> bool:
    """Whether `docker.run_detached` on a source that does not exist is refused."""
    labels = {
        "quire.run-id": f"{SESSION_PREFIX}-unseen",
        "quire.store": str(state_dir()),
        "quire.host": socket.gethostname(),
    }
    try:
        started = docker.run_detached(
            BASE_IMAGE, mount_source=tmp_path / "never-made", labels=labels, ceiling_s=60
        )
    except docker.WorkspaceNotVisible as exc:
        assert "does not see this machine's files" in str(exc)
        return True
    docker.teardown(started, None)
    return False
