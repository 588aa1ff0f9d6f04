"""Where quire keeps things on disk.

    $QUIRE_STATE_DIR  (default $XDG_STATE_HOME/quire)   run records
    $QUIRE_CACHE_DIR  (default $XDG_CACHE_HOME/quire)   workspaces
    $QUIRE_CONFIG     (default $XDG_CONFIG_HOME/quire/config.toml)

Resolved on every call, so tests and users can point them elsewhere with
the environment alone.
"""

from __future__ import annotations

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


def repo_segment(name: str) -> str:
    """The path and image-tag segment for a repository directory name.

    Lowercased, characters outside [a-z0-9._-] become `_`, leading
    non-alphanumerics stripped, `repo` if nothing is left.
    """
    if name.endswith(".git") and len(name) > 4:
        name = name[: -len(".git")]
    cleaned = _LEADING.sub("", _UNSAFE.sub("_", name.lower()))
    return cleaned or "repo"
