"""docker, as quire uses it. Nothing else in quire builds a docker argv or spawns docker.

The binary is `$QUIRE_DOCKER` or `docker`; DOCKER_HOST and contexts pass
through untouched. Every format string and flag here works on both docker
(20.10+) and podman (4.3+): the engine's version comes from `version`
(podman's `info` has no `.ServerVersion`), containers are listed by id with
`ps --quiet` and their labels read with `inspect` (podman's `ps` has no
`.Label`), and containers stop with SIGKILL (podman's `rm --force` would
otherwise wait out a 10 s SIGTERM grace on the `sleep` PID 1).

The run's tree reaches /work in one of two ways (`[docker] workspace`):
`bind`, a bind mount of the local workspace (the engine must see this
machine's files), or `copy`, a tar stream into the created container
(`docker cp -`) before it starts, for an engine elsewhere.

argv builders are pure functions; the wrappers run them through
`tools.process` and raise `QuireError`s carrying docker's stderr tail.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Generic, Literal, TypedDict, TypeVar

from quire.errors import (
    ContainerStartFailed,
    DockerUnavailable,
    ImageBuildFailed,
    ProgramNotFound,
    ToolFailed,
)
from quire.tools import process, tar
from quire.tools.process import OutputHandler

T = TypeVar("T")

RUN_ID_LABEL = "quire.run-id"
REPO_LABEL = "quire.repo"
# The run store a container belongs to: reconcile only judges containers of
# its own store (other users, other QUIRE_STATE_DIRs share the engine).
STORE_LABEL = "quire.store"
# The host whose quire owns the container: hosts sharing one engine (and maybe one
# state path, e.g. on NFS) must not judge each other's containers.
HOST_LABEL = "quire.host"
# A cache volume's name in the pipeline (`cache("pip", ...)`); it also has STORE and REPO.
CACHE_LABEL = "quire.cache"
WORKDIR = "/work"
# PID 1 only sleeps: kill it outright. Docker's `rm --force` kills anyway; podman's
# sends the stop signal and waits 10 s for a `sleep` that ignores SIGTERM.
STOP_SIGNAL = "SIGKILL"

WorkspaceMode = Literal["bind", "copy"]
# Engines reached over the network cannot see this machine's files.
_REMOTE_SCHEMES = ("tcp://", "ssh://")

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


def engine_host() -> str | None:
    """Where the CLI says the engine is: `$DOCKER_HOST` (docker) or `$CONTAINER_HOST`
    (podman's remote client), if set."""
    return os.environ.get("DOCKER_HOST") or os.environ.get("CONTAINER_HOST") or None


def engine_name() -> str:
    """The engine as a person would name it in a message: `docker at tcp://host:2375`."""
    host = engine_host()
    return f"{binary()} at {host}" if host else binary()


def default_workspace_mode(host: str | None = None) -> WorkspaceMode:
    """`copy` for an engine reached over tcp:// or ssh://, else `bind`."""
    host = (engine_host() or "") if host is None else host
    return "copy" if host.startswith(_REMOTE_SCHEMES) else "bind"


class WorkspaceNotVisible(ContainerStartFailed):
    """The engine does not see this machine's workspace (a remote engine, another
    mount namespace): a bind mount would give the jobs an empty or wrong /work."""


class WorkspaceCopyFailed(ContainerStartFailed):
    """Copying the workspace into, or back out of, the run's container failed."""


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
class Volume:
    """A quire cache volume as the engine lists it."""

    name: str
    repo: str
    cache: str
    mountpoint: str


@dataclass(frozen=True)
class Image:
    """One tag of a quire run image as the engine lists it (name as quire writes it)."""

    repository: str
    tag: str

    @property
    def name(self) -> str:
        return f"{self.repository}:{self.tag}"


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


def cache_volume(repo: str, name: str) -> str:
    """The volume of cache `name` of repository `repo`: `quire-cache-<repo>-<name>`.

    Both parts are already valid volume-name characters (`[a-z0-9._-]`, the repo
    id ends in 8 hex digits), so the name is the same on docker and podman.
    """
    return f"quire-cache-{repo}-{name}"


# podman keeps an unqualified name under `localhost/` (`localhost/quire-ci/x:tag`).
_LOCAL_PREFIXES = ("localhost/", "docker.io/library/", "docker.io/")


def short_image_name(name: str) -> str:
    """An image name as quire writes it: podman's `localhost/` (and docker.io) prefix off."""
    for prefix in _LOCAL_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def is_run_image(name: str, repo: str | None = None) -> bool:
    """Whether `name` (as docker or podman lists it) is one of quire's run images
    (of repository `repo`, if given)."""
    short = short_image_name(name)
    if repo is None:
        return short.startswith("quire-ci/")
    return short.split(":", 1)[0] == image_repository(repo)


# --- argv builders (pure) -----------------------------------------------------------------------


def version_argv() -> list[str]:
    """What the engine is, as JSON: fails when it cannot be reached (docker and podman).

    docker prints its server's version and components; a local podman, which is
    its own engine, prints `null`; a podman API service, its version.
    """
    return [binary(), "version", "--format", "{{json .Server}}"]


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


def copy_in_argv(container_id: str) -> list[str]:
    """`docker cp -`: a tar stream on stdin (entries under `work/`) extracted at the
    container's root, so /work is created whether or not the image has it."""
    return [binary(), "cp", "-", f"{container_id}:/"]


def copy_out_argv(container_id: str, destination: Path) -> list[str]:
    """The contents of /work (`/.`: not /work itself) into the existing `destination`."""
    return [binary(), "cp", f"{container_id}:{WORKDIR}/.", str(destination)]


def probe_argv(container_id: str, name: str) -> list[str]:
    """`docker cp` of /work/<name> to stdout (as tar): does the container see that file?
    The engine reads its filesystem: no program in the image is needed."""
    return [binary(), "cp", f"{container_id}:{WORKDIR}/{name}", "-"]


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


def list_argv(store: str, host: str, run_id: str | None = None) -> list[str]:
    """Full ids of every container (running or not) of run store `store` made by quire
    on `host` (and of run `run_id` only, if given). Ids only: podman's `ps` cannot
    format labels; `labels_argv` reads them."""
    run_filter = f"label={RUN_ID_LABEL}" + (f"={run_id}" if run_id else "")
    return [
        binary(),
        "ps",
        "--all",
        "--quiet",
        "--no-trunc",
        "--filter",
        run_filter,
        "--filter",
        f"label={STORE_LABEL}={store}",
        "--filter",
        f"label={HOST_LABEL}={host}",
    ]


def labels_argv(container_ids: Sequence[str]) -> list[str]:
    """Each container's full id and its labels as JSON, one line each (docker and podman)."""
    return [
        binary(),
        "container",
        "inspect",
        "--format",
        "{{.Id}}\t{{json .Config.Labels}}",
        *container_ids,
    ]


def volume_create_argv(name: str, labels: Mapping[str, str]) -> list[str]:
    """Create a named volume with labels. docker answers 0 if it exists already (its
    labels stay as they were); podman fails with "already exists"."""
    argv = [binary(), "volume", "create"]
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}"]
    return [*argv, name]


