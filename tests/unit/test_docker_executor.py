"""DockerExecutor and the docker wrappers, against a fake `docker` (no daemon).

Short wrapper calls are faked with pytest-subprocess. Everything that
streams (build, exec) talks to a `docker` shim: a small Python script that
records each call's argv, environment and the container.yml of the moment,
and answers as the test told it.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from pydantic import BaseModel
from pytest_subprocess import FakeProcess
from typer.testing import CliRunner

from quire.ci.run.executors import docker as docker_executor
from quire.ci.run.executors.base import Command, ExecutorSetup
from quire.ci.run.executors.docker import DockerExecutor
from quire.ci.run.orchestrator import outlet_for
from quire.ci.run.outlet import RunOutlet
from quire.ci.run.redact import Redactor
from quire.ci.store import recorder
from quire.ci.store.logs import LogReader
from quire.ci.store.records import ExecutorKind, RunMeta, utcnow
from quire.ci.store.runs import RunDir, RunStore, store_for
from quire.cli.app import app
from quire.config import DockerSettings
from quire.errors import (
    ContainerDied,
    ContainerStartFailed,
    DockerfileMissing,
    DockerUnavailable,
    ImageBuildFailed,
)
from quire.tools import docker
from tests.helpers import Collected as HelperCollected
from tests.helpers import make_repo

CID = "c0ffee" + "0" * 58
# `docker version --format '{{json .Server}}'` of Docker Engine 20.10 (trimmed).
MOBY_SERVER = (
    '{"Platform":{"Name":""},"Components":[{"Name":"Engine","Version":"20.10.24+dfsg1"},'
    '{"Name":"containerd","Version":"1.6.20~ds1"},{"Name":"runc","Version":"1.1.5+ds1"}],'
    '"Version":"20.10.24+dfsg1","ApiVersion":"1.41"}\n'
)
# The same of docker's CLI against podman 4.3's API service (trimmed): an "Engine" too.
PODMAN_SERVICE_SERVER = (
    '{"Platform":{"Name":"linux/amd64/debian-12"},"Components":[{"Name":"Podman Engine",'
    '"Version":"4.3.1"},{"Name":"Conmon","Version":"conmon version 2.1.6"},'
    '{"Name":"Engine","Version":"4.3.1"}],"Version":"4.3.1","ApiVersion":"1.41"}\n'
)
RUNNING = '{"Running":true,"Status":"running","ExitCode":0,"OOMKilled":false}'

SHIM = """\
import json, os, sys

STATE = {state!r}
args = sys.argv[1:]
with open(os.path.join(STATE, "answers.json")) as handle:
    config = json.load(handle)
watched = config.get("watch")
snapshot = None
if watched and os.path.isfile(watched):
    with open(watched) as handle:
        snapshot = handle.read()
key = args[0] if args else ""
if key in ("container", "image") and len(args) > 1:
    key = key + " " + args[1]
if key == "cp":  # cp in (tar on stdin), cp probe (a file to stdout), cp out (to a directory)
    key = "cp in" if args[1] == "-" else "cp probe" if args[2] == "-" else "cp out"
    if key == "cp in":
        with open(os.path.join(STATE, "copied-in.tar"), "wb") as handle:
            handle.write(sys.stdin.buffer.read())
    if key == "cp out":
        for name, text in config.get("work", {{}}).items():
            with open(os.path.join(args[2], name), "w") as handle:
                handle.write(text)
if key == "exec":
    i = 1
    while i < len(args) and args[i].startswith("--"):
        i += 2 if args[i] in ("--workdir", "--user", "--env") else 1
    if i + 1 < len(args) and "exec:" + args[i + 1] in config["answers"]:
        key = "exec:" + args[i + 1]
