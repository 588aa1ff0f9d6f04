"""`[artifacts] max_size`: a size in bytes or with a binary unit, 1 GiB by default."""

from __future__ import annotations

from pathlib import Path

import pytest

from quire.config import load_config
from quire.errors import ConfigError


def config_with(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_the_default_limit_is_one_gib(tmp_path: Path) -> None:
    assert load_config(tmp_path / "missing.toml").artifacts.max_size == 1024**3
    assert load_config(config_with(tmp_path, "[docker]\n")).artifacts.max_size == 1024**3


@pytest.mark.parametrize(
    ("value", "size"),
    [("123", 123), ('"500m"', 500 * 1024**2), ('"2GiB"', 2 * 1024**3), ('"64 KiB"', 65536)],
)
def test_max_size_takes_bytes_or_a_unit(tmp_path: Path, value: str, size: int) -> None:
    path = config_with(tmp_path, f"[artifacts]\nmax_size = {value}\n")
    assert load_config(path).artifacts.max_size == size


@pytest.mark.parametrize("value", ['"lots"', '"1.5g"', "-1", '"10 parsecs"'])
def test_a_size_that_is_none_is_a_config_error_naming_the_key(tmp_path: Path, value: str) -> None:
    path = config_with(tmp_path, f"[artifacts]\nmax_size = {value}\n")
    with pytest.raises(ConfigError, match=r"artifacts\.max_size"):
        load_config(path)
