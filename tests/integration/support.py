"""Constants and the docker helper shared by the integration conftest and its tests.

A module of its own (not conftest.py) so that both import the very same
session prefix, however pytest imports conftest files.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

BASE_IMAGE = "quire-itest-base"
BUSYBOX = Path("/bin/busybox")
# Repository (and so image) names of this session start with this.
SESSION_PREFIX = f"qit-{secrets.token_hex(3)}"


def docker_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The test suite's own docker calls (not quire's)."""
    env = {k: v for k, v in os.environ.items() if k != "QUIRE_DOCKER"}
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=check, timeout=120, env=env
    )