# One write() on an O_APPEND file: calls made at the same time (version while build
# runs) never interleave their lines.
record = {{"key": key, "argv": args, "env": dict(os.environ), "record": snapshot}}
log = os.open(os.path.join(STATE, "calls.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
os.write(log, (json.dumps(record) + "\\n").encode())
os.close(log)
answer = config["answers"].get(key, {{}})
if answer.get("hang"):
    import time
    time.sleep(60)
sys.stdout.write(answer.get("stdout", ""))
sys.stderr.write(answer.get("stderr", ""))
sys.exit(answer.get("exit", 0))
"""


@dataclass
class Call:
    key: str
    argv: list[str]
    env: dict[str, str]
    record: dict[str, Any] | None


@dataclass
class FakeDocker:
    """A `docker` shim on $QUIRE_DOCKER that records calls and answers per subcommand.

    Keys are the subcommand (`version`, `build`, `run`, `create`, `start`, `exec`,
    `rm`, `ps`, `container inspect`, `image rm`), `cp in` / `cp probe` / `cp out`,
    or `exec:<program>` for one program. `cp in` keeps the tar it was given
    (`copied_in()`); `cp out` writes the files of `work` into its destination.
    """

    state: Path
    path: Path
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    watch: Path | None = None
    work: dict[str, str] = field(default_factory=dict)

    def answer(
        self, key: str, *, stdout: str = "", stderr: str = "", exit: int = 0, hang: bool = False
    ) -> None:
        """What calls of `key` print and exit with (`hang`: after a minute's sleep)."""
        self.answers[key] = {"stdout": stdout, "stderr": stderr, "exit": exit, "hang": hang}
        self._save()

    def watch_record(self, path: Path) -> None:
        """Snapshot this file (container.yml) in every call's record."""
        self.watch = path
        self._save()

    def container_work(self, files: dict[str, str]) -> None:
        """What `cp out` finds in the container's /work."""
        self.work = files
        self._save()

    def copied_in(self) -> dict[str, bytes]:
        """The regular files of the tar `cp in` was given, by member name."""
        with tarfile.open(self.state / "copied-in.tar") as archive:
            return {
                member.name: archive.extractfile(member).read()  # type: ignore[union-attr]
                for member in archive.getmembers()
                if member.isfile()
            }

    def copied_in_links(self) -> dict[str, str]:
        """The symlinks of the tar `cp in` was given: member name -> target."""
        with tarfile.open(self.state / "copied-in.tar") as archive:
            return {m.name: m.linkname for m in archive.getmembers() if m.issym()}

    def _save(self) -> None:
        config = {
            "answers": self.answers,
            "watch": None if self.watch is None else str(self.watch),
            "work": self.work,
        }
        (self.state / "answers.json").write_text(json.dumps(config))

    def calls(self) -> list[Call]:
        log = self.state / "calls.jsonl"
        if not log.exists():
            return []
        calls = []
        for line in log.read_text().splitlines():
            raw = json.loads(line)
            snapshot = None if raw["record"] is None else yaml.safe_load(raw["record"])
            calls.append(Call(raw["key"], raw["argv"], raw["env"], snapshot))
        return calls

    def subcommands(self) -> list[str]:
        return [call.key for call in self.calls()]

    def argvs(self, key: str) -> list[list[str]]:
        return [[str(self.path), *c.argv] for c in self.calls() if c.key.split(":")[0] == key]


@pytest.fixture
def fake_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeDocker:
    state = tmp_path / "fake-docker"
    state.mkdir()
    shim = state / "bin" / "docker"
    shim.parent.mkdir()
    # A sh launcher, not a `#!python` line: a shebang cannot hold a path with
    # spaces (the venv of a checkout in "my projects/" has one).
    script = state / "fake_docker.py"
    script.write_text(SHIM.format(state=str(state)))
    shim.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {shlex.quote(str(script))} "$@"\n'
    )
    shim.chmod(0o755)
    fake = FakeDocker(state, shim)
    # An engine whose bind mounts quire checks with a marker (see test_docker_workspace.py).
    fake.answer("version", stdout=PODMAN_SERVICE_SERVER)
    fake.answer("build", stdout="Step 1/1 : FROM base\nSuccessfully built 5bfcee739c51\n")
    fake.answer("run", stdout=CID + "\n")
    fake.answer("container inspect", stdout=RUNNING + "\n")
    fake.answer("rm", stdout=CID + "\n")
    fake.answer("image rm", stdout="Untagged: whatever\n")
    monkeypatch.setenv("QUIRE_DOCKER", str(shim))
    return fake


@dataclass
class Setup:
    run_dir: RunDir
    workspace: Path
    log_path: Path
    seen: HelperCollected = field(default_factory=HelperCollected)

    @property
    def container_yml(self) -> Path:
        return self.run_dir.path / "container.yml"

    def record(self) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load(self.container_yml.read_text())
        return data

    def run_events(self) -> list[dict[str, Any]]:
        return list(LogReader(self.log_path))


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    """A run in its store and a workspace with a .quire/Dockerfile."""
    store = RunStore("example", root=tmp_path / "state" / "example", cache=tmp_path / "cache")

    def meta(run_id: str) -> RunMeta:
        return RunMeta(
            run_id=run_id,
            repo="example",
            git_dir=str(tmp_path / "repo" / ".git"),
            revision="HEAD",
            sha="0" * 40,
            pushed_at=utcnow(),
            executor=ExecutorKind.docker,
        )

    run_dir = store.create(meta)
    workspace = run_dir.workspace
    (workspace / ".quire").mkdir(parents=True)
    (workspace / ".quire" / "Dockerfile").write_text("FROM base\n")
    return Setup(run_dir, workspace, run_dir.path / "log.jsonl")


@pytest.fixture
def executor_for(setup: Setup) -> Iterator[Callable[..., DockerExecutor]]:
    """DockerExecutors on the run's own outlet (its logs and records), as a run makes them."""
    outlets: list[RunOutlet] = []

    def make(
        settings: DockerSettings | None = None, *, keep_workspace: bool = False
    ) -> DockerExecutor:
        outlet = outlet_for(setup.run_dir, Redactor(), [setup.seen])
        outlets.append(outlet)
        return DockerExecutor(
            ExecutorSetup(
                kind=ExecutorKind.docker,
                workspace=setup.workspace,
                run_id=setup.run_dir.run_id,
                repo=setup.run_dir.store.repo,
                store_label=setup.run_dir.store.label,
                docker=settings or DockerSettings(),
                outlet=outlet,
                keep_workspace=keep_workspace,
                host="builder-7",
            )
        )

    yield make
    for outlet in outlets:
        outlet.close()


class Collected:
    def __init__(self) -> None:
        self.chunks: list[tuple[str, bytes]] = []

    def __call__(self, stream: str, chunk: bytes) -> None:
        self.chunks.append((stream, chunk))

    def data(self, stream: str) -> bytes:
        return b"".join(chunk for name, chunk in self.chunks if name == stream)


# --- wrappers, through pytest-subprocess ---------------------------------------------------------


def test_engine_raises_docker_unavailable_with_dockers_words(fp: FakeProcess) -> None:
    fp.register(
        [fp.program("docker"), "version", "--format", "{{json .Server}}"],
        stderr="Cannot connect to the Docker daemon at unix:///x.sock. Is it running?\n",
        returncode=1,
    )
    with pytest.raises(DockerUnavailable) as caught:
        docker.engine()
    assert "docker is unavailable" in str(caught.value)
    assert "Cannot connect to the Docker daemon at unix:///x.sock" in str(caught.value)
    assert caught.value.exit_code == 3


def test_engine_asks_docker_version_once_and_parses_its_answer(fp: FakeProcess) -> None:
    fp.register([fp.program("docker"), "version", fp.any()], stdout=MOBY_SERVER)
    assert docker.engine() == docker.Engine("docker", "20.10.24+dfsg1")
    assert fp.call_count([fp.program("docker"), "version", fp.any()]) == 1


@pytest.mark.parametrize("binary", ["/nonexistent/bin/docker", "no-such-docker-cli-xyz"])
def test_a_docker_binary_that_cannot_be_found_is_docker_unavailable(
    binary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUIRE_DOCKER", binary)
    with pytest.raises(DockerUnavailable) as caught:
        docker.engine()
    assert "docker is unavailable" in str(caught.value)


def test_an_engine_probe_without_a_docker_binary_tells_so_when_its_answer_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUIRE_DOCKER", "no-such-docker-cli-xyz")
    probe = docker.EngineProbe()  # started in the background: nothing to say yet
    assert isinstance(probe.unavailable(), DockerUnavailable)
    with pytest.raises(DockerUnavailable, match="not installed or not on PATH"):
        probe.result()
    probe.cancel()


def test_run_detached_returns_the_container_id_docker_prints(fp: FakeProcess) -> None:
    fp.register([fp.program("docker"), "run", fp.any()], stdout=f"{CID}\n")
    container = docker.run_detached(
        "img", mount_source=Path("/ws"), labels={"quire.run-id": "1"}, ceiling_s=60
    )
    assert container == CID


def test_run_detached_raises_container_start_failed_with_stderr(fp: FakeProcess) -> None:
    fp.register(
        [fp.program("docker"), "run", fp.any()],
        stderr='docker: Error response from daemon: exec: "sleep": executable file not found\n',
        returncode=127,
    )
    with pytest.raises(ContainerStartFailed) as caught:
        docker.run_detached("img", mount_source=Path("/ws"), labels={}, ceiling_s=60)
    assert 'exec: "sleep": executable file not found' in str(caught.value)
    assert "exit 127" in str(caught.value)
    assert caught.value.exit_code == 3


def test_inspect_state_reads_the_json_state(fp: FakeProcess) -> None:
    fp.register(
        [fp.program("docker"), "container", "inspect", fp.any()],
        stdout='{"Running":false,"Status":"exited","ExitCode":137,"OOMKilled":true}\n',
    )
    assert docker.inspect_state(CID) == docker.ContainerState(
        running=False, status="exited", exit_code=137, oom_killed=True
    )


def test_inspect_state_is_none_for_a_container_that_is_gone(fp: FakeProcess) -> None:
    fp.register(
        [fp.program("docker"), "container", "inspect", fp.any()],
        stderr=f"Error: No such container: {CID}\n",
        returncode=1,
    )
    assert docker.inspect_state(CID) is None


def test_inspect_state_raises_docker_unavailable_when_the_daemon_is_gone(
    fp: FakeProcess,
) -> None:
    fp.register(
        [fp.program("docker"), "container", "inspect", fp.any()],
        stderr="Cannot connect to the Docker daemon at unix:///var/run/docker.sock.\n",
        returncode=1,
    )
    with pytest.raises(DockerUnavailable):
        docker.inspect_state(CID)


def test_teardown_removes_the_container_and_untags_the_image(fp: FakeProcess) -> None:
    fp.register([fp.program("docker"), "rm", "--force", CID], stdout=f"{CID}\n")
    fp.register([fp.program("docker"), "image", "rm", "--no-prune", "quire-ci/x:1"])
    assert docker.teardown(CID, "quire-ci/x:1") == []
    assert fp.call_count([fp.program("docker"), "rm", "--force", CID]) == 1
    assert fp.call_count([fp.program("docker"), "image", "rm", "--no-prune", "quire-ci/x:1"]) == 1


def test_teardown_accepts_a_container_that_is_already_gone(fp: FakeProcess) -> None:
    fp.register(
        [fp.program("docker"), "rm", "--force", CID],
        stderr=f"Error: No such container: {CID}\n",
        returncode=1,
    )
    assert docker.teardown(CID, None) == []


def test_teardown_reports_other_failures_as_problems(fp: FakeProcess) -> None:
    fp.register(
        [fp.program("docker"), "rm", "--force", CID],
        stderr="Error response from daemon: permission denied\n",
        returncode=1,
    )
    problems = docker.teardown(CID, None)
    assert len(problems) == 1
    assert "rm --force" in problems[0]
    assert "permission denied" in problems[0]


def labels_json(run_id: str, *, store: str = "/state", host: str = "h1", repo: str = "ex") -> str:
    return json.dumps(
        {"quire.run-id": run_id, "quire.store": store, "quire.host": host, "quire.repo": repo}
    )


def test_labelled_containers_lists_ids_then_reads_their_labels(fp: FakeProcess) -> None:
    other = "ab" * 32
    fp.register(docker.list_argv("/state", "h1"), stdout=f"{CID}\n{other}\n")
    fp.register(
        [*docker.labels_argv([CID, other])],
        stdout=f"{CID}\t{labels_json('20260504-1')}\n{other}\t{labels_json('20260504-2')}\n",
    )
    assert docker.labelled_containers("/state", "h1") == [
        docker.LabelledContainer(CID, "20260504-1", "ex"),
        docker.LabelledContainer(other, "20260504-2", "ex"),
    ]


def test_a_container_listing_is_read_once_and_kept(fp: FakeProcess) -> None:
    fp.register(docker.list_argv("/state", "h1"), stdout=f"{CID}\n")
    fp.register([*docker.labels_argv([CID])], stdout=f"{CID}\t{labels_json('20260504-1')}\n")
    listing = docker.ContainerListing("/state", "h1")
    first = listing.result()
    assert listing.result() == first == [docker.LabelledContainer(CID, "20260504-1", "ex")]
    assert fp.call_count(docker.list_argv("/state", "h1")) == 1


def test_a_container_listing_says_docker_is_unavailable_each_time_it_is_read(
    fp: FakeProcess,
) -> None:
    fp.register(docker.list_argv("/state", "h1"), stderr="Cannot connect\n", returncode=1)
    listing = docker.ContainerListing("/state", "h1")
    for _ in range(2):
        with pytest.raises(DockerUnavailable, match="Cannot connect"):
            listing.result()


def test_labelled_containers_without_any_listed_never_inspects(fp: FakeProcess) -> None:
    fp.register(docker.list_argv("/state", "h1", "r1"), stdout="")
    assert docker.labelled_containers("/state", "h1", "r1") == []
    assert fp.call_count([fp.program("docker"), "container", fp.any()]) == 0


@pytest.mark.parametrize(
    "line",
    [
        f"{CID}\t{labels_json('r1', host='other-host')}",  # an engine that ignored the filter
        f"{CID}\t{labels_json('r1', store='/elsewhere')}",
        f"{CID}\t{json.dumps({'quire.store': '/state', 'quire.host': 'h1'})}",  # no run id
        f"{CID}\tnull",  # no labels at all
        f"{CID}\t<no value>",  # docker's rendering of a missing key
        "garbage",
    ],
)
def test_labelled_containers_ignores_lines_not_of_this_store_and_host(
    fp: FakeProcess, line: str
) -> None:
    fp.register(docker.list_argv("/state", "h1"), stdout=f"{CID}\n")
    fp.register(docker.labels_argv([CID]), stdout=line + "\n")
    assert docker.labelled_containers("/state", "h1") == []


def test_labelled_containers_keeps_the_others_when_one_went_in_between(fp: FakeProcess) -> None:
    gone = "ab" * 32
    fp.register(docker.list_argv("/state", "h1"), stdout=f"{gone}\n{CID}\n")
    fp.register(
        docker.labels_argv([gone, CID]),
        stdout=f"{CID}\t{labels_json('r2')}\n",
        stderr=f"Error: No such container: {gone}\n",
        returncode=1,
    )
    assert docker.labelled_containers("/state", "h1") == [docker.LabelledContainer(CID, "r2", "ex")]


def test_labelled_containers_raises_docker_unavailable_when_ps_fails(fp: FakeProcess) -> None:
    fp.register(
        docker.list_argv("/state", "h1"),
        stderr="Cannot connect to the Docker daemon at unix:///x.sock\n",
        returncode=1,
    )
    with pytest.raises(DockerUnavailable, match="Cannot connect"):
        docker.labelled_containers("/state", "h1")


# --- the executor, against the shim --------------------------------------------------------------


def test_session_builds_starts_and_execs_with_the_exact_argv(
    fake_docker: FakeDocker, setup: Setup, executor_for: Callable[..., DockerExecutor]
) -> None:
    ws = setup.workspace
    run_id = setup.run_dir.run_id
    with executor_for() as ex:
        result = ex.execute(Command.from_user(["make", "test"]), Collected())
    assert result.exit == 0
    tag = f"quire-ci/example:{run_id}"
    assert fake_docker.argvs("build") == [
        docker.build_argv(ws / ".quire" / "Dockerfile", ws, [tag, "quire-ci/example:latest"])
    ]
    (run,) = fake_docker.argvs("run")
    assert run[run.index("--mount") + 1] == f"type=bind,src={ws},dst=/work"
    assert f"quire.run-id={run_id}" in run
    assert "quire.repo=example" in run
    assert run[-3:] == [tag, "sleep", str(DockerSettings().ceiling)]
    assert [
        str(fake_docker.path),
        "exec",
        "--interactive",
        "--workdir",
        "/work",
        CID,
        "make",
        "test",
    ] in fake_docker.argvs("exec")


def test_session_passes_the_configured_limits_to_docker_run(
    fake_docker: FakeDocker, setup: Setup, executor_for: Callable[..., DockerExecutor]
) -> None:
    settings = DockerSettings(cpus=2, memory="1g", network=False, labels={"team": "ci"}, ceiling=90)
    with executor_for(settings):
        pass
    (run,) = fake_docker.argvs("run")
    assert run[run.index("--cpus") + 1] == "2"
    assert run[run.index("--memory") + 1] == "1g"
    assert run[run.index("--network") + 1] == "none"
    assert "team=ci" in run
    assert run[-2:] == ["sleep", "90"]


DAEMON_DOWN = {"stderr": "Cannot connect to the Docker daemon. Is it running?\n", "exit": 1}


def test_docker_unavailable_is_said_as_such_not_as_a_failed_build_and_tears_nothing_down(
    fake_docker: FakeDocker, setup: Setup, executor_for: Callable[..., DockerExecutor]
) -> None:
    # `docker version` runs while the image builds; a daemon that is down fails both.
    fake_docker.answer("version", **DAEMON_DOWN)
    fake_docker.answer("build", **DAEMON_DOWN)
    with pytest.raises(DockerUnavailable) as caught, executor_for():
        pytest.fail("the with-block must not be entered")
    assert caught.value.exit_code == 3
    assert "docker is unavailable (`" in str(caught.value)
    assert "Cannot connect to the Docker daemon" in str(caught.value)
    assert sorted(fake_docker.subcommands()) == ["build", "version"]  # nothing to tear down
    ends = [e for e in setup.run_events() if e["event"] == "image-build-end"]
    assert ends and ends[0]["ok"] is False
    assert "docker is unavailable" in ends[0]["error"]


def test_an_engine_that_answers_no_version_after_a_good_build_is_unavailable_and_untagged(
    fake_docker: FakeDocker, setup: Setup, executor_for: Callable[..., DockerExecutor]
) -> None:
    fake_docker.answer("version", **DAEMON_DOWN)
    with pytest.raises(DockerUnavailable), executor_for():
        pytest.fail("the with-block must not be entered")
    keys = fake_docker.subcommands()
    assert "run" not in keys and "rm" not in keys
    assert fake_docker.argvs("image rm") == [
        docker.untag_argv(f"quire-ci/example:{setup.run_dir.run_id}")
    ]


def test_missing_dockerfile_raises_dockerfile_missing_naming_it(
    fake_docker: FakeDocker, setup: Setup, executor_for: Callable[..., DockerExecutor]
) -> None:
    (setup.workspace / ".quire" / "Dockerfile").unlink()
    with pytest.raises(DockerfileMissing) as caught, executor_for():
        pytest.fail("the with-block must not be entered")
    assert ".quire/Dockerfile" in str(caught.value)
    assert caught.value.exit_code == 3
    assert fake_docker.subcommands() == []  # found out before docker is asked anything


def test_failed_build_raises_image_build_failed_with_dockers_stderr_tail(
    fake_docker: FakeDocker, setup: Setup, executor_for: Callable[..., DockerExecutor]
) -> None:
    fake_docker.answer(
        "build",
        stdout="Step 1/2 : FROM base\nStep 2/2 : RUN exit 3\n",
        stderr="The command '/bin/sh -c exit 3' returned a non-zero code: 3\n",
        exit=1,
    )
    with pytest.raises(ImageBuildFailed) as caught, executor_for():
        pytest.fail("the with-block must not be entered")
    assert "The command '/bin/sh -c exit 3' returned a non-zero code: 3" in str(caught.value)
    assert caught.value.exit_code == 3
    # No container, and a failed build tagged nothing: nothing to tear down.
    assert sorted(fake_docker.subcommands()) == ["build", "version"]
    record = setup.record()
    assert record["image_tag"] == f"quire-ci/example:{setup.run_dir.run_id}"
    assert record["build_started_at"] is not None
    for absent in ("build_finished_at", "container_id", "container_started_at"):
        assert record.get(absent) is None, absent
    assert record.get("container_stopped_at") is None
    ends = [e for e in setup.run_events() if e["event"] == "image-build-end"]
    assert ends and ends[0]["ok"] is False


def test_failed_container_start_raises_container_start_failed_and_untags_the_image(
    fake_docker: FakeDocker, setup: Setup, executor_for: Callable[..., DockerExecutor]
) -> None:
    fake_docker.answer(
        "run", stderr="docker: Error response from daemon: no space left\n", exit=125
    )
    with pytest.raises(ContainerStartFailed) as caught, executor_for():
        pytest.fail("the with-block must not be entered")
    assert "no space left" in str(caught.value)
    assert caught.value.exit_code == 3
    assert "rm" not in fake_docker.subcommands()
    assert fake_docker.argvs("image rm") == [
        docker.untag_argv(f"quire-ci/example:{setup.run_dir.run_id}")
    ]
    record = setup.record()
    assert record["build_finished_at"] is not None
    assert record.get("container_id") is None


def test_container_yml_grows_phase_by_phase(
    fake_docker: FakeDocker, setup: Setup, executor_for: Callable[..., DockerExecutor]
) -> None:
    fake_docker.watch_record(setup.container_yml)
    with executor_for() as ex:
        ex.execute(Command.from_user("true"), Collected())
    seen = {call.key: call.record for call in fake_docker.calls()}
    assert seen["build"] is not None
    assert seen["build"]["build_started_at"] is not None
    assert seen["build"]["build_finished_at"] is None
    assert seen["run"] is not None
    assert seen["run"]["build_finished_at"] is not None
    assert seen["run"]["container_id"] is None
    assert seen["exec"] is not None
    assert seen["exec"]["container_id"] == CID
    assert seen["exec"]["container_started_at"] is not None
    assert seen["exec"]["container_stopped_at"] is None
    # Teardown stamps the stop before it removes the container.
    assert seen["rm"] is not None
    assert seen["rm"]["container_stopped_at"] is not None
    final = setup.record()
    assert final == seen["rm"]
    assert set(final) == {
        "image_tag",
        "container_id",
        "build_started_at",
        "build_finished_at",
        "container_started_at",
        "container_stopped_at",
    }
    assert all(value is not None for value in final.values())


def test_teardown_removes_the_container_and_untags_after_a_normal_exit(
    fake_docker: FakeDocker, setup: Setup, executor_for: Callable[..., DockerExecutor]
) -> None:
    with executor_for():
        assert "rm" not in fake_docker.subcommands()
    assert fake_docker.argvs("rm") == [docker.remove_argv(CID)]
    assert fake_docker.argvs("image rm") == [
        docker.untag_argv(f"quire-ci/example:{setup.run_dir.run_id}")
    ]
    assert "container-end" in [e["event"] for e in setup.run_events()]


def test_teardown_removes_the_container_when_the_block_raises(
    fake_docker: FakeDocker, executor_for: Callable[..., DockerExecutor]
) -> None:
    with pytest.raises(RuntimeError, match="job blew up"), executor_for():
        raise RuntimeError("job blew up")
    assert fake_docker.argvs("rm") == [docker.remove_argv(CID)]


def test_teardown_removes_the_container_on_keyboard_interrupt(
    fake_docker: FakeDocker, executor_for: Callable[..., DockerExecutor]
) -> None:
    with pytest.raises(KeyboardInterrupt), executor_for():
        raise KeyboardInterrupt
    assert fake_docker.argvs("rm") == [docker.remove_argv(CID)]


def test_exec_output_streams_separately_and_exit_propagates(
    fake_docker: FakeDocker, executor_for: Callable[..., DockerExecutor]
) -> None:
    fake_docker.answer("exec", stdout="to stdout\n", stderr="to stderr\n", exit=5)
    out = Collected()
    with executor_for() as ex:
        result = ex.execute(Command.from_user("echo hi"), out)
    assert result.exit == 5
    assert out.data("stdout") == b"to stdout\n"
    assert out.data("stderr") == b"to stderr\n"
    # A non-zero exit asks whether the container is still there; it is.
    assert "container inspect" in fake_docker.subcommands()


def test_exec_of_a_missing_program_is_a_failed_command_not_a_crash(
    fake_docker: FakeDocker, executor_for: Callable[..., DockerExecutor]
) -> None:
    fake_docker.answer(
        "exec:no-such-program",
        stderr='OCI runtime exec failed: exec: "no-such-program": executable file not found\n',
        exit=126,
    )
    out = Collected()
    with executor_for() as ex:
        result = ex.execute(Command.from_user(["no-such-program"]), out)
    assert result.exit == 126
    assert b"executable file not found" in out.data("stderr")
    assert fake_docker.argvs("rm") == [docker.remove_argv(CID)]


def test_exec_in_a_dead_container_raises_container_died_and_still_tears_down(
    fake_docker: FakeDocker, setup: Setup, executor_for: Callable[..., DockerExecutor]
) -> None:
    fake_docker.answer("exec", stderr="Error: container is not running\n", exit=126)
    fake_docker.answer(
        "container inspect",
        stdout='{"Running":false,"Status":"exited","ExitCode":137,"OOMKilled":true}\n',
    )
    with pytest.raises(ContainerDied) as caught, executor_for() as ex:
        ex.execute(Command.from_user("true"), Collected())
    assert "out of memory" in str(caught.value)
    assert fake_docker.argvs("rm") == [docker.remove_argv(CID)]
    died = [e for e in setup.run_events() if e["event"] == "container-died"]
    assert died and died[0]["exit_code"] == 137 and died[0]["oom_killed"] is True


def test_env_values_travel_in_the_docker_clients_environment_never_in_argv(
    fake_docker: FakeDocker, executor_for: Callable[..., DockerExecutor]
) -> None:
    env = {"TOKEN": "s3cret value", "OTHER": "x=y"}
    with executor_for() as ex:
        ex.execute(Command.from_user(["printenv", "TOKEN"], env), Collected())
    (call,) = [c for c in fake_docker.calls() if c.key == "exec"]
    assert call.argv == [
        "exec",
        "--interactive",
        "--workdir",
        "/work",
        "--env",
        "OTHER",
        "--env",
        "TOKEN",
        CID,
        "printenv",
        "TOKEN",
    ]
    assert call.env["TOKEN"] == "s3cret value"
    assert call.env["OTHER"] == "x=y"
    # The rest of the environment (PATH, DOCKER_HOST...) is kept for the client.
    assert "PATH" in call.env
    for any_call in fake_docker.calls():
        assert not any("s3cret" in part for part in any_call.argv), any_call.argv


def test_unwritable_container_yml_does_not_fail_the_session_or_skip_teardown(
    fake_docker: FakeDocker, setup: Setup, executor_for: Callable[..., DockerExecutor]
) -> None:
    setup.container_yml.mkdir()  # os.replace onto a directory fails
    with executor_for() as ex:
        result = ex.execute(Command.from_user("true"), Collected())
    assert result.exit == 0
    assert fake_docker.argvs("rm") == [docker.remove_argv(CID)]
    warned = [e["text"] for e in setup.run_events() if e["event"] == "warning"]
    assert warned and "could not write container.yml" in warned[0]


def break_container_yml(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing container.yml fails as on a full disk; the other records are written."""
    real = recorder.write_record

    def broken(path: Path, record: BaseModel, *, durable: bool = True) -> None:
        if path.name == "container.yml":
            raise OSError(28, "No space left on device")
        real(path, record, durable=durable)

    monkeypatch.setattr(recorder, "write_record", broken)


def test_write_record_raising_oserror_does_not_fail_the_session_or_skip_teardown(
    fake_docker: FakeDocker,
    executor_for: Callable[..., DockerExecutor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    break_container_yml(monkeypatch)
    with executor_for() as ex:
        assert ex.execute(Command.from_user("true"), Collected()).exit == 0
    assert fake_docker.argvs("rm") == [docker.remove_argv(CID)]


# --- the whole `quire ci run --executor docker`, through typer's CliRunner -----------------------

cli = CliRunner()

ONE_JOB = """
from quire.ci import job

@job(inputs=["quire/push"])
def build(rt):
    rt.sh(["make"], check=True)
"""


def run_cli(repo: Path) -> tuple[int, str, str]:
    result = cli.invoke(app, ["ci", "run", "--executor", "docker", "--repo", str(repo)])
    return result.exit_code, result.stdout, result.stderr


def docker_repo(tmp_path: Path, ci: str = ONE_JOB, *, dockerfile: bool = True) -> Path:
    files = {".quire/ci.py": ci}
    if dockerfile:
        files[".quire/Dockerfile"] = "FROM base\n"
    make_repo(tmp_path / "proj", files)
    return tmp_path / "proj"


def test_a_docker_run_lists_containers_once_before_it_builds(
    fake_docker: FakeDocker, tmp_path: Path
) -> None:
    # The `ps` of the start-of-run reconcile runs while the pipeline loads.
    code, out, err = run_cli(docker_repo(tmp_path))
    assert code == 0, out + err
    keys = fake_docker.subcommands()
    assert keys.count("ps") == 1
    assert keys.index("ps") < keys.index("build")


def test_a_docker_run_of_an_invalid_pipeline_leaves_no_docker_call_behind(
    fake_docker: FakeDocker, tmp_path: Path
) -> None:
    fake_docker.answer("ps", hang=True)  # still running when the run gives up
    code, _, err = run_cli(docker_repo(tmp_path, "from quire.ci import job\n\ndef broken(:\n"))
    assert code == 2, err
    assert "build" not in fake_docker.subcommands()
    left = psutil.Process().children(recursive=True)
    for child in left:
        child.kill()
    assert not left  # the early `ps` was killed and reaped


@pytest.mark.parametrize(
    ("answers", "message", "untagged"),
    [
        ({"version": DAEMON_DOWN, "build": DAEMON_DOWN}, "docker is unavailable", False),
        (
            {"build": {"stderr": "unknown instruction: FRUM\n", "exit": 1}},
            "unknown instruction: FRUM",
            False,
        ),
        (
            {"run": {"stderr": "Error response from daemon: bad mount\n", "exit": 125}},
            "bad mount",
            True,
        ),
    ],
    ids=["daemon-down", "build-fails", "run-fails"],
)
def test_cli_exits_3_with_the_error_for_each_setup_failure(
    fake_docker: FakeDocker,
    tmp_path: Path,
    answers: dict[str, dict[str, Any]],
    message: str,
    untagged: bool,
) -> None:
    for key, answer in answers.items():
        fake_docker.answer(key, **answer)
    code, out, err = run_cli(docker_repo(tmp_path))
    assert code == 3
    assert message in err
    assert "Traceback" not in out + err
    assert "exec" not in fake_docker.subcommands()
    assert "rm" not in fake_docker.subcommands()  # no container was ever started
    assert ("image rm" in fake_docker.subcommands()) is untagged
    (run,) = store_for(tmp_path / "proj").runs()
    assert run.state.value == "failed"
    result = run.result()
    assert result is not None and result.exit_code == 3


def test_cli_exits_3_naming_dot_quire_dockerfile_when_it_is_missing(
    fake_docker: FakeDocker, tmp_path: Path
) -> None:
    code, _, err = run_cli(docker_repo(tmp_path, dockerfile=False))
    assert code == 3
    assert "error:" in err
    assert ".quire/Dockerfile" in err
    assert "build" not in fake_docker.subcommands()


def test_cli_exits_1_when_a_job_execs_a_missing_program_and_removes_the_container(
    fake_docker: FakeDocker, tmp_path: Path
) -> None:
    fake_docker.answer(
        "exec:make", stderr='exec: "make": executable file not found in $PATH\n', exit=126
    )
    code, out, _ = run_cli(docker_repo(tmp_path))
    assert code == 1
    assert "build  failed" in out
    assert fake_docker.argvs("rm") == [docker.remove_argv(CID)]


def test_cli_exits_0_and_removes_the_container_after_a_passing_job(
    fake_docker: FakeDocker, tmp_path: Path
) -> None:
    code, _, err = run_cli(docker_repo(tmp_path))
    assert code == 0, err
    assert fake_docker.argvs("rm") == [docker.remove_argv(CID)]
    assert fake_docker.subcommands().count("run") == 1


ENV_JOB = """
from quire.ci import job

@job(inputs=["quire/push"])
def env(rt):
    rt.sh(["printenv", "TOKEN"], env={"TOKEN": "s3cret value"}, check=True)
    rt.sh("echo $TOKEN", env={"TOKEN": "s3cret value"}, check=True)
"""


def test_cli_env_values_never_reach_any_docker_argv(
    fake_docker: FakeDocker, tmp_path: Path
) -> None:
    code, _, err = run_cli(docker_repo(tmp_path, ENV_JOB))
    assert code == 0, err
    execs = [c for c in fake_docker.calls() if c.key == "exec"]
    assert len(execs) == 2
    for call in execs:
        names = [call.argv[i + 1] for i, part in enumerate(call.argv) if part == "--env"]
        assert "TOKEN" in names and "QUIRE_RUN_ID" in names  # by name: values stay out
        assert all("=" not in name for name in names)
        assert call.env["TOKEN"] == "s3cret value"
    for call in fake_docker.calls():
        assert not any("s3cret" in part for part in call.argv), call.argv


def test_cli_run_completes_when_container_yml_cannot_be_written(
    fake_docker: FakeDocker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    break_container_yml(monkeypatch)
    code, out, err = run_cli(docker_repo(tmp_path))
    assert code == 0, err
    assert "could not write container.yml" in out + err
    assert fake_docker.argvs("rm") == [docker.remove_argv(CID)]


def test_teardown_as_an_unprivileged_user_gives_work_back_before_removing(
    fake_docker: FakeDocker,
    executor_for: Callable[..., DockerExecutor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(docker_executor.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(docker_executor.os, "getegid", lambda: 1001)
    with executor_for():
        pass
    chown = docker.exec_argv(CID, ["chown", "-R", "1000:1001", "/work"], user="0")
    assert fake_docker.argvs("exec") == [chown]
    keys = fake_docker.subcommands()
    assert keys.index("exec") < keys.index("rm")


def test_teardown_removes_the_container_even_when_giving_work_back_fails(
    fake_docker: FakeDocker,
    setup: Setup,
    executor_for: Callable[..., DockerExecutor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(docker_executor.os, "geteuid", lambda: 1000)
    fake_docker.answer("exec:chown", stderr="chown: /work/x: Operation not permitted\n", exit=1)
    with executor_for():
        pass
    assert fake_docker.argvs("rm") == [docker.remove_argv(CID)]
    problems = [e["text"] for e in setup.run_events() if e["event"] == "warning"]
    assert problems and "Operation not permitted" in problems[0]


LEAKY_OUTPUTS = """
from quire.ci import job

@job(inputs=["quire/push"])
def publish(rt):
    out = rt.sh(["sh", "-c", "echo token=$TOKEN"], env={"TOKEN": rt.secret("token")})
    return {"seen": out.stdout}
"""


def test_a_secret_in_a_jobs_outputs_never_reaches_its_state_record(
    fake_docker: FakeDocker, tmp_path: Path, isolated_dirs: Path
) -> None:
    isolated_dirs.mkdir(parents=True, exist_ok=True)
    (isolated_dirs / "config.toml").write_text('[secrets]\ntoken = "hunter2 and more"\n')
    fake_docker.answer("exec", stdout="token=hunter2 and more\n")
    code, out, err = run_cli(docker_repo(tmp_path, LEAKY_OUTPUTS))
    assert code == 0, err
    assert "hunter2" not in out + err
    (run,) = store_for(tmp_path / "proj").runs()
    state = (run.path / "jobs" / "publish" / "state.yml").read_text()
    assert "hunter2" not in state


SANDBOX_PROBE = """
import os
from quire.ci import job

@job(inputs=["quire/push"])
def probe(rt):
    print("uid", os.getuid(), "etc", os.path.exists("/etc"), "state", os.path.exists(STATE))
"""


@pytest.mark.sandboxed
def test_a_docker_runs_pipeline_runs_in_the_sandbox(
    fake_docker: FakeDocker, tmp_path: Path
) -> None:
    from quire.errors import SandboxUnavailable
    from quire.paths import state_dir
    from quire.tools import sandbox

    try:
        sandbox.check_available()
    except SandboxUnavailable as exc:
        if os.environ.get("QUIRE_REQUIRE_SANDBOX") == "1":
            pytest.fail(f"QUIRE_REQUIRE_SANDBOX=1 but {exc}")
        pytest.skip(f"no working bubblewrap here: {exc}")
    ci = SANDBOX_PROBE.replace("STATE", repr(str(state_dir())))
    code, out, err = run_cli(docker_repo(tmp_path, ci))
    assert code == 0, out + err
    assert "uid 65534 etc False state False" in out


SHOWN_RUNNING = docker.ContainerState(running=True, status="running", exit_code=0, oom_killed=False)
SHOWN_EXITED = docker.ContainerState(
    running=False, status="exited", exit_code=137, oom_killed=False
)


def inspections(monkeypatch: pytest.MonkeyPatch, *states: docker.ContainerState) -> list[str]:
    """`docker inspect` answers `states` in turn (the last one from then on); returns the calls."""
    calls: list[str] = []

    def inspect(container_id: str) -> docker.ContainerState:
        calls.append(container_id)
        return states[min(len(calls), len(states)) - 1]

    monkeypatch.setattr(docker, "inspect_state", inspect)
    return calls


def test_a_container_killed_under_its_exec_is_found_dead_though_shown_running_at_first(
    fake_docker: FakeDocker,
    executor_for: Callable[..., DockerExecutor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_docker.answer("exec", exit=137)  # docker kill: the exec ends before the engine knows
    calls = inspections(monkeypatch, SHOWN_RUNNING, SHOWN_RUNNING, SHOWN_EXITED)
    with pytest.raises(ContainerDied) as caught, executor_for() as ex:
        ex.execute(Command.from_user(["sleep", "60"]), Collected())
    assert "status exited, exit code 137" in str(caught.value)
    assert len(calls) == 3


def test_a_command_killed_in_a_living_container_is_the_commands_failure(
    fake_docker: FakeDocker,
    executor_for: Callable[..., DockerExecutor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(docker_executor, "SETTLE_S", 0.2)
    fake_docker.answer("exec", exit=137)
    calls = inspections(monkeypatch, SHOWN_RUNNING)
    with executor_for() as ex:
        assert ex.execute(Command.from_user(["sleep", "60"]), Collected()).exit == 137
    assert len(calls) > 1  # looked again before blaming the command


def test_a_command_that_fails_is_not_watched_for_its_containers_death(
    fake_docker: FakeDocker,
    executor_for: Callable[..., DockerExecutor],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_docker.answer("exec", exit=1)
    calls = inspections(monkeypatch, SHOWN_RUNNING)
    with executor_for() as ex:
        assert ex.execute(Command.from_user("false"), Collected()).exit == 1
    assert len(calls) == 1
