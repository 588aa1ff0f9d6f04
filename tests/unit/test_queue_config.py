"""Which queue a state directory uses: QUIRE_DATABASE_URL, else `[server] database` in the
config file (read by the hook with tomllib alone, validated by quire.config), else SQLite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quire.config import load_config
from quire.errors import ConfigError
from quire.service.queue import repository_name
from quire.service.queues import database_url, repository_url, server_name

URL = "postgresql://quire:s3cret@db.example:5433/ci"


def config(text: str) -> Path:
    path = Path(os.environ["QUIRE_CONFIG"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_no_database_anywhere_means_the_sqlite_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUIRE_DATABASE_URL", raising=False)
    assert database_url() is None
    config('[repositories.proj]\nexecutor = "host"\n')
    assert database_url() is None


def test_the_config_files_server_database_is_read_and_the_variable_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("QUIRE_DATABASE_URL", raising=False)
    config(f'[server]\ndatabase = "{URL}"\n')
    assert database_url() == URL
    assert load_config().server.database == URL
    monkeypatch.setenv("QUIRE_DATABASE_URL", "postgresql://other/db")
    assert database_url() == "postgresql://other/db"


def test_a_server_database_that_is_not_postgresql_is_a_config_error() -> None:
    config('[server]\ndatabase = "mysql://db/ci"\n')
    with pytest.raises(ConfigError, match=r"server\.database"):
        load_config()


def test_the_server_is_named_without_its_password() -> None:
    assert server_name(URL) == "postgresql://quire@db.example:5433/ci"
    assert "s3cret" not in server_name(URL)


def test_a_unix_socket_server_is_named_by_its_directory() -> None:
    assert server_name("postgresql:///ci?host=/run/postgresql") == "postgresql:///run/postgresql/ci"


def test_a_repositorys_url_is_found_by_its_folder_or_store_name() -> None:
    git_dir = "/srv/git/proj.git"
    assert repository_url(git_dir) is None  # no config file
    config('[repositories.proj]\nurl = "ssh://git@githost/proj.git"\n')
    assert repository_url(git_dir) == "ssh://git@githost/proj.git"
    assert load_config().repositories["proj"].url == "ssh://git@githost/proj.git"
    assert repository_url("/srv/git/other.git") is None
    store = repository_name(git_dir)
    config(
        f'[repositories.proj]\nurl = "ssh://a/proj.git"\n'
        f'[repositories.{store}]\nurl = "ssh://b/proj.git"\n'
    )
    assert repository_url(git_dir) == "ssh://b/proj.git"  # the precise name wins
    assert repository_url("/elsewhere/proj.git") == "ssh://a/proj.git"


def test_a_repository_without_a_url_or_a_broken_config_gives_none() -> None:
    config('[repositories.proj]\nexecutor = "docker"\n')
    assert repository_url("/srv/git/proj.git") is None
    config("[repositories.proj\nurl = ")
    assert repository_url("/srv/git/proj.git") is None


def test_a_url_that_git_would_take_for_an_option_is_a_config_error() -> None:
    config('[repositories.proj]\nurl = "--upload-pack=touch /tmp/x"\n')
    with pytest.raises(ConfigError, match=r"repositories\.proj\.url"):
        load_config()
