"""Unit-suite guards: no real docker daemon is ever reached from here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import write_shim


@pytest.fixture(autouse=True)
def docker_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """QUIRE_DOCKER points at a shim that fails loudly; tests that need docker replace it."""
    shim = write_shim(
        tmp_path / "guard-bin",
        "docker",
        'echo "unit tests must not call a real docker: docker $*" >&2\nexit 97\n',
    )
    monkeypatch.setenv("QUIRE_DOCKER", str(shim))
    return shim


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sandboxed: a docker-mode run here starts its job host in the real bubblewrap sandbox",
    )


@pytest.fixture(autouse=True)
def no_sandbox_by_default(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Docker-mode runs of the unit suite talk to a fake engine: their job host runs
    unsandboxed, so the suite needs no bubblewrap. The sandbox's own tests
    (test_sandbox.py, and tests marked `sandboxed`) use the real one."""
    if request.node.get_closest_marker("sandboxed") is None:
        from quire.ci.run import orchestrator

        monkeypatch.setattr(orchestrator, "_sandboxed", lambda request: False)
