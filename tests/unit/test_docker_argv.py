"""The docker argv builders of quire.tools.docker: pure functions, compared by list equality."""

from __future__ import annotations

from pathlib import Path

import pytest

from quire.ci.run.executors.base import Command
from quire.tools import docker, tar
from tests.unit.test_docker_executor import MOBY_SERVER, PODMAN_SERVICE_SERVER

CID = "9f3b8a72c1d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0"
RUN_LABELS = {"quire.run-id": "20260504-162001-000001-abc123", "quire.repo": "example"}


@pytest.fixture(autouse=True)
def plain_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Builders only read `$QUIRE_DOCKER`; these tests never spawn anything."""
    monkeypatch.delenv("QUIRE_DOCKER", raising=False)


def test_binary_is_docker_unless_quire_docker_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert docker.binary() == "docker"
    monkeypatch.setenv("QUIRE_DOCKER", "podman")
    assert docker.binary() == "podman"
    assert docker.remove_argv(CID)[0] == "podman"


def test_binary_ignores_an_empty_quire_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUIRE_DOCKER", "")
    assert docker.binary() == "docker"


def test_version_argv_asks_for_the_server_as_json_as_docker_and_podman_both_can() -> None:
    # podman's `info` has no .ServerVersion; `version`'s .Server works on both (a local
    # podman prints null).
    assert docker.version_argv() == ["docker", "version", "--format", "{{json .Server}}"]


def test_build_argv_removes_intermediate_containers_and_names_file_tags_and_context() -> None:
    argv = docker.build_argv(
        Path("/ws/.quire/Dockerfile"),
        Path("/ws"),
        ["quire-ci/example:20260504-1", "quire-ci/example:latest"],
    )
    assert argv == [
        "docker",
        "build",
        "--force-rm",
        "--file",
        "/ws/.quire/Dockerfile",
        "--tag",
        "quire-ci/example:20260504-1",
        "--tag",
        "quire-ci/example:latest",
        "/ws",
    ]


def test_run_argv_labels_the_container_and_mounts_the_workspace_at_work() -> None:
    argv = docker.run_argv(
        "quire-ci/example:1", mount_source=Path("/cache/ws"), labels=RUN_LABELS, ceiling_s=21600
    )
    assert argv == [
        "docker",
        "run",
        "--detach",
        "--rm",
        "--stop-signal",
        "SIGKILL",
        "--label",
        "quire.run-id=20260504-162001-000001-abc123",
        "--label",
        "quire.repo=example",
        "--mount",
        "type=bind,src=/cache/ws,dst=/work",
        "--workdir",
        "/work",
        "quire-ci/example:1",
        "sleep",
        "21600",
    ]


def test_run_argv_adds_limits_and_extra_labels_before_the_image() -> None:
    limits = docker.Limits(cpus=1.5, memory="2g", network=False, labels={"team": "infra"})
    argv = docker.run_argv(
        "img", mount_source=Path("/ws"), labels=RUN_LABELS, ceiling_s=60, limits=limits
    )
    assert argv == [
        "docker",
        "run",
        "--detach",
        "--rm",
        "--stop-signal",
        "SIGKILL",
        "--label",
        "team=infra",
        "--label",
        "quire.run-id=20260504-162001-000001-abc123",
        "--label",
        "quire.repo=example",
        "--mount",
        "type=bind,src=/ws,dst=/work",
        "--workdir",
        "/work",
        "--cpus",
        "1.5",
        "--memory",
        "2g",
        "--network",
        "none",
        "img",
        "sleep",
        "60",
    ]


def test_run_argv_writes_whole_cpus_without_a_fraction() -> None:
    argv = docker.run_argv(
        "img",
        mount_source=Path("/ws"),
        labels=RUN_LABELS,
        ceiling_s=60,
        limits=docker.Limits(cpus=2.0),
    )
    assert argv[argv.index("--cpus") + 1] == "2"
    assert "--memory" not in argv
    assert "--network" not in argv


def test_run_argv_extra_labels_cannot_override_the_run_labels() -> None:
    limits = docker.Limits(labels={"quire.run-id": "forged", "quire.repo": "other"})
    argv = docker.run_argv("img", mount_source=Path("/ws"), labels=RUN_LABELS, ceiling_s=60)
    forged = docker.run_argv(
        "img", mount_source=Path("/ws"), labels=RUN_LABELS, ceiling_s=60, limits=limits
    )
    assert forged == argv


def test_run_argv_csv_quotes_a_source_path_containing_a_comma() -> None:
    argv = docker.run_argv("img", mount_source=Path("/tmp/a,b/ws"), labels={}, ceiling_s=60)
    assert argv[argv.index("--mount") + 1] == 'type=bind,"src=/tmp/a,b/ws",dst=/work'


def test_run_argv_csv_quotes_and_doubles_a_quote_in_the_source_path() -> None:
    argv = docker.run_argv("img", mount_source=Path('/tmp/say "hi"'), labels={}, ceiling_s=60)
    assert argv[argv.index("--mount") + 1] == 'type=bind,"src=/tmp/say ""hi""",dst=/work'


