"""The root `quire` command: --version on its own, shell completion, help without arguments."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from quire import __version__
from quire.cli.app import app


def test_version_works_without_a_subcommand() -> None:
    result = CliRunner().invoke(app, ["--version"], prog_name="quire")
    assert result.exit_code == 0, result.output
    assert result.output == f"quire {__version__}\n"


def test_version_wins_over_a_subcommand_after_it() -> None:
    result = CliRunner().invoke(app, ["--version", "ci", "runs"], prog_name="quire")
    assert result.exit_code == 0
    assert result.output == f"quire {__version__}\n"


def test_help_offers_shell_completion() -> None:
    result = CliRunner().invoke(app, ["--help"], prog_name="quire")
    assert result.exit_code == 0
    assert "--install-completion" in result.output
    assert "--show-completion" in result.output


def test_show_completion_prints_a_script_for_the_named_shell() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "quire", "--show-completion", "bash"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "complete " in done.stdout and "_QUIRE_COMPLETE" in done.stdout


def test_plain_quire_prints_its_help() -> None:
    result = CliRunner().invoke(app, [], prog_name="quire")
    assert "Usage: quire [OPTIONS] COMMAND" in result.output
    assert "ci" in result.output


def test_prune_is_a_ci_command() -> None:
    result = CliRunner().invoke(app, ["ci", "--help"], prog_name="quire")
    assert "prune" in result.output
