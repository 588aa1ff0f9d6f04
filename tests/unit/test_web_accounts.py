"""Accounts: `quire ci user` and `quire ci token`, and what the accounts file keeps."""

from __future__ import annotations

import re
import stat
from pathlib import Path

from argon2 import PasswordHasher
from typer.testing import CliRunner

from quire.cli.app import app
from quire.paths import state_dir
from quire.web.accounts import SESSION_S, SqliteAccounts

runner = CliRunner()
HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def quire(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, ["ci", *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_user_add_list_and_remove_from_the_command_line() -> None:
    assert (
        quire("user", "add", "olive", "--role", "operator", "--password-stdin", stdin="pw\n")[0]
        == 0
    )
    assert quire("user", "add", "vic", "--password-stdin", stdin="pw2")[0] == 0
    code, out, _ = quire("user", "list")
    assert code == 0
    assert re.search(r"^olive  operator  added ", out, re.M)
    assert re.search(r"^vic  viewer  added ", out, re.M)  # viewer unless told
    with SqliteAccounts(state_dir() / "accounts.sqlite3") as accounts:
        assert accounts.check_password("olive", "pw") is not None  # the newline is not in it
        assert accounts.check_password("olive", "pw\n") is None
    assert quire("user", "remove", "vic")[0] == 0
    assert "vic" not in quire("user", "list")[1]
    code, _, err = quire("user", "remove", "vic")
    assert code == 2 and "no user 'vic'" in err


def test_user_add_refuses_a_taken_name_a_bad_role_an_empty_password() -> None:
    quire("user", "add", "olive", "--password-stdin", stdin="pw")
    for args, stdin, says in (
        (("olive",), "pw", "exists already"),
        (("bob", "--role", "admin"), "pw", "use viewer or operator"),
        (("bob",), "", "the password is empty"),
        (("../bob",), "pw", "user name '../bob'"),
    ):
        code, _, err = quire("user", "add", *args, "--password-stdin", stdin=stdin)
        assert code == 2 and says in err, (args, err)


def test_user_add_prompts_twice_without_password_stdin() -> None:
    code, _, _ = quire("user", "add", "olive", stdin="pw\npw\n")
    assert code == 0
    with SqliteAccounts(state_dir() / "accounts.sqlite3") as accounts:
        assert accounts.check_password("olive", "pw") is not None


def test_token_create_prints_the_token_alone_once_and_revoke_ends_it() -> None:
    quire("user", "add", "olive", "--role", "operator", "--password-stdin", stdin="pw")
    code, out, _ = quire("token", "create", "olive")
    assert code == 0
    token = out.strip()
    assert out == token + "\n" and re.fullmatch(r"quire_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", token)
    path = state_dir() / "accounts.sqlite3"
    assert token.encode() not in path.read_bytes()
    listed = quire("token", "list")[1]
    token_id = token.split("_")[1]
    assert token_id in listed and "olive" in listed and token not in listed
    with SqliteAccounts(path) as accounts:
        user = accounts.check_token(token)
        assert user is not None and user.name == "olive"
        assert accounts.check_token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert quire("token", "revoke", token_id)[0] == 0
    with SqliteAccounts(path) as accounts:
        assert accounts.check_token(token) is None
    assert quire("token", "revoke", token_id)[0] == 2
    code, _, err = quire("token", "create", "nobody")
    assert code == 2 and "no user 'nobody'" in err


def test_the_accounts_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0)
    try:
        SqliteAccounts(tmp_path / "accounts.sqlite3", hasher=HASHER).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "accounts.sqlite3").stat().st_mode) == 0o600


def test_removing_a_user_ends_their_tokens_and_sessions(tmp_path: Path) -> None:
    with SqliteAccounts(tmp_path / "a.sqlite3", hasher=HASHER) as accounts:
        accounts.add_user("olive", "operator", "pw")
        token = accounts.create_token("olive")
        cookie = accounts.open_session("olive")
        assert accounts.session(cookie) is not None
        assert accounts.remove_user("olive")
        assert accounts.check_token(token) is None
        assert accounts.session(cookie) is None
        assert accounts.check_password("olive", "pw") is None


def test_a_session_ends_after_two_weeks(tmp_path: Path) -> None:
    now = [1000.0]
    with SqliteAccounts(tmp_path / "a.sqlite3", hasher=HASHER, clock=lambda: now[0]) as accounts:
        accounts.add_user("olive", "viewer", "pw")
        cookie = accounts.open_session("olive")
        now[0] += SESSION_S - 1
        assert accounts.session(cookie) is not None
        now[0] += 2
        assert accounts.session(cookie) is None


def test_passwords_are_argon2_hashes(tmp_path: Path) -> None:
    with SqliteAccounts(tmp_path / "a.sqlite3", hasher=HASHER) as accounts:
        accounts.add_user("olive", "viewer", "correct horse")
    data = (tmp_path / "a.sqlite3").read_bytes()
    assert b"correct horse" not in data and b"$argon2id$" in data


def test_revoking_by_the_token_itself_never_prints_its_secret() -> None:
    quire("user", "add", "olive", "--role", "operator", "--password-stdin", stdin="pw")
    token = quire("token", "create", "olive")[1].strip()
    code, out, err = quire("token", "revoke", token)
    assert code == 0 and token not in out + err
    code, out, err = quire("token", "revoke", token)  # gone already: the message names its id
    assert code == 2 and token.split("_")[1] in err and token not in out + err
