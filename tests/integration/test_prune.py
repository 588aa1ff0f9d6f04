"""`quire ci prune` for real: records, workspaces, image tags and cache volumes on a real engine.

`--dry-run` changes nothing (store, cache dir, images, volumes); a run in
progress (its container, record, workspace, image tag and its repository's
cache) is never touched, and finishes as if no prune had run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quire.ci.store.runs import RunDir, store_for
from quire.paths import cache_dir, state_dir
from quire.tools.docker import cache_volume
from tests.integration.support import docker_cli
from tests.integration.test_cache import CACHED
from tests.integration.test_docker_runs import DOCKERFILE, QUIRE_RUN, quire_run, repo_with

pytestmark = pytest.mark.integration

PRUNE = [sys.executable, "-m", "quire", "ci", "prune"]


def quire_prune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PRUNE, "--all", *args], capture_output=True, text=True, timeout=60)


def volumes() -> list[str]:
    listed = docker_cli("volume", "ls", "--quiet", "--filter", f"label=quire.store={state_dir()}")
    return sorted(listed.stdout.split())


def images(repo: str) -> list[str]:
    listed = docker_cli("image", "ls", "--format", "{{.Repository}}:{{.Tag}}")
    return sorted(name for name in listed.stdout.split() if f"quire-ci/{repo}:" in name)


def files_under(*roots: Path) -> list[str]:
    return sorted(str(p) for root in roots if root.exists() for p in root.rglob("*"))


@pytest.fixture(autouse=True)
def no_volume_left_behind(isolated_dirs: Path) -> Iterator[None]:
    yield
    for volume in volumes():
        docker_cli("volume", "rm", "--force", volume, check=False)


def test_dry_run_changes_nothing_then_prune_removes_the_old_run_and_the_cache(
    tmp_path: Path,
) -> None:
    files: dict[str, str | bytes] = {".quire/ci.py": CACHED, ".quire/Dockerfile": DOCKERFILE}
    repo = repo_with(tmp_path, "prune", files)
    first = quire_run(repo)
    old = first.run()
    second = quire_run(repo, "--keep-workspace")
    assert first.code == 0 and second.code == 0, first.stderr + second.stderr
    new = second.run()
    name = new.store.repo
    leftover = new.store.workspace_root / "20200101-000000-000000-abcdef" / "workspace"
    leftover.mkdir(parents=True)
    (leftover / "junk").write_text("left by a crash\n")
    # A tag a crashed teardown left behind, of the run that goes.
    docker_cli("tag", f"quire-ci/{name}:latest", f"quire-ci/{name}:{old.run_id}")
    before = (files_under(state_dir(), cache_dir()), volumes(), images(name))
    assert before[1] == [cache_volume(name, "deps")]

    dry = quire_prune("--keep", "1", "--caches", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert (files_under(state_dir(), cache_dir()), volumes(), images(name)) == before
    assert f"would remove run {name}/{old.run_id}" in dry.stdout
    assert f"would remove workspace {leftover.parent}" in dry.stdout
    assert f"would remove image quire-ci/{name}:{old.run_id}" in dry.stdout
    assert f"would remove cache {cache_volume(name, 'deps')}" in dry.stdout
    assert "would free " in dry.stdout

    done = quire_prune("--keep", "1", "--caches")
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    assert [run.run_id for run in new.store.runs()] == [new.run_id]
    assert not old.path.exists() and not leftover.parent.exists()
    assert new.workspace.is_dir()  # kept with its run
    assert images(name) == [f"quire-ci/{name}:latest"]
    assert volumes() == []
    assert "freed " in done.stdout


HELD = """
from quire.ci import cache, job

cache("deps", "/root/.cache/deps")

@job(inputs=["quire/push"])
def held(rt):
    rt.sh("touch /root/.cache/deps/kept && while [ ! -e /work/release ]; do sleep 0.1; done",
          check=True)
    return {"kept": rt.sh("ls /root/.cache/deps", check=True).stdout.split()}
"""


def test_a_live_run_is_never_touched(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {".quire/ci.py": HELD, ".quire/Dockerfile": DOCKERFILE}
    repo = repo_with(tmp_path, "prune-live", files)
    runner = subprocess.Popen(
        [*QUIRE_RUN, str(repo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        run = _wait_for_job(repo)
        name = run.store.repo
        before = (files_under(run.path, run.workspace), volumes(), images(name))
        assert f"quire-ci/{name}:{run.run_id}" in before[2]

        done = quire_prune("--keep", "0", "--older-than", "0", "--caches")
        assert done.returncode == 0, done.stderr
        print(done.stdout)
        assert f"{name}/{run.run_id}: running, left alone" in done.stdout
        assert (files_under(run.path, run.workspace), volumes(), images(name)) == before
        assert docker_cli("ps", "--quiet", "--filter", f"label=quire.run-id={run.run_id}").stdout
    finally:
        for started in store_for(repo).runs():
            if started.workspace.is_dir():
                (started.workspace / "release").touch()  # /work/release: the job ends
        out, err = runner.communicate(timeout=60)
    assert runner.returncode == 0, out + err
    finished = store_for(repo).find("latest")
    assert finished.run_id == run.run_id and finished.state.value == "complete"


def _wait_for_job(repo: Path) -> RunDir:
    """The run, once its job is running in its container."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = list(store_for(repo).runs())
        if runs and (runs[0].path / "jobs" / "held" / "state.yml").exists():
            return runs[0]
        time.sleep(0.1)
    raise AssertionError("the run never started its job")
