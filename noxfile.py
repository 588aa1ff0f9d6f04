"""Sessions: lint, typecheck, unit, integration (`nox` runs them all)."""

from __future__ import annotations

import os

import nox

# uv ships its own CA roots; behind a TLS-inspecting proxy (as on our build
# machines) only the system store knows the proxy's CA. pip uses it already.
os.environ.setdefault("UV_NATIVE_TLS", "1")
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "typecheck", "unit", "integration"]

PATHS = ["."]


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", *PATHS)
    session.run("ruff", "format", "--check", *PATHS)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over quire/."""
    session.install("-e", ".", "mypy>=1.10", "types-PyYAML")
    session.run("mypy")


@nox.session
def unit(session: nox.Session) -> None:
    """The fast suite: no docker daemon, fakes and real git in tmp dirs."""
    session.install("-e", ".[test]")
    session.run("pytest", "-q", "tests/unit", *session.posargs)


@nox.session
def integration(session: nox.Session) -> None:
    """The real-docker suite (QUIRE_REQUIRE_DOCKER=1 turns a missing engine into a failure)."""
    session.install("-e", ".[test]")
    session.run(
        "pytest",
        "-q",
        "-n",
        "0",
        "-m",
        "integration",
        "--timeout=600",
        "tests/integration",
        *session.posargs,
    )
