"""docker, as quire uses it. Nothing else in quire builds a docker argv or spawns docker.

The binary is `$QUIRE_DOCKER` (so `podman` works) or `docker`; DOCKER_HOST
and contexts pass through untouched. argv builders are pure functions;
the wrappers run them through `tools.process` and raise `QuireError`s
carrying docker's stderr tail.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from quire.errors import (
    ContainerStartFailed,
    DockerUnavailable,
    ImageBuildFailed,
    ProgramNotFound,
    ToolFailed,
)
from quire.tools import process
from quire.tools.process import OutputHandler

RUN_ID_LABEL = "quire.run-id"
REPO_LABEL = "quire.repo"
# The run store a container belongs to: reconcile only judges containers of
# its own store (other users, other QUIRE_STATE_DIRs share the engine).
STORE_LABEL = "quire.store"
WORKDIR = "/work"

# Markers docker (and podman) print when the engine itself cannot be reached.
_DAEMON_GONE = (
    "cannot connect to the docker daemon",
    "is the docker daemon running",
    "error during connect",
    "connection refused",
    "no such file or directory",
)


def binary() -> str:
    """The docker CLI to use: `$QUIRE_DOCKER` or `docker`."""
    return os.environ.get("QUIRE_DOCKER") or "docker"


@dataclass(frozen=True)
class Limits:
    """Resource limits and extra labels for `docker run`."""

    cpus: float | None = None
    memory: str | None = None
    network: bool = True
    labels: Mapping[str, str] | None = None


@dataclass(frozen=True)
class ContainerState:
    """What `docker inspect` says of a container's state."""

    running: bool
    status: str
    exit_code: int
    oom_killed: bool


@dataclass(frozen=True)
class LabelledContainer:
    container_id: str
    run_id: str
    repo: str


def image_repository(repo: str) -> str:
    """The image name of a repository's run images: `quire-ci/<repo>`."""
    return f"quire-ci/{repo}"


# --- argv builders (pure) -----------------------------------------------------------------------


def info_argv() -> list[str]:
    return [binary(), "info", "--format", "{{.ServerVersion}}"]


def build_argv(dockerfile: Path, context: Path, tags: Sequence[str]) -> list[str]:
    # --force-rm: the legacy builder otherwise keeps a failed step's container
    # (unlabelled, so nothing would ever remove it); BuildKit accepts and ignores it.
    argv = [binary(), "build", "--force-rm", "--file", str(dockerfile)]
    for tag in tags:
        argv += ["--tag", tag]
    return [*argv, str(context)]


def _mount_field(value: str) -> str:
    # --mount is CSV: a source path with a comma or quote must be quoted.
    if "," in value or '"' in value:
        return '"' + value.replace('"', '""') + '"'
    return value


def run_argv(
    image: str,
    *,
    mount_source: Path,
    labels: Mapping[str, str],
    ceiling_s: int,
    limits: Limits | None = None,
) -> list[str]:
    """`docker run --detach` of a container that only sleeps; commands come by `docker exec`."""
    limits = limits or Limits()
    argv = [binary(), "run", "--detach", "--rm"]
    for key, value in {**(limits.labels or {}), **labels}.items():
        argv += ["--label", f"{key}={value}"]
    argv += [
        "--mount",
        ",".join(["type=bind", _mount_field(f"src={mount_source}"), f"dst={WORKDIR}"]),
        "--workdir",
        WORKDIR,
    ]
    if limits.cpus is not None:
        argv += ["--cpus", f"{limits.cpus:g}"]
    if limits.memory is not None:
        argv += ["--memory", limits.memory]
    if not limits.network:
        argv += ["--network", "none"]
    return [*argv, image, "sleep", str(ceiling_s)]


def exec_argv(
    container_id: str,
    command: Sequence[str],
    *,
    env_names: Sequence[str] = (),
    user: str | None = None,
) -> list[str]:
    """`docker exec` of `command` in /work. Env is passed by NAME only: the values
    travel in the docker client's own environment, never in an argv. Never --tty,
    so stdout and stderr stay apart."""
    argv = [binary(), "exec", "--interactive", "--workdir", WORKDIR]
    if user is not None:
        argv += ["--user", user]
    for name in env_names:
        argv += ["--env", name]
    return [*argv, container_id, *command]


def remove_argv(container_id: str) -> list[str]:
    """Kill and remove at once: `sleep` as PID 1 ignores SIGTERM, so a stop would wait."""
    return [binary(), "rm", "--force", container_id]


def untag_argv(tag: str) -> list[str]:
    return [binary(), "image", "rm", "--no-prune", tag]


def inspect_argv(container_id: str) -> list[str]:
    return [binary(), "container", "inspect", "--format", "{{json .State}}", container_id]


def list_argv(store: str, run_id: str | None = None) -> list[str]:
    run_filter = f"label={RUN_ID_LABEL}" + (f"={run_id}" if run_id else "")
    return [
        binary(),
        "ps",
        "--all",
        "--no-trunc",
        "--filter",
        run_filter,
        "--filter",
        f"label={STORE_LABEL}={store}",
        "--format",
        '{{.ID}}\t{{.Label "' + RUN_ID_LABEL + '"}}\t{{.Label "' + REPO_LABEL + '"}}',
    ]


# --- wrappers -----------------------------------------------------------------------------------


def _run(argv: Sequence[str], env: Mapping[str, str] | None = None) -> process.Completed:
    try:
        return process.run(argv, env=env)
    except ProgramNotFound as exc:
        raise DockerUnavailable(
            f"docker is unavailable: {binary()} is not installed or not on PATH "
            "(set QUIRE_DOCKER to use another CLI, e.g. podman)"
        ) from exc