def volume_list_argv(store: str, repo: str | None = None) -> list[str]:
    """Names of the cache volumes of run store `store` (of repository `repo` only, if given)."""
    argv = [binary(), "volume", "ls", "--quiet", "--filter", f"label={CACHE_LABEL}"]
    argv += ["--filter", f"label={STORE_LABEL}={store}"]
    if repo is not None:
        argv += ["--filter", f"label={REPO_LABEL}={repo}"]
    return argv


def volume_inspect_argv(names: Sequence[str]) -> list[str]:
    """Each volume's name, mount point on the engine's host, and labels as JSON."""
    return [
        binary(),
        "volume",
        "inspect",
        "--format",
        "{{.Name}}\t{{.Mountpoint}}\t{{json .Labels}}",
        *names,
    ]


def volume_remove_argv(name: str) -> list[str]:
    """Remove a volume; the engine refuses while a container uses it."""
    return [binary(), "volume", "rm", name]


def images_argv() -> list[str]:
    """Every image tag the engine has, `repository<TAB>tag` per line (docker and podman)."""
    return [binary(), "image", "ls", "--format", "{{.Repository}}\t{{.Tag}}"]


def image_remove_argv(name: str) -> list[str]:
    """Untag `name`; its layers go too once no other tag holds them."""
    return [binary(), "image", "rm", name]


