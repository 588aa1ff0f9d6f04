"""Constants, engines and the engine CLI helper shared by the integration conftest and tests.

A module of its own (not conftest.py) so that both import the very same
session prefix and engine, however pytest imports conftest files.

Engines: `docker` (the machine's Docker Engine), `podman` (Debian's podman,
rootful, through its own CLI: `QUIRE_DOCKER=podman`) and `podman-remote`
(podman's API service in a mount namespace of its own that cannot see this
machine's test directories, reached by the docker CLI over tcp://; see
test_copy_workspace.py). A test runs on the engine `support.engine()` names:
the `engine` fixture of conftest.py sets it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

BASE_IMAGE = "quire-itest-base"
BUSYBOX = Path("/bin/busybox")
# Repository (and so image) names of this session start with this.
SESSION_PREFIX = f"qit-{secrets.token_hex(3)}"
# What podman needs on this kind of machine (every `podman run` fails with
# "error setting rlimit type 7: operation not permitted" otherwise): a test
# environment setting, handed to podman through CONTAINERS_CONF.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
"""


@dataclass(frozen=True)
class Engine:
    """A container engine the suite runs quire against."""

    name: str
    binary: str  # the CLI: what QUIRE_DOCKER names, and what the tests themselves call
    env: dict[str, str] = field(default_factory=dict)  # for that CLI and for quire

    @property
    def quire_env(self) -> dict[str, str]:
        """What a quire process needs in its environment to use this engine."""
        return {"QUIRE_DOCKER": self.binary, **self.env}

    @property
    def is_podman(self) -> bool:
        return self.name.startswith("podman")


DOCKER = Engine("docker", "docker")
_current: list[Engine] = [DOCKER]


def engine() -> Engine:
    """The engine the running test uses."""
    return _current[-1]


def use_engine(chosen: Engine) -> None:
    _current[:] = [chosen]


def docker_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The test suite's own engine calls (not quire's), on the current engine."""
    return engine_cli(engine(), *args, check=check)


def engine_cli(
    chosen: Engine, *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "QUIRE_DOCKER"}
    env.update(chosen.env)
    binary = shutil.which(chosen.binary) or chosen.binary
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, check=check, timeout=timeout, env=env
    )


def without_sandbox(config_text: str = "") -> None:
    """Write the config file with `[docker] sandbox = false` (and `config_text`, whose own
    `[docker]` table gets the key): for tests whose pipeline reaches the host from its
    Python on purpose (the engine's CLI, files of the test), which the sandbox forbids."""
    import os
    from pathlib import Path

    config = Path(os.environ["QUIRE_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    if "[docker]" in config_text:
        text = config_text.replace("[docker]\n", "[docker]\nsandbox = false\n", 1)
    else:
        text = config_text + "\n[docker]\nsandbox = false\n"
    config.write_text(text)
