"""How the tree reaches /work: a checked bind mount, or a copy for an engine elsewhere.

The executor runs against the `docker` shim of test_docker_executor.py,
which keeps the tar `docker cp -` was given and answers `cp` by kind
(in, probe, out). The copy-in pipe runs real `tar`.
"""

# The fixtures come from test_docker_executor.py; a test naming one as a parameter
# "redefines" the import as far as ruff can tell.
# ruff: noqa: F811

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from pytest_subprocess import FakeProcess
from typer.testing import CliRunner

from quire.ci.run.executors import docker as docker_executor
from quire.ci.run.executors.base import Command
from quire.ci.run.executors.docker import DockerExecutor
from quire.cli.app import app
from quire.config import DockerSettings
from quire.errors import ContainerStartFailed, DockerUnavailable, ImageBuildFailed
from quire.tools import docker
from tests.unit.test_docker_executor import (  # noqa: F401  (fixtures)
    CID,
    MOBY_SERVER,
    Collected,
    FakeDocker,
    Setup,
    docker_repo,
    executor_for,
    fake_docker,
    setup,
)

COPY = DockerSettings(workspace="copy")
BIND = DockerSettings(workspace="bind")


@pytest.fixture(autouse=True)
def local_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DOCKER_HOST from the developer's shell decides the default mode here."""
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("CONTAINER_HOST", raising=False)


# --- bind: the engine must really see the workspace -----------------------------------------------


def test_bind_mode_checks_a_fresh_marker_through_the_engine_and_removes_it(
    fake_docker: FakeDocker, setup: Setup, executor_for: Callable[..., DockerExecutor]
) -> None:
    with executor_for() as ex:
        assert ex.mode == "bind"
        assert not [p.name for p in setup.workspace.iterdir() if p.name.startswith(".quire-m")]
    (probe,) = fake_docker.argvs("cp probe")
    name = probe[2].removeprefix(f"{CID}:/work/")
    assert re.fullmatch(r"\.quire-mount-check-[0-9a-f]{16}", name), name
    assert probe == docker.probe_argv(CID, name)
    keys = fake_docker.subcommands()
    assert keys.index("run") < keys.index("cp probe")
    (run,) = fake_docker.argvs("run")
    assert f"type=bind,src={setup.workspace},dst=/work" in run
    assert "create" not in keys and "start" not in keys


@pytest.mark.parametrize("server", [MOBY_SERVER, "null\n"], ids=["docker-engine", "local-podman"])
def test_bind_mode_on_an_engine_that_refuses_unseen_sources_needs_no_marker(
    fake_docker: FakeDocker,
    setup: Setup,
    executor_for: Callable[..., DockerExecutor],
    server: str,
) -> None:
    # Docker Engine (and a local podman) fail `run` on a source they cannot see, and
    # every workspace path is new: a started container has this machine's tree.
    fake_docker.answer("version", stdout=server)
    with executor_for(BIND) as ex:
        ex.execute(Command.from_user("true"), Collected())
    keys = fake_docker.subcommands()
    assert "cp probe" not in keys
    assert "version" in keys
    assert [key for key in keys if key != "version"][:2] == ["build", "run"]
    (run,) = fake_docker.argvs("run")
    assert f"type=bind,src={setup.workspace},dst=/work" in run
    assert not [p for p in setup.workspace.iterdir() if p.name.startswith(".quire-mount")]


def test_a_source_docker_engine_cannot_find_is_still_exit_3_naming_the_copy_mode(
    fake_docker: FakeDocker, setup: Setup, executor_for: Callable[..., DockerExecutor]
) -> None:
    fake_docker.answer("version", stdout=MOBY_SERVER)
    fake_docker.answer(
        "run",
        stderr='docker: Error response from daemon: invalid mount config for type "bind": '
        f"bind source path does not exist: {setup.workspace}.\n",
        exit=125,
    )
    with pytest.raises(docker.WorkspaceNotVisible) as caught, executor_for(BIND):
        pytest.fail("the with-block must not be entered")
    assert caught.value.exit_code == 3
    assert 'workspace = "copy"' in str(caught.value)
    assert "cp probe" not in fake_docker.subcommands()