def test_exec_argv_runs_an_argv_interactively_in_work_without_a_tty() -> None:
    argv = docker.exec_argv(CID, ["ls", "-la", "some file"])
    assert argv == [
        "docker",
        "exec",
        "--interactive",
        "--workdir",
        "/work",
        CID,
        "ls",
        "-la",
        "some file",
    ]
    assert "--tty" not in argv
    assert "-t" not in argv


def test_exec_argv_of_a_string_command_is_sh_dash_c() -> None:
    command = Command.from_user("echo 'a b' | tr a-z A-Z")
    argv = docker.exec_argv(CID, command.argv)
    assert argv == [
        "docker",
        "exec",
        "--interactive",
        "--workdir",
        "/work",
        CID,
        "sh",
        "-c",
        "echo 'a b' | tr a-z A-Z",
    ]


def test_exec_argv_passes_env_by_name_only() -> None:
    argv = docker.exec_argv(CID, ["env"], env_names=["A_NAME", "TOKEN"])
    assert argv == [
        "docker",
        "exec",
        "--interactive",
        "--workdir",
        "/work",
        "--env",
        "A_NAME",
        "--env",
        "TOKEN",
        CID,
        "env",
    ]
    assert not any("=" in part for part in argv)


def test_exec_argv_with_a_user_puts_it_before_the_container() -> None:
    argv = docker.exec_argv(CID, ["chown", "-R", "1000:1000", "/work"], user="0")
    assert argv == [
        "docker",
        "exec",
        "--interactive",
        "--workdir",
        "/work",
        "--user",
        "0",
        CID,
        "chown",
        "-R",
        "1000:1000",
        "/work",
    ]


def test_remove_argv_force_removes_at_once() -> None:
    assert docker.remove_argv(CID) == ["docker", "rm", "--force", CID]


def test_untag_argv_removes_only_the_tag() -> None:
    assert docker.untag_argv("quire-ci/example:1") == [
        "docker",
        "image",
        "rm",
        "--no-prune",
        "quire-ci/example:1",
    ]


def test_inspect_argv_asks_for_the_state_as_json() -> None:
    assert docker.inspect_argv(CID) == [
        "docker",
        "container",
        "inspect",
        "--format",
        "{{json .State}}",
        CID,
    ]


def test_list_argv_lists_only_ids_of_one_state_directory_and_host() -> None:
    # Ids only: podman's `ps` cannot format {{.Label}}; labels come from `inspect`.
    assert docker.list_argv("/home/u/.local/state/quire", "build-1") == [
        "docker",
        "ps",
        "--all",
        "--quiet",
        "--no-trunc",
        "--filter",
        "label=quire.run-id",
        "--filter",
        "label=quire.store=/home/u/.local/state/quire",
        "--filter",
        "label=quire.host=build-1",
    ]


def test_list_argv_of_one_run_filters_by_its_run_id() -> None:
    argv = docker.list_argv("/s", "h", "20260504-1")
    assert argv[argv.index("--filter") + 1] == "label=quire.run-id=20260504-1"


def test_labels_argv_reads_id_and_labels_as_json_of_every_container() -> None:
    assert docker.labels_argv([CID, "abc"]) == [
        "docker",
        "container",
        "inspect",
        "--format",
        "{{.Id}}\t{{json .Config.Labels}}",
        CID,
        "abc",
    ]


def test_create_argv_is_run_without_detach_and_without_a_mount() -> None:
    limits = docker.Limits(cpus=1, memory="1g", network=False, labels={"team": "x"})
    argv = docker.create_argv("img", labels=RUN_LABELS, ceiling_s=60, limits=limits)
    assert argv == [
        "docker",
        "create",
        "--rm",
        "--stop-signal",
        "SIGKILL",
        "--label",
        "team=x",
        "--label",
        "quire.run-id=20260504-162001-000001-abc123",
        "--label",
        "quire.repo=example",
        "--workdir",
        "/work",
        "--cpus",
        "1",
        "--memory",
        "1g",
        "--network",
        "none",
        "img",
        "sleep",
        "60",
    ]


def test_start_argv_starts_the_created_container() -> None:
    assert docker.start_argv(CID) == ["docker", "start", CID]


def test_copy_in_argv_extracts_a_tar_from_stdin_at_the_containers_root() -> None:
    assert docker.copy_in_argv(CID) == ["docker", "cp", "-", f"{CID}:/"]


def test_copy_out_argv_copies_the_contents_of_work_into_a_directory() -> None:
    assert docker.copy_out_argv(CID, Path("/cache/run 1/workspace")) == [
        "docker",
        "cp",
        f"{CID}:/work/.",
        "/cache/run 1/workspace",
    ]


def test_probe_argv_reads_one_file_of_work_through_the_engine() -> None:
    assert docker.probe_argv(CID, ".quire-mount-check-1") == [
        "docker",
        "cp",
        f"{CID}:/work/.quire-mount-check-1",
        "-",
    ]


