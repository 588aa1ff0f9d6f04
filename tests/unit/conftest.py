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
