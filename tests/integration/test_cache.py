"""Caches between docker runs, for real: a `cache()` volume survives from one run to the next.

The stand-in for a package cache is deterministic: the job looks for a file
in the cache; the first run misses and writes it, the second finds it. On
docker and podman, in the bind and the copy workspace modes. Every volume a
test's runs made (label quire.store = the test's state dir) is removed after it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from quire.paths import state_dir
from quire.tools.docker import cache_volume
from tests.integration.support import Engine, docker_cli
from tests.integration.test_docker_runs import DOCKERFILE, quire_run, repo_with

pytestmark = pytest.mark.integration

CACHED = """
from quire.ci import cache, job

cache("deps", "/root/.cache/deps")

@job(inputs=["quire/push"])
def install(rt):
    found = rt.sh("cat /root/.cache/deps/installed 2>/dev/null").stdout
    if not found:
        rt.sh("mkdir -p /root/.cache/deps && echo $QUIRE_RUN_ID > /root/.cache/deps/installed",
              check=True)
    return {"found": found.strip()}
"""


def cache_volumes_of_this_test() -> list[str]:
    listed = docker_cli(
        "volume", "ls", "--quiet", "--filter", f"label=quire.store={state_dir()}", check=False
    )
    return listed.stdout.split()


@pytest.fixture(autouse=True)
def no_volume_left_behind(engine: Engine, isolated_dirs: Path) -> Iterator[None]:
    """Whatever the test did, the cache volumes of its state dir go afterwards."""
    yield
    for volume in cache_volumes_of_this_test():
        docker_cli("volume", "rm", "--force", volume, check=False)


def write_config(text: str) -> None:
    config = Path(os.environ["QUIRE_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)


@pytest.mark.parametrize("mode", ["bind", "copy"])
@pytest.mark.engines("docker", "podman")
def test_a_cache_filled_by_one_run_is_found_by_the_next(
    tmp_path: Path, engine: Engine, mode: str
) -> None:
    write_config(f'[docker]\nworkspace = "{mode}"\n')
    files: dict[str, str | bytes] = {".quire/ci.py": CACHED, ".quire/Dockerfile": DOCKERFILE}
    repo = repo_with(tmp_path, f"cache-{mode}", files)

    first = quire_run(repo)
    assert first.code == 0, first.stdout + first.stderr
    assert first.outputs("install")["found"] == ""  # a miss: the cache starts empty
    first_run = first.run()

    second = quire_run(repo)
    assert second.code == 0, second.stdout + second.stderr
    assert second.outputs("install")["found"] == first_run.run_id  # what run 1 left

    volume = cache_volume(first_run.store.repo, "deps")
    assert cache_volumes_of_this_test() == [volume]
    inspected = docker_cli("volume", "inspect", "--format", "{{json .Labels}}", volume)
    labels = json.loads(inspected.stdout)
    assert labels == {
        "quire.store": str(state_dir()),
        "quire.repo": first_run.store.repo,
        "quire.cache": "deps",
    }
    assert f"caches: {volume} at /root/.cache/deps" in first.stdout + first.stderr


def test_two_repositories_do_not_share_a_cache(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {".quire/ci.py": CACHED, ".quire/Dockerfile": DOCKERFILE}
    one = quire_run(repo_with(tmp_path, "cache-one", files))
    other = quire_run(repo_with(tmp_path, "cache-other", files))
    assert one.code == 0 and other.code == 0, one.stderr + other.stderr
    assert one.outputs("install")["found"] == ""
    assert other.outputs("install")["found"] == ""  # its own volume: a miss too
    assert len(cache_volumes_of_this_test()) == 2
