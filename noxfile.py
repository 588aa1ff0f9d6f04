"""Sessions: lint, typecheck, unit, integration (`nox` runs them all)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox
from nox.virtualenv import PassthroughEnv

# uv ships its own CA roots; behind a TLS-inspecting proxy (as on our build
# machines) only the system store knows the proxy's CA. pip uses it already.
os.environ.setdefault("UV_NATIVE_TLS", "1")
nox.options.default_venv_backend = "uv|virtualenv"
# Run as the README's `.venv/bin/nox`, whose venv holds `.[dev]` (every session's tools):
# the sessions run there instead of building four venvs of their own (~40 s on a fresh
# clone, against the quick start's 9 minutes).
if Path(sys.prefix).resolve() == (Path(__file__).resolve().parent / ".venv").resolve():
    nox.options.default_venv_backend = "none"
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.prefix) / "bin"), os.environ["PATH"]])
nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "typecheck", "unit", "integration"]

PATHS = ["."]


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    _install(session, "ruff>=0.6")
    session.run("ruff", "check", *PATHS)
    session.run("ruff", "format", "--check", *PATHS)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over quire/."""
    _install(session, "-e", ".", "mypy>=1.10", "types-PyYAML")
    session.run("mypy")


@nox.session
def unit(session: nox.Session) -> None:
    """The fast suite: no docker daemon, fakes and real git in tmp dirs."""
    _install(session, "-e", ".[test]")
    session.run("pytest", "-q", "tests/unit", *session.posargs)


@nox.session
def integration(session: nox.Session) -> None:
    """The real-docker suite (QUIRE_REQUIRE_DOCKER=1 turns a missing engine into a failure)."""
    _install(session, "-e", ".[test]")
    session.run(
        "pytest",
        "-q",
        # Two processes, a test file each at a time: most of the suite waits on engines,
        # servers and workers, so two halve its time on two cores (9 min to 4.5 min); whole
        # files keep a module's PostgreSQL server and fixtures in one process. Every check
        # looks only at what its own test made (its state directory, its session's names).
        "-n",
        "2",
        "--dist",
        "loadfile",
        "-m",
        "integration",
        "--timeout=600",
        "tests/integration",
        *session.posargs,
    )


def _install(session: nox.Session, *args: str) -> None:
    """Install into the session's venv; in the project's own venv it is all there."""
    if not isinstance(session.virtualenv, PassthroughEnv):
        session.install(*args)
