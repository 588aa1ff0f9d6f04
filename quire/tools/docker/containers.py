"""The run's container, created to its end: `docker run --detach` (bind mode) or
`docker create` + `docker start` (copy mode) of a container whose PID 1 only
sleeps, its state (`inspect`), and its removal with the run's image tag.

Containers stop with SIGKILL (podman's `rm --force` would otherwise wait out a
10 s SIGTERM grace on the `sleep` PID 1).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from quire.errors import ContainerStartFailed, DockerUnavailable
from quire.tools import process
from quire.tools.docker.cli import at_host, binary, daemon_unreachable, engine_name, run
from quire.tools.docker.images import untag_argv

WORKDIR = "/work"
# PID 1 only sleeps: kill it outright. Docker's `rm --force` kills anyway; podman's
# sends the stop signal and waits 10 s for a `sleep` that ignores SIGTERM.
STOP_SIGNAL = "SIGKILL"


class WorkspaceNotVisible(ContainerStartFailed):
    """The engine does not see this machine's workspace (a remote engine, another
    mount namespace): a bind mount would give the jobs an empty or wrong /work."""


@dataclass(frozen=True)
class Limits:
    """Resource limits and extra labels for `docker run`."""

    cpus: float | None = None
    memory: str | None = None
    network: bool = True
    labels: Mapping[str, str] | None = None


@dataclass(frozen=True)
class CacheMount:
    """A named volume mounted at `path` in the run's container (a pipeline's `cache()`)."""

    volume: str
    path: str


class ContainerSpec(TypedDict):
    """What `run_detached` and `create` share: the container's labels, life, limits and
    cache volumes."""

    labels: Mapping[str, str]
    ceiling_s: int
    limits: Limits | None
    caches: Sequence[CacheMount]


@dataclass(frozen=True)
class ContainerState:
    """What `docker inspect` says of a container's state."""

    running: bool
    status: str
    exit_code: int
    oom_killed: bool


def _mount_field(value: str) -> str:
    # --mount is CSV: a source path with a comma or quote must be quoted.
    if "," in value or '"' in value:
        return '"' + value.replace('"', '""') + '"'
    return value


def _container_flags(
    labels: Mapping[str, str],
    limits: Limits | None,
    mount_source: Path | None,
    caches: Sequence[CacheMount] = (),
) -> list[str]:
    limits = limits or Limits()
    argv = ["--rm", "--stop-signal", STOP_SIGNAL]
    for key, value in {**(limits.labels or {}), **labels}.items():
        argv += ["--label", f"{key}={value}"]
    if mount_source is not None:
        mount = ["type=bind", _mount_field(f"src={mount_source}"), f"dst={WORKDIR}"]
        argv += ["--mount", ",".join(mount)]
    for cache in caches:
        volume = ["type=volume", f"src={cache.volume}", _mount_field(f"dst={cache.path}")]
        argv += ["--mount", ",".join(volume)]
    argv += ["--workdir", WORKDIR]
    if limits.cpus is not None:
        argv += ["--cpus", f"{limits.cpus:g}"]
    if limits.memory is not None:
        argv += ["--memory", limits.memory]
    if not limits.network:
        argv += ["--network", "none"]
    return argv


def run_argv(
    image: str,
    *,
    mount_source: Path,
    labels: Mapping[str, str],
    ceiling_s: int,
    limits: Limits | None = None,
    caches: Sequence[CacheMount] = (),
) -> list[str]:
    """`docker run --detach` of a container that only sleeps, the workspace bind-mounted
    at /work and each cache volume at its path; commands come by `docker exec`."""
    flags = _container_flags(labels, limits, mount_source, caches)
    return [binary(), "run", "--detach", *flags, image, "sleep", str(ceiling_s)]


def create_argv(
    image: str,
    *,
    labels: Mapping[str, str],
    ceiling_s: int,
    limits: Limits | None = None,
    caches: Sequence[CacheMount] = (),
) -> list[str]:
    """`docker create` of the same sleeping container without the workspace mount (copy
    mode: the tree is copied in before `docker start`); cache volumes are mounted."""
    flags = _container_flags(labels, limits, None, caches)
    return [binary(), "create", *flags, image, "sleep", str(ceiling_s)]


