"""The web page's accounts on SQLite (the state directory) and on PostgreSQL (database mode):
the same behaviour from both, and `open_accounts` choosing by the configured database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from quire.paths import state_dir
from quire.web.accounts import SESSION_S, SqlAccounts, SqliteAccounts, open_accounts
from tests.integration import postgres

pytestmark = pytest.mark.integration
HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


@pytest.fixture
def no_container_left_behind() -> None:
    """Overrides the suite's docker leak check: nothing here starts a container."""


@pytest.fixture(scope="module")
def server() -> Iterator[postgres.Server | None]:
    try:
        started = postgres.start()
    except postgres.Unavailable as exc:
        if postgres.required():
            pytest.fail(f"QUIRE_REQUIRE_POSTGRES=1 but no PostgreSQL can be started: {exc}")
        yield None
        return
    try:
        yield started
    finally:
        started.stop()


Opener = Callable[..., SqlAccounts]


@pytest.fixture(params=["sqlite", "postgres"])
def connect(
    request: pytest.FixtureRequest, tmp_path: Path, server: postgres.Server | None
) -> Iterator[Opener]:
    """Opens the same accounts again and again: `connect(clock=...)`."""
    opened: list[SqlAccounts] = []
    if request.param == "sqlite":

        def open_one(**options: object) -> SqlAccounts:
            opened.append(SqliteAccounts(tmp_path / "accounts.sqlite3", hasher=HASHER, **options))  # type: ignore[arg-type]
            return opened[-1]
    else:
        if server is None:
            pytest.skip("no PostgreSQL server could be started (apt-get install postgresql)")
        from quire.service.pgschema import migrate
        from quire.web.pgaccounts import PgAccounts

        url = server.new_database()
        migrate(url)

        def open_one(**options: object) -> SqlAccounts:
            opened.append(PgAccounts(url, hasher=HASHER, **options))  # type: ignore[arg-type]
            return opened[-1]

    yield open_one
    for accounts in opened:
        accounts.close()


def test_users_passwords_and_roles(connect: Opener) -> None:
    accounts = connect()
    assert not accounts.has_users()
    accounts.add_user("olive", "operator", "pw")
    accounts.add_user("vic", "viewer", "pw2")
    again = connect()  # another process, the same accounts
    assert again.has_users()
    assert [(u.name, u.role) for u in again.users()] == [("olive", "operator"), ("vic", "viewer")]
    olive = again.check_password("olive", "pw")
    assert olive is not None and olive.operator
    assert again.check_password("olive", "pw2") is None
    assert again.check_password("nobody", "pw") is None
    with pytest.raises(Exception, match="exists already"):
        again.add_user("olive", "viewer", "x")


def test_tokens_are_checked_revoked_and_go_with_their_user(connect: Opener) -> None:
    accounts = connect()
    accounts.add_user("olive", "operator", "pw")
    token = accounts.create_token("olive")
    other = connect()
    user = other.check_token(token)
    assert user is not None and user.name == "olive"
    assert [t.user for t in other.tokens()] == ["olive"]
    assert other.revoke_token(token.split("_")[1])
    assert accounts.check_token(token) is None
    second = accounts.create_token("olive")
    cookie = accounts.open_session("olive")
    assert other.remove_user("olive")
    assert accounts.check_token(second) is None and accounts.session(cookie) is None


def test_sessions_are_shared_and_expire(connect: Opener) -> None:
    now = [1000.0]
    accounts = connect(clock=lambda: now[0])
    accounts.add_user("olive", "viewer", "pw")
    cookie = accounts.open_session("olive")
    other = connect(clock=lambda: now[0])
    session = other.session(cookie)
    assert session is not None and session.user.name == "olive" and session.csrf
    now[0] += SESSION_S + 1
    assert other.session(cookie) is None
    fresh = accounts.open_session("olive")
    other.close_session(fresh)
    assert accounts.session(fresh) is None


def test_open_accounts_uses_the_configured_database(
    server: postgres.Server | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if server is None:
        pytest.skip("no PostgreSQL server could be started (apt-get install postgresql)")
    from quire.service.pgschema import migrate
    from quire.web.pgaccounts import PgAccounts

    url = server.new_database()
    migrate(url)
    monkeypatch.setenv("QUIRE_DATABASE_URL", url)
    with open_accounts(state_dir(), hasher=HASHER) as accounts:  # type: ignore[attr-defined]
        assert isinstance(accounts, PgAccounts)
        accounts.add_user("olive", "operator", "pw")
    assert not (state_dir() / "accounts.sqlite3").exists()


def test_accounts_on_an_unmigrated_database_say_to_migrate(
    server: postgres.Server | None,
) -> None:
    if server is None:
        pytest.skip("no PostgreSQL server could be started (apt-get install postgresql)")
    from quire.web.accounts import AccountsUnavailable
    from quire.web.pgaccounts import PgAccounts

    with pytest.raises(AccountsUnavailable, match="quire ci db migrate"):
        PgAccounts(server.new_database())