# --- wrappers -----------------------------------------------------------------------------------


def _run(argv: Sequence[str], env: Mapping[str, str] | None = None) -> process.Completed:
    return _begin(argv, env).wait()


def _begin(argv: Sequence[str], env: Mapping[str, str] | None = None) -> process.Pending:
    try:
        return process.begin(argv, env=env)
    except ProgramNotFound as exc:
        raise DockerUnavailable(
            f"docker is unavailable: {binary()} is not installed or not on PATH "
            "(set QUIRE_DOCKER to use another CLI, e.g. podman)"
        ) from exc


def daemon_unreachable(stderr: str) -> bool:
    """Whether docker's stderr says the engine itself could not be reached."""
    lowered = stderr.lower()
    return any(marker in lowered for marker in _DAEMON_GONE) and "no such container" not in lowered


EngineKind = Literal["docker", "podman-local", "other"]


@dataclass(frozen=True)
class Engine:
    """The engine behind the CLI, as `docker version` tells it."""

    kind: EngineKind
    version: str

    @property
    def refuses_unseen_bind_sources(self) -> bool:
        """Whether a bind mount of a path the engine cannot see is sure to fail.

        Docker Engine refuses a `--mount type=bind` whose source does not exist on
        its side, and every run's workspace path is new, so a mount it accepts is
        this machine's workspace. A local podman is this machine's own process and
        refuses a missing source too. Other engines (podman's API service above
        all, which creates a missing source as an empty directory) are checked.
        """
        return self.kind in ("docker", "podman-local")


def parse_engine(stdout: str) -> Engine:
    """The `Engine` that `version_argv()`'s output describes (`other` when unsure)."""
    text = stdout.strip()
    try:
        server = json.loads(text)
    except ValueError:
        return Engine("other", text or "?")
    if server is None:
        return Engine("podman-local", "?")
    if not isinstance(server, dict):
        return Engine("other", text)
    version = str(server.get("Version") or "?")
    components = server.get("Components")
    names = (
        {part.get("Name") for part in components if isinstance(part, dict)}
        if isinstance(components, list)
        else set()
    )
    # Docker Engine lists a part named "Engine". Podman's API service lists one too,
    # next to its "Podman Engine": podman anywhere in the list means podman.
    podman = any("podman" in str(name).lower() for name in names)
    return Engine("docker" if "Engine" in names and not podman else "other", version)


class _Background(Generic[T]):
    """A docker call begun the moment this is made: the caller goes on with other work
    and reads the answer (once; kept) when it needs it. A docker program that is
    missing, or an engine that cannot be reached, is told then, as `DockerUnavailable`."""

    def __init__(self, argv: Sequence[str]) -> None:
        self._call: process.Pending | None = None
        self._answer: T | None = None
        self._unavailable: DockerUnavailable | None = None
        try:
            self._call = _begin(argv)
        except DockerUnavailable as exc:
            self._unavailable = exc

    def result(self) -> T:
        """The answer; raises `DockerUnavailable` (every time it is asked)."""
        if self._answer is None and self._unavailable is None:
            assert self._call is not None
            try:
                self._answer = self._read(self._call.wait())
            except DockerUnavailable as exc:
                self._unavailable = exc
        if self._unavailable is not None:
            raise self._unavailable
        assert self._answer is not None
        return self._answer

    def unavailable(self) -> DockerUnavailable | None:
        """Why the engine cannot be reached, or None if it answered."""
        try:
            self.result()
        except DockerUnavailable as exc:
            return exc
        return None

    def cancel(self) -> None:
        """Stop waiting for an answer nobody will read."""
        if self._call is not None:
            self._call.cancel()

    def _read(self, done: process.Completed) -> T:
        raise NotImplementedError


class EngineProbe(_Background[Engine]):
    """`docker version`, asked in the background: quire builds the image meanwhile."""

    def __init__(self) -> None:
        super().__init__(version_argv())

    def _read(self, done: process.Completed) -> Engine:
        if not done.ok:
            raise DockerUnavailable(
                f"docker is unavailable (`{binary()} version` exited {done.exit}"
                f"{_at_host()}): {done.stderr_tail(3) or '(no output)'}"
            )
        return parse_engine(done.stdout.decode(errors="replace"))


