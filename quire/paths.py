"""Where quire keeps things on disk.

    $QUIRE_STATE_DIR  (default $XDG_STATE_HOME/quire)   run records
    $QUIRE_CACHE_DIR  (default $XDG_CACHE_HOME/quire)   workspaces
    $QUIRE_CONFIG     (default $XDG_CONFIG_HOME/quire/config.toml)

Resolved on every call, so tests and users can point them elsewhere with
the environment alone.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path


def state_dir() -> Path:
    """The root of the run store."""
    override = os.environ.get("QUIRE_STATE_DIR")
    if override:
        return Path(override)
    import platformdirs  # lazy: only paths need it

    return platformdirs.user_state_path("quire")


def cache_dir() -> Path:
    """The root of workspaces and other disposable data."""
    override = os.environ.get("QUIRE_CACHE_DIR")
    if override:
        return Path(override)
    import platformdirs

    return platformdirs.user_cache_path("quire")


def config_file() -> Path:
    """The global config file (it may not exist)."""
    override = os.environ.get("QUIRE_CONFIG")
    if override:
        return Path(override)
    import platformdirs

    return platformdirs.user_config_path("quire") / "config.toml"


_UNSAFE = re.compile(r"[^a-z0-9._-]")
_LEADING = re.compile(r"^[^a-z0-9]+")
_SEPARATORS = re.compile(r"[^a-z0-9]+")
_NAME_MAX = 40


def repo_id(name: str, git_dir: str | os.PathLike[str]) -> str:
    """A repository's identity in the run store and in image names: `proj-1a2b3c4d`.

    `name` is the directory that names the repository (`proj.git` -> `proj`),
    made into a valid image-name component for docker and podman (lowercase
    letters and digits, joined by one `.`, `_`, `__` or dashes); the suffix
    is a short hash of the git dir's real path, so two repositories whose
    folders share a name never share a history or an image.
    """
    digest = hashlib.sha256(os.path.realpath(git_dir).encode("utf-8", "surrogateescape"))
    return f"{_image_safe(name)}-{digest.hexdigest()[:8]}"


def _image_safe(name: str) -> str:
    if name.endswith(".git") and len(name) > 4:
        name = name[: -len(".git")]

    def separator(match: re.Match[str]) -> str:
        found = match.group()
        return found if found in (".", "_", "__") or set(found) == {"-"} else "-"

    cleaned = _SEPARATORS.sub(separator, name.lower())[:_NAME_MAX]
    return cleaned.strip("._-") or "repo"


def repo_segment(name: str) -> str:
    """The store name older versions gave a repository directory (no hash).

    Lowercased, characters outside [a-z0-9._-] become `_`, leading
    non-alphanumerics stripped, `repo` if nothing is left. Only used to find
    and adopt runs recorded under it (`quire.ci.store.runs.store_for`).
    """
    if name.endswith(".git") and len(name) > 4:
        name = name[: -len(".git")]
    cleaned = _LEADING.sub("", _UNSAFE.sub("_", name.lower()))
    return cleaned or "repo"