def daemon_unreachable(stderr: str) -> bool:
    """Whether docker's stderr says the engine itself could not be reached."""
    lowered = stderr.lower()
    return any(marker in lowered for marker in _DAEMON_GONE) and "no such container" not in lowered


def check_available() -> None:
    """`docker info`; raises `DockerUnavailable` with docker's own words."""
    result = _run(info_argv())
    if not result.ok:
        raise DockerUnavailable(
            f"docker is unavailable (`{binary()} info` exited {result.exit}): "
            f"{result.stderr_tail(3) or '(no output)'}"
        )


def build(dockerfile: Path, context: Path, tags: Sequence[str], on_output: OutputHandler) -> None:
    """`docker build`, streaming its output; raises `ImageBuildFailed` with its tail."""
    tail = bytearray()

    def keep(stream: process.StreamName, chunk: bytes) -> None:
        tail.extend(chunk)
        del tail[:-8192]
        on_output(stream, chunk)

    try:
        result = process.stream(build_argv(dockerfile, context, tags), keep)
    except ProgramNotFound as exc:
        raise DockerUnavailable(f"docker is unavailable: {exc}") from exc
    if result.exit != 0:
        raise ImageBuildFailed(
            f"building image {tags[0]} from {dockerfile} failed (exit {result.exit}):\n"
            f"{process.tail_text(bytes(tail), 12)}"
        )


def run_detached(
    image: str,
    *,
    mount_source: Path,
    labels: Mapping[str, str],
    ceiling_s: int,
    limits: Limits | None = None,
) -> str:
    """Start the run's container; returns its id. Raises `ContainerStartFailed`."""
    argv = run_argv(
        image, mount_source=mount_source, labels=labels, ceiling_s=ceiling_s, limits=limits
    )
    result = _run(argv)
    container_id = result.stdout.decode(errors="replace").strip().splitlines()
    if not result.ok or not container_id:
        raise ContainerStartFailed(
            f"starting a container from {image} failed (exit {result.exit}): "
            f"{result.stderr_tail(5) or '(no output)'}"
        )
    return container_id[-1]


def inspect_state(container_id: str) -> ContainerState | None:
    """The container's state, or None if it no longer exists.

    Raises `DockerUnavailable` when the engine cannot be reached.
    """
    result = _run(inspect_argv(container_id))
    if not result.ok:
        stderr = result.stderr_tail(3)
        if daemon_unreachable(stderr):
            raise DockerUnavailable(f"lost the docker daemon: {stderr}")
        return None
    try:
        state = json.loads(result.stdout)
        return ContainerState(
            running=bool(state.get("Running")),
            status=str(state.get("Status", "unknown")),
            exit_code=int(state.get("ExitCode", -1)),
            oom_killed=bool(state.get("OOMKilled")),
        )
    except (ValueError, AttributeError):
        return None


def teardown(container_id: str | None, untag: str | None) -> list[str]:
    """Remove the container and untag the run's image, at once; returns problems seen."""
    argvs = []
    if container_id:
        argvs.append(remove_argv(container_id))
    if untag:
        argvs.append(untag_argv(untag))
    problems = []
    for result in process.run_all(argvs):
        stderr = result.stderr_tail(2)
        # Gone already (auto-removed after it died) is what we wanted anyway.
        if not result.ok and "no such" not in stderr.lower() and "in progress" not in stderr:
            problems.append(f"`{' '.join(result.argv)}` exited {result.exit}: {stderr}")
    return problems


def image_gone(stderr: str) -> bool:
    """Whether docker's (or podman's) stderr says the image or tag does not exist."""
    lowered = stderr.lower()
    return "no such image" in lowered or "image not known" in lowered


def remove_tag(tag: str) -> bool:
    """`docker image rm --no-prune TAG`: untag one image (layers other tags hold stay).

    Returns False if there was no such image. Raises `DockerUnavailable` when
    the engine cannot be reached, `ToolFailed` with docker's words otherwise.
    """
    result = _run(untag_argv(tag))
    if result.ok:
        return True
    stderr = result.stderr_tail(3)
    if image_gone(stderr):
        return False
    if daemon_unreachable(stderr):
        raise DockerUnavailable(f"docker is unavailable: {stderr}")
    raise ToolFailed(f"`{' '.join(result.argv)}` exited {result.exit}: {stderr or '(no output)'}")


def kill_processes(container_id: str) -> None:
    """Kill every process in the container but its PID 1 (after a command timed out)."""
    _run(exec_argv(container_id, ["kill", "-KILL", "-1"]))


def chown_workdir(container_id: str, uid: int, gid: int) -> None:
    """Give /work back to the user quire runs as (files written by root in the container)."""
    result = _run(exec_argv(container_id, ["chown", "-R", f"{uid}:{gid}", WORKDIR], user="0"))
    if not result.ok:
        raise ToolFailed(
            f"chown of {WORKDIR} in {container_id[:12]} failed: {result.stderr_tail(2)}"
        )


def labelled_containers(store: str, run_id: str | None = None) -> list[LabelledContainer]:
    """Every container (running or not) of run store `store` with a quire run-id label
    (that of `run_id` only, if given)."""
    result = _run(list_argv(store, run_id))
    if not result.ok:
        raise DockerUnavailable(f"docker is unavailable: {result.stderr_tail(3)}")
    found = []
    for line in result.stdout.decode(errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0]:
            found.append(LabelledContainer(*parts))
    return found
