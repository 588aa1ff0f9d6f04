"""`quire ci user add | list | remove` and `quire ci token create | list | revoke`: who may log
in to `quire ci serve`, and the API tokens scripts use (quire.web.accounts)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from quire.web.accounts import AccountStore

user_app = typer.Typer(
    help="Users of the web page (`quire ci serve`): viewers read, operators also act.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
token_app = typer.Typer(
    help="API tokens: `Authorization: Bearer TOKEN` for scripts, acting as their user.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _accounts() -> AccountStore:
    from quire.paths import state_dir
    from quire.web.accounts import open_accounts

    return open_accounts(state_dir())


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.read().removesuffix("\n").removesuffix("\r")
    text: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return text


def user_add_command(
    name: Annotated[str, typer.Argument(help="The user's name (letters, digits, . _ @ -).")],
    role: Annotated[
        str, typer.Option("--role", help="viewer (reads) or operator (also re-runs, cancels).")
    ] = "viewer",
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read the password from stdin (else: a prompt)."),
    ] = False,
) -> int:
    """Add a user who can log in to the web page; the password is stored as an argon2 hash."""
    from quire.web.accounts import check_name, check_role

    chosen = check_role(role)
    check_name(name)
    password = _password(password_stdin)
    accounts = _accounts()
    try:
        accounts.add_user(name, chosen, password)
    finally:
        accounts.close()
    typer.echo(f"added {chosen} {name}")
    return 0


def user_list_command() -> int:
    """List the users and their roles."""
    accounts = _accounts()
    try:
        users = accounts.users()
    finally:
        accounts.close()
    if not users:
        typer.echo("no users yet: add one with `quire ci user add NAME --role operator`")
    for user in users:
        typer.echo(f"{user.name}  {user.role}  added {user.created_at:%Y-%m-%d %H:%M}Z")
    return 0


def user_remove_command(name: Annotated[str, typer.Argument(help="The user to remove.")]) -> int:
    """Remove a user, with their API tokens and login sessions."""
    from quire.errors import UsageError

    accounts = _accounts()
    try:
        gone = accounts.remove_user(name)
    finally:
        accounts.close()
    if not gone:
        raise UsageError(f"no user {name!r} (see `quire ci user list`)")
    typer.echo(f"removed {name}, their tokens and sessions")
    return 0


def token_create_command(
    name: Annotated[str, typer.Argument(help="The user the token acts as.")],
) -> int:
    """Print a new API token of user NAME, alone on stdout; it is shown this once."""
    accounts = _accounts()
    try:
        token = accounts.create_token(name)
    finally:
        accounts.close()
    typer.echo(token)
    return 0


def token_list_command() -> int:
    """List the API tokens by id and user (never the tokens themselves)."""
    accounts = _accounts()
    try:
        tokens = accounts.tokens()
    finally:
        accounts.close()
    if not tokens:
        typer.echo("no tokens")
    for token in tokens:
        typer.echo(f"{token.id}  {token.user}  created {token.created_at:%Y-%m-%d %H:%M}Z")
    return 0


def token_revoke_command(
    token: Annotated[str, typer.Argument(help="The token's id (`quire ci token list`), or it.")],
) -> int:
    """Revoke an API token: requests with it are refused from now on."""
    from quire.errors import UsageError

    accounts = _accounts()
    try:
        gone = accounts.revoke_token(token)
    finally:
        accounts.close()
    if not gone:
        from quire.web.accounts import token_id_of

        # The id only: the token itself is shown once, when it is made.
        raise UsageError(f"no token {token_id_of(token)!r} (see `quire ci token list`)")
    typer.echo("revoked")
    return 0