def engine() -> Engine:
    """Ask the engine what it is (`docker version`) and wait for the answer; raises
    `DockerUnavailable` with the engine's own words when it cannot be reached."""
    return EngineProbe().result()


def _at_host() -> str:
    host = engine_host()
    return f", engine at {host}" if host else ""


# What the legacy builder and the CLI print around the real error of a failed build.
_BUILD_NOISE = re.compile(
    r"^(DEPRECATED: The legacy builder is deprecated.*"
    r"|\s+Install the buildx component.*"
    r"|\s+https://docs\.docker\.com/go/buildx/?"
    r"|Usage:\s+docker build .*"
    r"|Run '\S+ build --help' for more information)$"
)


def build_error(stderr: bytes, output: bytes, lines: int = 12) -> str:
    """The part of a failed build's output that says why: stderr without the legacy
    builder's DEPRECATED banner and the CLI's usage lines; the output's tail if
    stderr says nothing else."""
    text = stderr.decode("utf-8", errors="replace")
    kept = [line for line in text.splitlines() if line.strip() and not _BUILD_NOISE.match(line)]
    if kept:
        return "\n".join(kept[-lines:])
    return process.tail_text(output, lines) or "(no output)"


def build(dockerfile: Path, context: Path, tags: Sequence[str], on_output: OutputHandler) -> None:
    """`docker build`, streaming its output; raises `ImageBuildFailed` with docker's error."""
    tail = bytearray()
    errors = bytearray()

    def keep(stream: process.StreamName, chunk: bytes) -> None:
        tail.extend(chunk)
        del tail[:-8192]
        if stream == "stderr":
            errors.extend(chunk)
            del errors[:-8192]
        on_output(stream, chunk)

    try:
        result = process.stream(build_argv(dockerfile, context, tags), keep)
    except ProgramNotFound as exc:
        raise DockerUnavailable(f"docker is unavailable: {exc}") from exc
    if result.exit != 0:
        raise ImageBuildFailed(
            f"building image {tags[0]} from {dockerfile} failed (exit {result.exit}):\n"
            f"{build_error(bytes(errors), bytes(tail))}"
        )


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
    result = _run(argv)
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
    result = _run(argv)
    container_id = _container_id(result)
    if container_id is None:
        raise ContainerStartFailed(
            f"creating a container from {image} failed (exit {result.exit}{_at_host()}): "
            f"{result.stderr_tail(5) or '(no output)'}"
        )
    return container_id


def copy_in(container_id: str, workspace: Path) -> None:
    """Stream the workspace's tree into the created container's /work:
    `tar --create ... | docker cp - <id>:/`, no temporary tarball.

    Raises `WorkspaceCopyFailed` naming the stage that failed.
    """
    try:
        packed, copied = process.pipe(
            tar.create_argv(workspace, WORKDIR.lstrip("/")), copy_in_argv(container_id)
        )
    except ProgramNotFound as exc:
        raise WorkspaceCopyFailed(f"copying {workspace} into the container: {exc}") from exc
    for stage in (packed, copied):
        if not stage.ok:
            raise WorkspaceCopyFailed(
                f"copying {workspace} into container {container_id[:12]} ({engine_name()}) "
                f"failed: `{' '.join(stage.argv[:2])}` exited {stage.exit}: "
                f"{stage.stderr_tail(5) or '(no output)'}"
            )


def start(container_id: str) -> None:
    """`docker start` the created container; raises `ContainerStartFailed`."""
    result = _run(start_argv(container_id))
    if not result.ok:
        raise ContainerStartFailed(
            f"starting container {container_id[:12]} ({engine_name()}) failed "
            f"(exit {result.exit}): {result.stderr_tail(5) or '(no output)'}"
        )


def copy_out(container_id: str, destination: Path) -> None:
    """Copy /work's contents into the existing directory `destination`.

    Raises `WorkspaceCopyFailed`.
    """
    result = _run(copy_out_argv(container_id, destination))
    if not result.ok:
        raise WorkspaceCopyFailed(
            f"copying {WORKDIR} of container {container_id[:12]} back to {destination} "
            f"failed (exit {result.exit}): {result.stderr_tail(3) or '(no output)'}"
        )


