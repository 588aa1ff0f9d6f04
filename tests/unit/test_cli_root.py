"""The root `quire` command: --version on its own, shell completion, help without arguments,
and the command tree that builds each command when first used."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from quire import __version__
from quire.cli.app import app
from quire.cli.lazy_tree import LazyCommands, build_everything, command_tree


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


@pytest.mark.parametrize(
    ("shell", "mark"), [("bash", "complete "), ("zsh", "#compdef quire"), ("fish", "complete --")]
)
def test_show_completion_prints_a_script_for_the_named_shell(shell: str, mark: str) -> None:
    # By default typer guesses the shell from the parent processes (`sh` when the suite was
    # started from a script) and ignores the word after --show-completion; with detection
    # off, --show-completion takes the shell's name, so the test does not depend on its parent.
    done = subprocess.run(
        [sys.executable, "-m", "quire", "--show-completion", shell],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert mark in done.stdout and "_QUIRE_COMPLETE" in done.stdout


def test_plain_quire_prints_its_help() -> None:
    result = CliRunner().invoke(app, [], prog_name="quire")
    assert "Usage: quire [OPTIONS] COMMAND" in result.output
    assert "ci" in result.output


def test_prune_is_a_ci_command() -> None:
    result = CliRunner().invoke(app, ["ci", "--help"], prog_name="quire")
    assert "prune" in result.output


# --- the command tree: each `ci` command built when first used (quire/cli/lazy_tree.py) ----------


def lazy_runner(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Make typer's CliRunner invoke the lazy tree; returns the list of trees it built."""
    trees: list[object] = []

    def build(typer_app: typer.Typer) -> object:
        trees.append(command_tree(typer_app))
        return trees[-1]

    monkeypatch.setattr("typer.testing._get_command", build)
    return trees


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["ci", "--help"],
        ["ci", "run", "--help"],
        ["ci", "hook", "--help"],
        ["ci", "hook", "install", "--help"],
        ["ci", "rnu"],
        ["ci"],
    ],
)
def test_the_lazy_tree_answers_as_the_tree_typer_builds(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    eager = CliRunner().invoke(app, argv, prog_name="quire")
    lazy_runner(monkeypatch)
    lazy = CliRunner().invoke(app, argv, prog_name="quire")
    assert (lazy.exit_code, lazy.output) == (eager.exit_code, eager.output)
    assert eager.output  # each of them says something


def test_a_command_builds_only_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    trees = lazy_runner(monkeypatch)
    result = CliRunner().invoke(app, ["ci", "jobs", "--help"], prog_name="quire")
    assert result.exit_code == 0, result.output
    ci = trees[0].commands["ci"]  # type: ignore[attr-defined]
    assert isinstance(ci.commands, LazyCommands)
    assert ci.commands.built == ["jobs"]


def test_build_everything_builds_every_subcommand() -> None:
    tree = command_tree(app)
    build_everything(tree)
    ci = tree.commands["ci"]  # type: ignore[attr-defined]
    assert ci.commands.built == list(ci.commands)
    assert {"run", "validate", "runs", "hook", "warm", "prune"} <= set(ci.commands.built)
