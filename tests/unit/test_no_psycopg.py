"""A database configured where quire was installed without its `postgres` extra: every
command that needs the database says what to install (exit 3), never an internal error."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from quire.cli.app import app

URL = "postgresql://quire:sekrit@db.example:5433/ci"


@pytest.fixture
def no_psycopg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUIRE_DATABASE_URL", URL)
    # None in sys.modules makes `import psycopg` raise ModuleNotFoundError, as when missing;
    # the modules that import it at their top are dropped so they import it again.
    for name in list(sys.modules):
        if name == "psycopg" or name.startswith(("psycopg.", "quire.service.pg")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "psycopg", None)


@pytest.mark.parametrize(
    "args",
    [
        ["ci", "db", "migrate"],
        ["ci", "runs", "--all"],
        ["ci", "show", "20261204-155425"],
        ["ci", "logs", "20261204-155425"],
        ["ci", "queue"],
        ["ci", "serve", "--port", "0"],
    ],
)
def test_a_command_needing_the_database_says_to_install_the_postgres_extra(
    no_psycopg: None, args: list[str]
) -> None:
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 3, done.output
    assert "psycopg is not installed here" in done.output
    assert "quire[postgres]" in done.output
    assert "postgresql://quire@db.example:5433/ci" in done.output
    assert "sekrit" not in done.output
