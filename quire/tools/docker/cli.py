"""The docker CLI itself: which program, where its engine is, running it, what its
failures mean, and what the engine says it is (`docker version`).

The binary is `$QUIRE_DOCKER` or `docker`; DOCKER_HOST and contexts pass
through untouched. The engine's version comes from `version` (podman's `info`
has no `.ServerVersion`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from quire.errors import DockerUnavailable, ProgramNotFound
from quire.tools import process

T = TypeVar("T")


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


def at_host() -> str:
    host = engine_host()
    return f", engine at {host}" if host else ""


def default_workspace_mode(host: str | None = None) -> WorkspaceMode:
    """`copy` for an engine reached over tcp:// or ssh://, else `bind`."""
    host = (engine_host() or "") if host is None else host
    return "copy" if host.startswith(_REMOTE_SCHEMES) else "bind"


def run(argv: Sequence[str], env: Mapping[str, str] | None = None) -> process.Completed:
    return begin(argv, env).wait()


def begin(argv: Sequence[str], env: Mapping[str, str] | None = None) -> process.Pending:
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


def version_argv() -> list[str]:
    """What the engine is, as JSON: fails when it cannot be reached (docker and podman).

    docker prints its server's version and components; a local podman, which is
    its own engine, prints `null`; a podman API service, its version.
    """
    return [binary(), "version", "--format", "{{json .Server}}"]


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


class Background(Generic[T]):
    """A docker call begun the moment this is made: the caller goes on with other work
    and reads the answer (once; kept) when it needs it. A docker program that is
    missing, or an engine that cannot be reached, is told then, as `DockerUnavailable`."""

    def __init__(self, argv: Sequence[str]) -> None:
        self._call: process.Pending | None = None
        self._answer: T | None = None
        self._unavailable: DockerUnavailable | None = None
        try:
            self._call = begin(argv)
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


class EngineProbe(Background[Engine]):
    """`docker version`, asked in the background: quire builds the image meanwhile."""

    def __init__(self) -> None:
        super().__init__(version_argv())

    def _read(self, done: process.Completed) -> Engine:
        if not done.ok:
            raise DockerUnavailable(
                f"docker is unavailable (`{binary()} version` exited {done.exit}"
                f"{at_host()}): {done.stderr_tail(3) or '(no output)'}"
            )
        return parse_engine(done.stdout.decode(errors="replace"))


def engine() -> Engine:
    """Ask the engine what it is (`docker version`) and wait for the answer; raises
    `DockerUnavailable` with the engine's own words when it cannot be reached."""
    return EngineProbe().result()
