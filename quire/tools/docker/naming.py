"""The labels and names quire gives what it makes in the engine (containers, cache
volumes, run images), so that reconcile and prune find their own and only their own.
"""

from __future__ import annotations

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
