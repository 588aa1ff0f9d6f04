"""Isolation every test gets: its own state, cache and config dirs, and a quiet git."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from plumbum import local

from quire import interrupts
from tests.helpers import GIT_ENV


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """QUIRE_* dirs in tmp; git config and author fixed, for os.environ AND plumbum.

    plumbum copies the environment when it is imported, so monkeypatch alone
    does not reach the programs quire spawns: set both.
    """
    home = tmp_path / "quire-home"
    values = {
        "QUIRE_STATE_DIR": str(home / "state"),
        "QUIRE_CACHE_DIR": str(home / "cache"),
        "QUIRE_CONFIG": str(home / "config.toml"),
        **GIT_ENV,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("NO_COLOR", raising=False)
    local.clear_program_cache()
    interrupts.clear()  # a signal a test sent is not the next test's
    with local.env(**values):
        yield home
    local.clear_program_cache()
    interrupts.clear()
