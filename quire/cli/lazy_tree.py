"""The click command tree of the typer app, each group's subcommands built on first use.

Typer turns every command function into a click command (its signature and
annotations into click parameters) before it parses a word: for quire's 17
`ci` commands that is ~25 ms of every command on a 2 vCPU VM, of which a
command uses one. `command_tree` builds the root and its groups as typer
does, but gives each group a `LazyCommands` mapping that builds a
subcommand when it is first looked up. Help, completion and typer's
did-you-mean see every name; `quire ci --help` builds them all, as it
shows them all. The typer app itself is untouched: tests invoke it as
typer builds it, and `tests/unit/test_cli_root.py` pins that both trees
print the same help.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator, MutableMapping
from typing import TYPE_CHECKING

import typer
import typer.main
from typer.core import TyperGroup

if TYPE_CHECKING:
    from typer._click import Command


class LazyCommands(MutableMapping[str, "Command"]):
    """A group's subcommands by name, in registration order; each built when first read."""

    def __init__(self, builders: dict[str, Callable[[], Command]]) -> None:
        self._builders = dict(builders)
        self._built: dict[str, Command] = {}

    @property
    def built(self) -> list[str]:
        """The names built so far."""
        return list(self._built)

    def __getitem__(self, name: str) -> Command:
        if name not in self._built:
            self._built[name] = self._builders[name]()
        return self._built[name]

    def __setitem__(self, name: str, command: Command) -> None:
        self._builders[name] = lambda: command
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._builders[name]
        self._built.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._builders)

    def __len__(self) -> int:
        return len(self._builders)


def command_tree(app: typer.Typer) -> Command:
    """`app` as click commands, as `typer.main.get_command(app)` builds it, but with each of
    its groups' subcommands built on first use."""
    root = copy.copy(app)  # the app stays whole: only the copy's groups are emptied
    root.registered_groups = [_without_subcommands(info) for info in app.registered_groups]
    tree = typer.main.get_command(root)
    assert isinstance(tree, TyperGroup)
    for info in app.registered_groups:
        assert info.name and info.typer_instance, "every group is added with a name"
        group = tree.commands[info.name]
        assert isinstance(group, TyperGroup)
        group.commands = LazyCommands(_builders(info.typer_instance, app))
    return tree


def build_everything(tree: Command) -> None:
    """Build every subcommand now (a warm quire does, before it forks its children)."""
    if isinstance(tree, TyperGroup):
        for command in tree.commands.values():
            build_everything(command)


def _without_subcommands(info: typer.models.TyperInfo) -> typer.models.TyperInfo:
    shell = copy.copy(info)
    shell.typer_instance = copy.copy(info.typer_instance)
    assert shell.typer_instance is not None
    shell.typer_instance.registered_commands = []
    shell.typer_instance.registered_groups = []
    return shell


def _builders(group: typer.Typer, root: typer.Typer) -> dict[str, Callable[[], Command]]:
    """How typer would build each of `group`'s subcommands, with the root's settings (as
    `typer.main.get_group` passes them down), commands first, then groups."""
    builders: dict[str, Callable[[], Command]] = {}
    for command in group.registered_commands:
        assert command.callback is not None
        name = command.name or typer.main.get_command_name(command.callback.__name__)
        builders[name] = functools.partial(
            typer.main.get_command_from_info,
            command,
            pretty_exceptions_short=root.pretty_exceptions_short,
            rich_markup_mode=root.rich_markup_mode,
        )
    for sub in group.registered_groups:
        assert sub.name, "every group is added with a name"
        builders[sub.name] = functools.partial(
            typer.main.get_group_from_info,
            sub,
            pretty_exceptions_short=root.pretty_exceptions_short,
            rich_markup_mode=root.rich_markup_mode,
            suggest_commands=root.suggest_commands,
        )
    return builders