def work_tar_argv(container_id: str) -> list[str]:
    """`docker cp` of /work's contents to stdout, as a tar stream (members `./...`)."""
    return [binary(), "cp", f"{container_id}:{WORKDIR}/.", "-"]


def read_work(container_id: str, consume: Callable[[IO[bytes]], None]) -> None:
    """Hand /work of the container, as a tar stream, to `consume` (artifacts in copy mode:
    quire reads the members itself). Raises `WorkspaceCopyFailed`, or what `consume`
    raised."""
    argv = work_tar_argv(container_id)
    try:
        done, problem = process.read_stdout(argv, consume)
    except ProgramNotFound as exc:
        raise WorkspaceCopyFailed(f"taking {WORKDIR} out of the container: {exc}") from exc
    if not done.ok:
        raise WorkspaceCopyFailed(
            f"taking {WORKDIR} out of container {container_id[:12]} ({engine_name()}) failed: "
            f"`{' '.join(argv[:2])}` exited {done.exit}: {done.stderr_tail(3) or '(no output)'}"
        ) from problem
    if problem is not None:
        raise problem


# docker: `Could not find the file ... in container`; podman: `... could not be found on
# container ...: no such file or directory`; docker's CLI against podman's API: `Error
# response from daemon: no such file or directory`. An answer of the daemon is not a
# lost daemon, whatever it says.
_FILE_NOT_FOUND = (
    "could not find the file",
    "could not be found on container",
    "error response from daemon",
)


def why_unseen(container_id: str, name: str) -> str | None:
    """None if /work/<name> exists in the container (read through the engine), else the
    engine's words on why not.

    Raises `DockerUnavailable` when the engine cannot be reached.
    """
    result = _run(probe_argv(container_id, name))
    if result.ok:
        return None
    stderr = result.stderr_tail(3)
    lowered = stderr.lower()
    not_found = name in stderr or any(marker in lowered for marker in _FILE_NOT_FOUND)
    if not not_found and daemon_unreachable(stderr):
        raise DockerUnavailable(f"lost the docker daemon: {stderr}")
    return stderr or f"`{binary()} cp` exited {result.exit}"


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


class ContainerListing(_Background[list[LabelledContainer]]):
    """`labelled_containers`, its `ps` begun in the background: the list is as it was
    when `ps` ran."""

    def __init__(self, store: str, host: str, run_id: str | None = None) -> None:
        self.store = store
        self.host = host
        super().__init__(list_argv(store, host, run_id))

    def _read(self, done: process.Completed) -> list[LabelledContainer]:
        if not done.ok:
            raise DockerUnavailable(f"docker is unavailable: {done.stderr_tail(3)}")
        ids = done.stdout.decode(errors="replace").split()
        if not ids:
            return []
        # One may go between the two calls: inspect still prints the others (and exits 1).
        inspected = _run(labels_argv(ids))
        if not inspected.ok and daemon_unreachable(inspected.stderr_tail(3)):
            raise DockerUnavailable(f"docker is unavailable: {inspected.stderr_tail(3)}")
        found = []
        for line in inspected.stdout.decode(errors="replace").splitlines():
            container = _labelled(line, self.store, self.host)
            if container is not None:
                found.append(container)
        return found


def labelled_containers(
    store: str, host: str, run_id: str | None = None
) -> list[LabelledContainer]:
    """Every container (running or not) of run store `store` made on `host` with a quire
    run-id label (that of `run_id` only, if given).

    Raises `DockerUnavailable` when the engine cannot be reached.
    """
    return ContainerListing(store, host, run_id).result()


def _labelled(line: str, store: str, host: str) -> LabelledContainer | None:
    """One `labels_argv` line, if it is a quire container of `store` on `host`."""
    container_id, _, raw = line.partition("\t")
    try:
        labels = json.loads(raw)
    except ValueError:
        return None
    if not container_id or not isinstance(labels, dict):
        return None  # `null` (no labels at all), or a line that is not ours
    run_id = labels.get(RUN_ID_LABEL)
    if not isinstance(run_id, str) or not run_id:
        return None
    # The engine filtered already; an engine that ignored a filter must not make us judge
    # another store's or another host's container.
    if labels.get(STORE_LABEL) != store or labels.get(HOST_LABEL) != host:
        return None
    repo = labels.get(REPO_LABEL)
    return LabelledContainer(container_id, run_id, repo if isinstance(repo, str) else "")


