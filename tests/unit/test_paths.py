"""Where quire keeps things: QUIRE_* overrides, XDG defaults, and the repository segment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quire.paths import cache_dir, config_file, repo_id, repo_segment, state_dir


@pytest.mark.parametrize(
    ("name", "segment"),
    [
        ("example", "example"),
        ("MyProject", "myproject"),
        ("my project", "my_project"),
        ("a+b@c:d", "a_b_c_d"),
        ("keep.dots-and_underscores", "keep.dots-and_underscores"),
        ("..hidden", "hidden"),
        ("-dash-first", "dash-first"),
        ("__init__", "init__"),
        ("_.-x", "x"),
        ("Ünïcode", "n_code"),
        ("9lives", "9lives"),
        ("...", "repo"),
        ("", "repo"),
        ("---", "repo"),
        ("日本", "repo"),
        ("example.git", "example"),
    ],
)
def test_repo_segment_sanitizes_the_directory_name(name: str, segment: str) -> None:
    assert repo_segment(name) == segment


@pytest.mark.parametrize("name", ["Weird Name!", "ÄÖÜ", "a/b\\c", "x" * 3 + "::", ".git"])
def test_repo_segment_only_uses_safe_characters_and_starts_alphanumeric(name: str) -> None:
    segment = repo_segment(name)
    assert segment
    assert all(c in "abcdefghijklmnopqrstuvwxyz0123456789._-" for c in segment)
    assert segment[0].isalnum()


def test_quire_dirs_come_from_their_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUIRE_STATE_DIR", str(tmp_path / "s"))
    monkeypatch.setenv("QUIRE_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("QUIRE_CONFIG", str(tmp_path / "quire.toml"))
    assert state_dir() == tmp_path / "s"
    assert cache_dir() == tmp_path / "c"
    assert config_file() == tmp_path / "quire.toml"


def test_dirs_default_to_xdg_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("QUIRE_STATE_DIR", "QUIRE_CACHE_DIR", "QUIRE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    assert state_dir() == tmp_path / "xdg-state" / "quire"
    assert cache_dir() == tmp_path / "xdg-cache" / "quire"
    assert config_file() == tmp_path / "xdg-config" / "quire" / "config.toml"


def test_dirs_default_under_home_without_xdg_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("QUIRE_STATE_DIR", "QUIRE_CACHE_DIR", "QUIRE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    for name in ("XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert state_dir() == tmp_path / ".local" / "state" / "quire"
    assert cache_dir() == tmp_path / ".cache" / "quire"
    assert config_file() == tmp_path / ".config" / "quire" / "config.toml"


def test_empty_quire_variable_falls_back_to_xdg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUIRE_STATE_DIR", "")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    assert state_dir() == tmp_path / "xdg-state" / "quire"


def test_dirs_are_resolved_on_every_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUIRE_STATE_DIR", str(tmp_path / "one"))
    assert state_dir() == tmp_path / "one"
    monkeypatch.setenv("QUIRE_STATE_DIR", str(tmp_path / "two"))
    assert state_dir() == tmp_path / "two"


DOCKER_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")


@pytest.mark.parametrize(
    "name",
    [
        "proj (copy)",
        "proj",
        "proj.git",
        "My_Proj",
        "a..b",
        "__init__",
        "日本",
        "x" * 80,
        "-a-",
        "a._b",
    ],
)
def test_repo_id_is_always_a_valid_image_name_component(name: str) -> None:
    ident = repo_id(name, f"/srv/git/{name}")
    assert DOCKER_COMPONENT.fullmatch(ident), ident
    assert len(ident) <= 49


def test_repo_id_keeps_a_readable_name_and_tells_same_named_folders_apart() -> None:
    one, two = repo_id("proj", "/a/proj/.git"), repo_id("proj", "/b/proj/.git")
    assert one.startswith("proj-") and two.startswith("proj-")
    assert one != two
    assert repo_id("proj (copy)", "/x").startswith("proj-copy-")
    assert repo_id("proj.git", "/srv/proj.git").startswith("proj-")


def test_repo_id_follows_the_git_dirs_real_path(tmp_path: Path) -> None:
    real = tmp_path / "real.git"
    real.mkdir()
    (tmp_path / "link.git").symlink_to(real)
    assert repo_id("p", tmp_path / "link.git") == repo_id("p", real)
