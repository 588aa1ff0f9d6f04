"""Cache volumes: argv by list equality, the executor mounting them, prune's wrappers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pytest_subprocess import FakeProcess

from quire.ci.pipeline import CacheDef
from quire.ci.run.executors.base import ExecutorSetup
from quire.ci.run.executors.docker import DockerExecutor
from quire.ci.run.orchestrator import outlet_for
from quire.ci.run.outlet import RunOutlet
from quire.ci.run.redact import Redactor
from quire.ci.store.records import ExecutorKind
from quire.config import DockerSettings
from quire.errors import DockerUnavailable, ToolFailed
from quire.tools import docker
from tests.unit.test_docker_executor import CID as FAKE_CID
from tests.unit.test_docker_executor import (  # noqa: F401 (fixtures)
    FakeDocker,
    Setup,
    fake_docker,
    setup,
)

CID = "9f3b8a72c1d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0"
LABELS = {"quire.run-id": "1", "quire.repo": "example"}
PIP = docker.CacheMount("quire-cache-example-pip", "/root/.cache/pip")


@pytest.fixture
def plain_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUIRE_DOCKER", raising=False)


# --- argv ----------------------------------------------------------------------------------------


def test_cache_volume_names_the_repository_and_the_cache() -> None:
    assert docker.cache_volume("proj-1a2b3c4d", "pip") == "quire-cache-proj-1a2b3c4d-pip"


@pytest.mark.usefixtures("plain_docker")
def test_run_argv_mounts_each_cache_volume_at_its_path_after_the_workspace() -> None:
    node = docker.CacheMount("quire-cache-example-npm", "/work/node_modules")
    argv = docker.run_argv(
        "img", mount_source=Path("/ws"), labels=LABELS, ceiling_s=60, caches=[PIP, node]
    )
    assert argv == [
        "docker",
        "run",
        "--detach",
        "--rm",
        "--stop-signal",
        "SIGKILL",
        "--label",
        "quire.run-id=1",
        "--label",
        "quire.repo=example",
        "--mount",
        "type=bind,src=/ws,dst=/work",
        "--mount",
        "type=volume,src=quire-cache-example-pip,dst=/root/.cache/pip",
        "--mount",
        "type=volume,src=quire-cache-example-npm,dst=/work/node_modules",
        "--workdir",
        "/work",
        "img",
        "sleep",
        "60",
    ]


@pytest.mark.usefixtures("plain_docker")
def test_create_argv_mounts_cache_volumes_without_a_workspace_mount() -> None:
    argv = docker.create_argv("img", labels={}, ceiling_s=60, caches=[PIP])
    assert argv == [
        "docker",
        "create",
        "--rm",
        "--stop-signal",
        "SIGKILL",
        "--mount",
        "type=volume,src=quire-cache-example-pip,dst=/root/.cache/pip",
        "--workdir",
        "/work",
        "img",
        "sleep",
        "60",
    ]


@pytest.mark.usefixtures("plain_docker")
def test_a_cache_path_with_a_comma_is_quoted_in_the_mount() -> None:
    argv = docker.create_argv(
        "img", labels={}, ceiling_s=1, caches=[docker.CacheMount("v", "/a,b")]
    )
    assert argv[argv.index("--mount") + 1] == 'type=volume,src=v,"dst=/a,b"'


@pytest.mark.usefixtures("plain_docker")
def test_volume_argvs_create_list_inspect_and_remove_by_label() -> None:
    labels = {"quire.store": "/s", "quire.repo": "example", "quire.cache": "pip"}
    assert docker.volume_create_argv("vol", labels) == [
        "docker",
        "volume",
        "create",
        "--label",
        "quire.store=/s",
        "--label",
        "quire.repo=example",
        "--label",
        "quire.cache=pip",
        "vol",
    ]
    assert docker.volume_list_argv("/s", "example") == [
        "docker",
        "volume",
        "ls",
        "--quiet",
        "--filter",
        "label=quire.cache",
        "--filter",
        "label=quire.store=/s",
        "--filter",
        "label=quire.repo=example",
    ]
    assert docker.volume_list_argv("/s")[-2:] == ["--filter", "label=quire.store=/s"]
    assert docker.volume_inspect_argv(["a", "b"]) == [
        "docker",
        "volume",
        "inspect",
        "--format",
        "{{.Name}}\t{{.Mountpoint}}\t{{json .Labels}}",
        "a",
        "b",
    ]
    assert docker.volume_remove_argv("vol") == ["docker", "volume", "rm", "vol"]


@pytest.mark.usefixtures("plain_docker")
def test_image_argvs_list_and_remove() -> None:
    assert docker.images_argv() == [
        "docker",
        "image",
        "ls",
        "--format",
        "{{.Repository}}\t{{.Tag}}",
    ]
    assert docker.image_remove_argv("a:1") == ["docker", "image", "rm", "a:1"]


# --- the executor --------------------------------------------------------------------------------


@pytest.fixture
def cached_executor(setup: Setup) -> Iterator[Callable[..., DockerExecutor]]:  # noqa: F811
    outlets: list[RunOutlet] = []

    def make(caches: tuple[CacheDef, ...], workspace: str | None = None) -> DockerExecutor:
        outlet = outlet_for(setup.run_dir, Redactor(), [setup.seen])
        outlets.append(outlet)
        settings = DockerSettings() if workspace is None else DockerSettings(workspace=workspace)
        return DockerExecutor(
            ExecutorSetup(
                kind=ExecutorKind.docker,
                workspace=setup.workspace,
                run_id=setup.run_dir.run_id,
                repo="example",
                store_label="/state",
                docker=settings,
                outlet=outlet,
                host="builder-7",
                caches=caches,
            )
        )

    yield make
    for outlet in outlets:
        outlet.close()


PIP_DEF = CacheDef("pip", "/root/.cache/pip", 3)


@pytest.mark.parametrize("mode", ["bind", "copy"])
def test_the_executor_creates_each_cache_volume_then_mounts_it(
    fake_docker: FakeDocker,  # noqa: F811
    cached_executor: Callable[..., DockerExecutor],
    mode: str,
) -> None:
    fake_docker.answer("create", stdout=FAKE_CID + "\n")
    with cached_executor((PIP_DEF,), workspace=mode):
        pass
    keys = fake_docker.subcommands()
    starts = "run" if mode == "bind" else "create"
    assert keys.index("volume") < keys.index(starts)
    assert fake_docker.argvs("volume") == [
        [
            str(fake_docker.path),
            "volume",
            "create",
            "--label",
            "quire.store=/state",
            "--label",
            "quire.repo=example",
            "--label",
            "quire.cache=pip",
            "quire-cache-example-pip",
        ]
    ]
    started = fake_docker.argvs(starts)[0]
    mount = "type=volume,src=quire-cache-example-pip,dst=/root/.cache/pip"
    assert started[started.index(mount) - 1] == "--mount"


def test_a_cache_volume_that_exists_already_is_used_as_it_is(
    fake_docker: FakeDocker,  # noqa: F811
    cached_executor: Callable[..., DockerExecutor],
) -> None:
    # podman refuses to create a volume that exists; docker answers 0.
    fake_docker.answer(
        "volume",
        stderr="Error: volume with name x already exists: volume already exists\n",
        exit=125,
    )
    with cached_executor((PIP_DEF,)) as executor:
        assert executor.container_id == FAKE_CID


def test_a_cache_volume_that_cannot_be_made_stops_the_run_before_any_container(
    fake_docker: FakeDocker,  # noqa: F811
    cached_executor: Callable[..., DockerExecutor],
) -> None:
    fake_docker.answer("volume", stderr="Error: no space left on device\n", exit=1)
    with pytest.raises(docker.CacheVolumeFailed) as caught, cached_executor((PIP_DEF,)):
        pass
    assert "quire-cache-example-pip" in str(caught.value)
    assert "no space left on device" in str(caught.value)
    assert caught.value.exit_code == 3
    assert "run" not in fake_docker.subcommands()


def test_without_caches_no_volume_is_made(
    fake_docker: FakeDocker,  # noqa: F811
    cached_executor: Callable[..., DockerExecutor],
) -> None:
    with cached_executor(()):
        pass
    assert "volume" not in fake_docker.subcommands()
    assert not any(arg.startswith("type=volume") for arg in fake_docker.argvs("run")[0])


# --- wrappers (pytest-subprocess) ----------------------------------------------------------------


def test_cache_volumes_keeps_only_volumes_whose_labels_are_this_stores(fp: FakeProcess) -> None:
    fp.register([fp.program("docker"), "volume", "ls", fp.any()], stdout="a\nb\nc\n")
    ours = '{"quire.store":"/s","quire.repo":"example","quire.cache":"pip"}'
    other = '{"quire.store":"/elsewhere","quire.repo":"example","quire.cache":"pip"}'
    fp.register(
        [fp.program("docker"), "volume", "inspect", fp.any()],
        stdout=f"a\t/v/a\t{ours}\nb\t/v/b\t{other}\nc\t/v/c\tnull\n",
    )
    assert docker.cache_volumes("/s") == [docker.Volume("a", "example", "pip", "/v/a")]


def test_remove_volume_says_why_a_volume_in_use_stays(fp: FakeProcess) -> None:
    fp.register(
        [fp.program("docker"), "volume", "rm", "a"],
        stderr="Error response from daemon: remove a: volume is in use - [c0ffee]\n",
        returncode=1,
    )
    fp.register(
        [fp.program("docker"), "volume", "rm", "gone"], stderr="no such volume", returncode=1
    )
    assert "volume is in use" in (docker.remove_volume("a") or "")
    assert docker.remove_volume("gone") is None


def test_run_images_lists_quire_tags_by_their_short_name(fp: FakeProcess) -> None:
    listing = (
        "localhost/quire-ci/proj-1a2b3c4d\tlatest\n"
        "quire-ci/proj-1a2b3c4d\t20261124-163403-849470-769bb8\n"
        "quire-ci/proj-1a2b3c4d\t<none>\n"
        "busybox\tlatest\n"
    )
    fp.register([fp.program("docker"), "image", "ls", fp.any()], stdout=listing)
    assert docker.run_images() == [
        docker.Image("quire-ci/proj-1a2b3c4d", "latest"),
        docker.Image("quire-ci/proj-1a2b3c4d", "20261124-163403-849470-769bb8"),
    ]


def test_run_images_without_an_engine_is_docker_unavailable(fp: FakeProcess) -> None:
    fp.register(
        [fp.program("docker"), "image", "ls", fp.any()],
        stderr="Cannot connect to the Docker daemon\n",
        returncode=1,
    )
    with pytest.raises(DockerUnavailable):
        docker.run_images()


def test_remove_image_tells_a_deleted_image_from_an_untagged_one(fp: FakeProcess) -> None:
    fp.register(
        [fp.program("docker"), "image", "rm", "a:1"], stdout="Untagged: a:1\nDeleted: sha256:ab\n"
    )
    fp.register([fp.program("docker"), "image", "rm", "a:2"], stdout="Untagged: a:2\n")
    fp.register(
        [fp.program("docker"), "image", "rm", "a:3"],
        stderr="Error: No such image: a:3\n",
        returncode=1,
    )
    fp.register(
        [fp.program("docker"), "image", "rm", "a:4"],
        stderr="Error response from daemon: conflict: image is being used by running container\n",
        returncode=1,
    )
    assert docker.remove_image("a:1") is True
    assert docker.remove_image("a:2") is False
    assert docker.remove_image("a:3") is False
    with pytest.raises(ToolFailed, match="being used"):
        docker.remove_image("a:4")
