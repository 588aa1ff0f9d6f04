"""Cache volumes (a pipeline's `cache()`): created with their labels at a run's setup,
listed and removed by `quire ci prune`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from quire.errors import ContainerStartFailed, DockerUnavailable
from quire.tools import process
from quire.tools.docker.cli import binary, daemon_unreachable, engine_name, run
from quire.tools.docker.naming import CACHE_LABEL, REPO_LABEL, STORE_LABEL


class CacheVolumeFailed(ContainerStartFailed):
    """A cache volume of the pipeline could not be created."""


@dataclass(frozen=True)
class Volume:
    """A quire cache volume as the engine lists it."""

    name: str
    repo: str
    cache: str
    mountpoint: str


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
    listed = run(volume_list_argv(store, repo))
    if not listed.ok:
        raise DockerUnavailable(f"docker is unavailable: {listed.stderr_tail(3)}")
    names = listed.stdout.decode(errors="replace").split()
    if not names:
        return []
    inspected = run(volume_inspect_argv(names))  # one may go in between: the rest print
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
    result = run(volume_remove_argv(name))
    stderr = result.stderr_tail(3)
    if result.ok or "no such volume" in stderr.lower():
        return None
    if daemon_unreachable(stderr):
        raise DockerUnavailable(f"docker is unavailable: {stderr}")
    return stderr or f"exit {result.exit}"