def start_argv(container_id: str) -> list[str]:
    return [binary(), "start", container_id]


def remove_argv(container_id: str) -> list[str]:
    """Kill and remove at once: `sleep` as PID 1 ignores SIGTERM, so a stop would wait."""
    return [binary(), "rm", "--force", container_id]


def inspect_argv(container_id: str) -> list[str]:
    return [binary(), "container", "inspect", "--format", "{{json .State}}", container_id]


# How docker (`bind source path does not exist`) and podman (`statfs <src>: no such
# file or directory`) refuse a bind mount whose source the engine cannot find.
_MISSING_SOURCE = ("bind source path does not exist", "statfs ")


def not_visible_message(workspace: Path, container_id: str | None = None) -> str:
    """Why a bind mount cannot work here, and what to do about it."""
    where = f" (container {container_id[:12]})" if container_id else ""
    return (
        f"the container engine ({engine_name()}) does not see this machine's files: "
        f"the workspace {workspace} is not there on the engine's side{where}, so a bind "
        "mount would give the jobs an empty or wrong /work. Copy the tree into the "
        'container instead: set `workspace = "copy"` under [docker] in the config file '
        "(the default for tcp:// and ssh:// engines)"
    )


def _container_id(result: process.Completed) -> str | None:
    """The id `docker run --detach` / `docker create` printed (its last line), or None."""
    lines = result.stdout.decode(errors="replace").strip().splitlines()
    return lines[-1] if result.ok and lines else None


def run_detached(
    image: str,
    *,
    mount_source: Path,
    labels: Mapping[str, str],
    ceiling_s: int,
    limits: Limits | None = None,
    caches: Sequence[CacheMount] = (),
) -> str:
    """Start the run's container, the workspace bind-mounted; returns its id.

    Raises `WorkspaceNotVisible` when the engine cannot find the mount's source,
    `ContainerStartFailed` otherwise.
    """
    argv = run_argv(
        image,
        mount_source=mount_source,
        labels=labels,
        ceiling_s=ceiling_s,
        limits=limits,
        caches=caches,
    )
    result = run(argv)
    container_id = _container_id(result)
    if container_id is None:
        stderr = result.stderr_tail(5)
        if any(marker in stderr for marker in _MISSING_SOURCE) and str(mount_source) in stderr:
            raise WorkspaceNotVisible(f"{not_visible_message(mount_source)}. {binary()}: {stderr}")
        raise ContainerStartFailed(
            f"starting a container from {image} failed (exit {result.exit}): "
            f"{stderr or '(no output)'}"
        )
    return container_id


def create(
    image: str,
    *,
    labels: Mapping[str, str],
    ceiling_s: int,
    limits: Limits | None = None,
    caches: Sequence[CacheMount] = (),
) -> str:
    """`docker create` the run's container (copy mode); returns its id.

    Raises `ContainerStartFailed`.
    """
    argv = create_argv(image, labels=labels, ceiling_s=ceiling_s, limits=limits, caches=caches)
    result = run(argv)
    container_id = _container_id(result)
    if container_id is None:
        raise ContainerStartFailed(
            f"creating a container from {image} failed (exit {result.exit}{at_host()}): "
            f"{result.stderr_tail(5) or '(no output)'}"
        )
    return container_id


def start(container_id: str) -> None:
    """`docker start` the created container; raises `ContainerStartFailed`."""
    result = run(start_argv(container_id))
    if not result.ok:
        raise ContainerStartFailed(
            f"starting container {container_id[:12]} ({engine_name()}) failed "
            f"(exit {result.exit}): {result.stderr_tail(5) or '(no output)'}"
        )


def inspect_state(container_id: str) -> ContainerState | None:
    """The container's state, or None if it no longer exists.

    Raises `DockerUnavailable` when the engine cannot be reached.
    """
    result = run(inspect_argv(container_id))
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