# --- cache volumes and images (run setup, `quire ci prune`) -------------------------------------


class CacheVolumeFailed(ContainerStartFailed):
    """A cache volume of the pipeline could not be created."""


def create_volumes(volumes: Mapping[str, Mapping[str, str]]) -> None:
    """Make sure each named volume exists (created with its labels on first use), all at
    once; one that exists already is kept as it is, contents and labels.

    Raises `CacheVolumeFailed` with the engine's words.
    """
    argvs = [volume_create_argv(name, labels) for name, labels in volumes.items()]
    for result in process.run_all(argvs):
        stderr = result.stderr_tail(3)
        if result.ok or "already exists" in stderr.lower():
            continue  # podman refuses an existing name: a run before us made it
        if daemon_unreachable(stderr):
            raise DockerUnavailable(f"docker is unavailable: {stderr}")
        raise CacheVolumeFailed(
            f"creating cache volume {result.argv[-1]} ({engine_name()}) failed "
            f"(exit {result.exit}): {stderr or '(no output)'}"
        )


def cache_volumes(store: str, repo: str | None = None) -> list[Volume]:
    """The cache volumes of run store `store` (of `repo` only, if given), labels checked.

    Raises `DockerUnavailable` when the engine cannot be reached.
    """
    listed = _run(volume_list_argv(store, repo))
    if not listed.ok:
        raise DockerUnavailable(f"docker is unavailable: {listed.stderr_tail(3)}")
    names = listed.stdout.decode(errors="replace").split()
    if not names:
        return []
    inspected = _run(volume_inspect_argv(names))  # one may go in between: the rest print
    found = []
    for line in inspected.stdout.decode(errors="replace").splitlines():
        volume = _volume(line, store, repo)
        if volume is not None:
            found.append(volume)
    return found


def _volume(line: str, store: str, repo: str | None) -> Volume | None:
    name, _, rest = line.partition("\t")
    mountpoint, _, raw = rest.partition("\t")
    try:
        labels = json.loads(raw)
    except ValueError:
        return None
    if not name or not isinstance(labels, dict) or labels.get(STORE_LABEL) != store:
        return None
    owner, cache = labels.get(REPO_LABEL), labels.get(CACHE_LABEL)
    if not isinstance(owner, str) or not isinstance(cache, str) or repo not in (None, owner):
        return None
    return Volume(name, owner, cache, mountpoint)


def remove_volume(name: str) -> str | None:
    """`docker volume rm`; None when it is gone (or was already), else why not (in use).

    Raises `DockerUnavailable` when the engine cannot be reached.
    """
    result = _run(volume_remove_argv(name))
    stderr = result.stderr_tail(3)
    if result.ok or "no such volume" in stderr.lower():
        return None
    if daemon_unreachable(stderr):
        raise DockerUnavailable(f"docker is unavailable: {stderr}")
    return stderr or f"exit {result.exit}"


def run_images() -> list[Image]:
    """Every tag of quire's run images (`quire-ci/...`) the engine has.

    Raises `DockerUnavailable` when the engine cannot be reached.
    """
    result = _run(images_argv())
    if not result.ok:
        raise DockerUnavailable(f"docker is unavailable: {result.stderr_tail(3)}")
    found = []
    for line in result.stdout.decode(errors="replace").splitlines():
        repository, _, tag = line.partition("\t")
        if is_run_image(repository) and tag and tag != "<none>":
            found.append(Image(short_image_name(repository), tag))
    return found


def remove_image(name: str) -> bool:
    """`docker image rm NAME`: untag it, and delete its layers if nothing else holds them.
    Returns whether the image itself was deleted (not only untagged).

    Raises `DockerUnavailable` when the engine cannot be reached, `ToolFailed` with the
    engine's words otherwise (an image a container still uses).
    """
    result = _run(image_remove_argv(name))
    stderr = result.stderr_tail(3)
    if not result.ok:
        if image_gone(stderr):
            return False
        if daemon_unreachable(stderr):
            raise DockerUnavailable(f"docker is unavailable: {stderr}")
        raise ToolFailed(f"`{' '.join(result.argv)}` exited {result.exit}: {stderr}")
    return any(
        line.startswith("Deleted") for line in result.stdout.decode(errors="replace").splitlines()
    )