def test_the_marker_is_there_while_docker_run_runs_and_gone_before_any_job(
    fake_docker: FakeDocker,
    setup: Setup,
    executor_for: Callable[..., DockerExecutor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(docker_executor.secrets, "token_hex", lambda n: "ab" * n)
    marker = setup.workspace / f".quire-mount-check-{'ab' * 8}"
    fake_docker.watch_record(marker)  # the shim snapshots it at every call
    with executor_for() as ex:
        ex.execute(Command.from_user("true"), Collected())
    seen = {call.key: call.record for call in fake_docker.calls()}
    assert seen["build"] is None
    assert seen["run"] == setup.run_dir.run_id  # what the marker holds
    assert seen["cp probe"] == setup.run_dir.run_id
    assert seen["exec"] is None
    assert not marker.exists()


def test_the_marker_name_is_fresh_per_run(
    fake_docker: FakeDocker, executor_for: Callable[..., DockerExecutor]
) -> None:
    for _ in range(2):
        with executor_for():
            pass
    names = {argv[2] for argv in fake_docker.argvs("cp probe")}
    assert len(names) == 2


@pytest.mark.parametrize(
    "stderr",
    [
        "Error response from daemon: Could not find the file /work/{name} in container {cid}",
        'Error: "/work/{name}" could not be found on container {cid}: no such file or directory',
    ],
    ids=["docker", "podman"],
)
def test_an_engine_that_mounted_an_empty_work_is_an_error_naming_the_copy_mode(
    fake_docker: FakeDocker,
    setup: Setup,
    executor_for: Callable[..., DockerExecutor],
    stderr: str,
) -> None:
    # docker's CLI against podman's API creates a missing bind source, empty.
    fake_docker.answer("cp probe", stderr=stderr.format(name="x", cid=CID), exit=1)
    with pytest.raises(docker.WorkspaceNotVisible) as caught, executor_for(BIND):
        pytest.fail("the with-block must not be entered")
    message = str(caught.value)
    assert caught.value.exit_code == 3
    assert "does not see this machine's files" in message
    assert 'workspace = "copy"' in message
    assert str(setup.workspace) in message
    assert CID[:12] in message
    assert stderr.format(name="x", cid=CID) in message  # the engine's own words
    assert fake_docker.argvs("rm") == [docker.remove_argv(CID)]
    assert "exec" not in fake_docker.subcommands()
    assert not [p for p in setup.workspace.iterdir() if p.name.startswith(".quire-mount")]


@pytest.mark.parametrize(
    "stderr",
    [
        'docker: Error response from daemon: invalid mount config for type "bind": '
        "bind source path does not exist: {ws}.",
        "Error: statfs {ws}: no such file or directory",
    ],
    ids=["docker", "podman"],
)
def test_a_bind_source_the_engine_cannot_find_is_an_error_naming_the_copy_mode(
    fake_docker: FakeDocker,
    setup: Setup,
    executor_for: Callable[..., DockerExecutor],
    stderr: str,
) -> None:
    fake_docker.answer("run", stderr=stderr.format(ws=setup.workspace) + "\n", exit=125)
    with pytest.raises(docker.WorkspaceNotVisible) as caught, executor_for():
        pytest.fail("the with-block must not be entered")
    assert isinstance(caught.value, ContainerStartFailed)
    assert caught.value.exit_code == 3
    assert "does not see this machine's files" in str(caught.value)
    assert 'workspace = "copy"' in str(caught.value)
    assert "rm" not in fake_docker.subcommands()


def test_other_start_failures_stay_plain_container_start_failures(
    fake_docker: FakeDocker, executor_for: Callable[..., DockerExecutor]
) -> None:
    fake_docker.answer("run", stderr="Error: statfs /elsewhere: no such file\n", exit=125)
    with pytest.raises(ContainerStartFailed) as caught, executor_for():
        pytest.fail("the with-block must not be entered")
    assert not isinstance(caught.value, docker.WorkspaceNotVisible)


# --- copy: create, copy the tree in, start --------------------------------------------------------


def test_copy_mode_creates_copies_the_tree_in_then_starts(
    fake_docker: FakeDocker, setup: Setup, executor_for: Callable[..., DockerExecutor]
) -> None:
    fake_docker.answer("create", stdout=CID + "\n")
    (setup.workspace / "src").mkdir()
    (setup.workspace / "src" / "main.c").write_text("int x;\n")
    (setup.workspace / "src" / "link.c").symlink_to("./main.c")
    with executor_for(COPY) as ex:
        assert ex.mode == "copy"
        ex.execute(Command.from_user(["make"]), Collected())
    keys = fake_docker.subcommands()
    # `version` runs while the image builds: before the container, in either order.
    assert sorted(keys[:2]) == ["build", "version"]
    assert keys[2:5] == ["create", "cp in", "start"]
    assert "run" not in keys and "cp probe" not in keys
    tag = f"quire-ci/example:{setup.run_dir.run_id}"
    (create,) = fake_docker.argvs("create")
    assert create == docker.create_argv(
        tag,
        labels={
            "quire.run-id": setup.run_dir.run_id,
            "quire.repo": "example",
            "quire.store": setup.run_dir.store.label,
            "quire.host": "builder-7",
        },
        ceiling_s=DockerSettings().ceiling,
        limits=docker.Limits(network=True, labels={}),
    )
    assert fake_docker.argvs("cp in") == [docker.copy_in_argv(CID)]
    assert fake_docker.argvs("start") == [docker.start_argv(CID)]
    assert fake_docker.copied_in() == {
        "work/.quire/Dockerfile": b"FROM base\n",
        "work/src/main.c": b"int x;\n",
    }
    links = fake_docker.copied_in_links()
    assert links == {"work/src/link.c": "./main.c"}  # a relative link stays relative
    assert fake_docker.argvs("rm") == [docker.remove_argv(CID)]
    assert "cp out" not in keys  # nothing to keep


def test_copy_mode_is_the_default_for_a_tcp_engine(
    fake_docker: FakeDocker,
    executor_for: Callable[..., DockerExecutor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.1.2.3:2375")
    fake_docker.answer("create", stdout=CID + "\n")
    with executor_for() as ex:
        assert ex.mode == "copy"
    assert "cp in" in fake_docker.subcommands()
    assert "run" not in fake_docker.subcommands()


def test_bind_set_in_the_config_wins_over_a_tcp_engine(
    fake_docker: FakeDocker,
    executor_for: Callable[..., DockerExecutor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.1.2.3:2375")
    with executor_for(BIND) as ex:
        assert ex.mode == "bind"
    assert "run" in fake_docker.subcommands()


def test_copy_mode_with_keep_workspace_copies_work_back_before_removal(
    fake_docker: FakeDocker, setup: Setup, executor_for: Callable[..., DockerExecutor]
) -> None:
    fake_docker.answer("create", stdout=CID + "\n")
    fake_docker.container_work({"artifact.txt": "made in the container\n"})
    (setup.workspace / "stale.txt").write_text("deleted in the container\n")
    with executor_for(COPY, keep_workspace=True):
        pass
    keys = fake_docker.subcommands()
    assert keys.index("cp out") < keys.index("rm")
    (out,) = fake_docker.argvs("cp out")
    assert out[2] == f"{CID}:/work/."
    assert sorted(p.name for p in setup.workspace.iterdir()) == ["artifact.txt"]
    assert (setup.workspace / "artifact.txt").read_text() == "made in the container\n"
    assert not list(setup.workspace.parent.glob("*.from-container"))


def test_a_failed_copy_back_is_a_warning_and_keeps_the_materialized_tree(
    fake_docker: FakeDocker, setup: Setup, executor_for: Callable[..., DockerExecutor]
) -> None:
    fake_docker.answer("create", stdout=CID + "\n")
    fake_docker.answer("cp out", stderr="Error: no space left on device\n", exit=1)
    with executor_for(COPY, keep_workspace=True):
        pass
    assert (setup.workspace / ".quire" / "Dockerfile").read_text() == "FROM base\n"
    assert fake_docker.argvs("rm") == [docker.remove_argv(CID)]
    warned = [e["text"] for e in setup.run_events() if e["event"] == "warning"]
    assert warned and "no space left on device" in warned[0]


def test_a_failed_copy_in_is_exit_3_naming_the_container_and_removes_it(
    fake_docker: FakeDocker, executor_for: Callable[..., DockerExecutor]
) -> None:
    fake_docker.answer("create", stdout=CID + "\n")
    fake_docker.answer("cp in", stderr="Error response from daemon: disk quota exceeded\n", exit=1)
    with pytest.raises(docker.WorkspaceCopyFailed) as caught, executor_for(COPY):
        pytest.fail("the with-block must not be entered")
    assert caught.value.exit_code == 3
    assert CID[:12] in str(caught.value)
    assert "disk quota exceeded" in str(caught.value)
    assert "start" not in fake_docker.subcommands()
    assert fake_docker.argvs("rm") == [docker.remove_argv(CID)]


def test_copy_mode_never_chowns_work_as_an_unprivileged_user(
    fake_docker: FakeDocker,
    executor_for: Callable[..., DockerExecutor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(docker_executor.os, "geteuid", lambda: 1000)
    fake_docker.answer("create", stdout=CID + "\n")
    with executor_for(COPY):
        pass
    assert fake_docker.argvs("exec") == []  # the local tree was never the container's to write


# --- the container's labels and stop signal -------------------------------------------------------


def test_the_container_carries_the_host_that_owns_it_and_stops_with_sigkill(
    fake_docker: FakeDocker, executor_for: Callable[..., DockerExecutor]
) -> None:
    with executor_for():
        pass
    (run,) = fake_docker.argvs("run")
    assert "quire.host=builder-7" in run
    assert run[run.index("--stop-signal") + 1] == "SIGKILL"


# --- a failed build shows docker's error, not the legacy builder's banner -------------------------

BANNER = """\
DEPRECATED: The legacy builder is deprecated and will be removed in a future release.
            Install the buildx component to build images with BuildKit:
            https://docs.docker.com/go/buildx/

invalid argument "quire-ci/Bad:1" for "-t, --tag" flag: invalid reference format

Usage:  docker build [OPTIONS] PATH | URL | -

Run 'docker build --help' for more information
"""


def test_a_failed_build_shows_dockers_error_without_the_deprecated_banner(
    fake_docker: FakeDocker, executor_for: Callable[..., DockerExecutor]
) -> None:
    fake_docker.answer("build", stderr=BANNER, exit=125)
    with pytest.raises(ImageBuildFailed) as caught, executor_for():
        pytest.fail("the with-block must not be entered")
    message = str(caught.value)
    assert 'invalid argument "quire-ci/Bad:1" for "-t, --tag" flag' in message
    assert "DEPRECATED" not in message
    assert "buildx" not in message
    assert "Usage:" not in message


def test_build_error_falls_back_to_the_output_tail_when_stderr_is_only_noise() -> None:
    noise = BANNER.split("\n\n")[0].encode()
    assert docker.build_error(noise, b"Step 1/2 : FROM base\nStep 2/2 : RUN x\n") == (
        "Step 1/2 : FROM base\nStep 2/2 : RUN x"
    )


def test_build_error_keeps_the_last_lines_of_a_long_stderr() -> None:
    stderr = "".join(f"line {n}\n" for n in range(30)).encode()
    assert docker.build_error(stderr, b"", lines=3) == "line 27\nline 28\nline 29"


# --- `[docker]` is checked when the config is read, not after the build ---------------------------


def test_an_invalid_docker_memory_exits_2_naming_the_file_and_key_before_docker_does_anything(
    fake_docker: FakeDocker, tmp_path: Path, isolated_dirs: Path
) -> None:
    config = isolated_dirs / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('[docker]\nmemory = "lots"\n')
    done = CliRunner().invoke(
        app, ["ci", "run", "--executor", "docker", "--repo", str(docker_repo(tmp_path))]
    )
    assert done.exit_code == 2, done.output
    assert str(config) in done.stderr
    assert "docker.memory" in done.stderr
    assert "'lots'" in done.stderr
    # At most the read-only container listing a docker run starts with (cancelled here).
    assert set(fake_docker.subcommands()) <= {"ps"}


def test_why_unseen_raises_docker_unavailable_when_the_engine_is_gone(fp: FakeProcess) -> None:
    fp.register(
        docker.probe_argv(CID, ".m"),
        stderr="Cannot connect to the Docker daemon at unix:///x.sock\n",
        returncode=1,
    )
    with pytest.raises(DockerUnavailable):
        docker.why_unseen(CID, ".m")


@pytest.mark.parametrize(
    "stderr",
    [
        "Error response from daemon: no such file or directory",  # docker CLI, podman API
        "Error response from daemon: Could not find the file /work/.m in container x",
        'Error: "/work/.m" could not be found on container x: no such file or directory',
    ],
)
def test_why_unseen_gives_the_engines_words_for_a_missing_file(
    fp: FakeProcess, stderr: str
) -> None:
    fp.register(docker.probe_argv(CID, ".m"), stderr=stderr + "\n", returncode=1)
    assert docker.why_unseen(CID, ".m") == stderr


def test_why_unseen_is_none_when_the_container_sees_the_file(fp: FakeProcess) -> None:
    fp.register(docker.probe_argv(CID, ".m"), stdout="tar bytes")
    assert docker.why_unseen(CID, ".m") is None