@pytest.mark.parametrize(
    ("host", "mode"),
    [
        ("", "bind"),
        ("unix:///var/run/docker.sock", "bind"),
        ("unix:///run/podman/podman.sock", "bind"),
        ("tcp://10.0.0.5:2375", "copy"),
        ("ssh://ci@builder", "copy"),
    ],
)
def test_default_workspace_mode_copies_for_tcp_and_ssh_engines(host: str, mode: str) -> None:
    assert docker.default_workspace_mode(host) == mode


@pytest.mark.parametrize("variable", ["DOCKER_HOST", "CONTAINER_HOST"])
def test_default_workspace_mode_reads_docker_host_or_podmans_container_host(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("CONTAINER_HOST", raising=False)
    assert docker.default_workspace_mode() == "bind"
    monkeypatch.setenv(variable, "tcp://127.0.0.1:2375")
    assert docker.default_workspace_mode() == "copy"
    assert docker.engine_name() == "docker at tcp://127.0.0.1:2375"


@pytest.mark.parametrize(
    ("name", "repo", "ours"),
    [
        ("quire-ci/example:1", "example", True),
        ("localhost/quire-ci/example:1", "example", True),  # podman
        ("docker.io/library/quire-ci/example:latest", "example", True),
        ("localhost/quire-ci/example-2:1", "example", False),
        ("localhost/quire-ci/example:1", None, True),
        ("localhost/other/quire-ci:1", None, False),
        ("quire-itest-base:latest", None, False),
    ],
)
def test_is_run_image_knows_quires_images_as_docker_and_podman_name_them(
    name: str, repo: str | None, ours: bool
) -> None:
    assert docker.is_run_image(name, repo) is ours


def test_short_image_name_drops_podmans_localhost_prefix() -> None:
    assert docker.short_image_name("localhost/quire-ci/x:1") == "quire-ci/x:1"
    assert docker.short_image_name("quire-ci/x:1") == "quire-ci/x:1"
    assert docker.short_image_name("registry.example/quire-ci/x:1") == (
        "registry.example/quire-ci/x:1"
    )


@pytest.mark.parametrize(
    ("stderr", "gone"),
    [
        ("Error response from daemon: No such image: quire-ci/example:1", True),
        ("Error: No such image: quire-ci/example:1", True),
        ("Error: quire-ci/example:1: image not known", True),  # podman
        ("Error response from daemon: conflict: unable to remove repository reference", False),
        ("Cannot connect to the Docker daemon at unix:///var/run/docker.sock", False),
        ("", False),
    ],
)
def test_image_gone_recognizes_docker_and_podman_saying_there_is_no_such_image(
    stderr: str, gone: bool
) -> None:
    assert docker.image_gone(stderr) is gone


@pytest.mark.parametrize(
    ("stderr", "unreachable"),
    [
        ("Cannot connect to the Docker daemon at unix:///var/run/docker.sock.", True),
        ("error during connect: Get http://10.1.2.3:2375/v1.41/version: EOF", True),
        ("dial unix /run/podman/podman.sock: connect: connection refused", True),
        ("Error: No such container: abc", False),
        # An engine that says the container is missing answered, whatever else it says.
        ("Error: No such container: abc: no such file or directory", False),
        ("", False),
    ],
)
def test_daemon_unreachable_tells_a_lost_engine_from_one_that_answered(
    stderr: str, unreachable: bool
) -> None:
    assert docker.daemon_unreachable(stderr) is unreachable


def test_the_copy_in_tar_packs_the_workspace_under_work_owned_by_root() -> None:
    # `S`: symlink targets keep their own text; only member names get `work/`.
    assert tar.create_argv(Path("/cache/run 1/workspace"), "work") == [
        "tar",
        "--create",
        "--file=-",
        "--directory=/cache/run 1/workspace",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "--transform=s,^\\.,work,S",
        ".",
    ]


# --- what `docker version` says of the engine ----------------------------------------------------


def test_docker_engine_is_known_by_its_engine_component() -> None:
    engine = docker.parse_engine(MOBY_SERVER)
    assert engine == docker.Engine("docker", "20.10.24+dfsg1")
    assert engine.refuses_unseen_bind_sources


def test_podmans_api_service_is_not_taken_for_docker_engine_despite_its_engine_part() -> None:
    engine = docker.parse_engine(PODMAN_SERVICE_SERVER)
    assert engine == docker.Engine("other", "4.3.1")
    assert not engine.refuses_unseen_bind_sources


def test_a_local_podman_has_no_server_and_is_its_own_engine() -> None:
    engine = docker.parse_engine("null\n")
    assert engine.kind == "podman-local"
    assert engine.refuses_unseen_bind_sources


@pytest.mark.parametrize("stdout", ["20.10.24\n", "", "[1, 2]\n", '{"Components": "x"}\n'])
def test_an_answer_quire_cannot_read_is_an_engine_whose_mounts_are_checked(stdout: str) -> None:
    assert not docker.parse_engine(stdout).refuses_unseen_bind_sources
