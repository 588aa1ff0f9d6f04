"""The global config file: secrets of three kinds, defaults, and errors that name the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from quire.config import DockerSettings, OutputSettings, load_config
from quire.errors import ConfigError, UnknownSecret
from tests.helpers import fresh_python


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_plain_file_and_env_secrets_resolve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    monkeypatch.setenv("QUIRE_TEST_PYPI", "from-the-env")
    path = write_config(
        tmp_path / "config.toml",
        f"""
[secrets]
plain_one = "hunter2"
github_token = {{ file = "{token_file}" }}
pypi_token = {{ env = "QUIRE_TEST_PYPI" }}
""",
    )
    config = load_config(path)
    assert config.path == path
    assert config.secrets.get("plain_one") == "hunter2"
    assert config.secrets.get("github_token") == "from-a-file"
    assert config.secrets.get("pypi_token") == "from-the-env"


def test_file_secret_strips_only_the_trailing_newline(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  spaced value \r\n")
    path = write_config(tmp_path / "c.toml", f'[secrets]\nt = {{ file = "{token_file}" }}\n')
    assert load_config(path).secrets.get("t") == "  spaced value "


def test_default_config_path_comes_from_quire_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path / "elsewhere" / "quire.toml", '[secrets]\nx = "y"\n')
    monkeypatch.setenv("QUIRE_CONFIG", str(path))
    config = load_config()
    assert config.path == path
    assert config.secrets.get("x") == "y"


def test_default_config_path_follows_xdg_config_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QUIRE_CONFIG")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    write_config(tmp_path / "xdg" / "quire" / "config.toml", '[secrets]\nx = "from-xdg"\n')
    assert load_config().secrets.get("x") == "from-xdg"


def test_missing_config_file_means_no_secrets_and_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path / "absent.toml")
    assert config.secrets.values == {}
    assert config.path is None
    assert config.docker.network is True
    assert config.output.capture_limit == 4 * 1024 * 1024
    with pytest.raises(UnknownSecret, match="configured: none"):
        config.secrets.get("anything")


def test_malformed_toml_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.toml", "[secrets\nplain = 'x'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert "not valid TOML" in str(caught.value)
    assert caught.value.exit_code == 2


def test_invalid_secret_spec_is_a_config_error_naming_the_file_and_key(tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.toml", '[secrets]\nbad = { url = "http://x" }\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert "secrets.bad" in message


def test_unknown_section_is_a_config_error(tmp_path: Path) -> None:
    path = write_config(tmp_path / "config.toml", "[secretz]\nx = 'y'\n")
    with pytest.raises(ConfigError, match="secretz"):
        load_config(path)


def test_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'[secrets]\nx = "\xff"\n')
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path)


def test_unknown_secret_lists_configured_names_never_values(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "config.toml",
        '[secrets]\nalpha = "value-alpha"\nbeta = "value-beta"\nmissing = { env = "QUIRE_NOPE" }\n',
    )
    secrets = load_config(path).secrets
    with pytest.raises(UnknownSecret) as caught:
        secrets.get("gamma")
    message = str(caught.value)
    assert "'gamma'" in message
    assert "alpha, beta, missing" in message
    assert "value-alpha" not in message
    assert "value-beta" not in message


def test_env_secret_whose_variable_is_unset_fails_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QUIRE_TEST_UNSET", raising=False)
    path = write_config(tmp_path / "c.toml", '[secrets]\nt = { env = "QUIRE_TEST_UNSET" }\n')
    secrets = load_config(path).secrets
    with pytest.raises(UnknownSecret, match="QUIRE_TEST_UNSET is not set"):
        secrets.get("t")


def test_file_secret_whose_file_is_missing_fails_only_when_asked(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-token"
    path = write_config(tmp_path / "c.toml", f'[secrets]\nt = {{ file = "{missing}" }}\n')
    secrets = load_config(path).secrets
    with pytest.raises(UnknownSecret) as caught:
        secrets.get("t")
    assert str(missing) in str(caught.value)
    assert "cannot be read" in str(caught.value)


def test_docker_and_output_settings_are_read(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "c.toml",
        '[docker]\ncpus = 2\nmemory = "2g"\nnetwork = false\nceiling = 600\n'
        'labels = { team = "infra" }\n\n[output]\ncapture_limit = 2048\n',
    )
    config = load_config(path)
    assert (config.docker.cpus, config.docker.memory, config.docker.network) == (2, "2g", False)
    assert config.docker.ceiling == 600
    assert config.docker.labels == {"team": "infra"}
    assert config.output.capture_limit == 2048


def test_out_of_range_setting_is_a_config_error(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", "[docker]\ncpus = 0\n")
    with pytest.raises(ConfigError, match=r"docker\.cpus"):
        load_config(path)


# --- [docker]: checked when the file is read ------------------------------------------------------


@pytest.mark.parametrize("memory", ["512m", "2g", "2G", "1024", "1.5g", "64mb", "1gib", "100 m"])
def test_docker_memory_accepts_what_docker_and_podman_accept(tmp_path: Path, memory: str) -> None:
    path = write_config(tmp_path / "c.toml", f'[docker]\nmemory = "{memory}"\n')
    assert load_config(path).docker.memory == memory.strip()


@pytest.mark.parametrize("memory", ["lots", "", "2 gigs", "-1g", "g", "1.2.3m"])
def test_docker_memory_that_is_not_a_size_is_a_config_error_naming_file_and_key(
    tmp_path: Path, memory: str
) -> None:
    path = write_config(tmp_path / "c.toml", f'[docker]\nmemory = "{memory}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert "docker.memory" in message
    assert "512m" in message  # says what a valid value looks like
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("cpus = 0", "docker.cpus"),
        ("ceiling = -5", "docker.ceiling"),
        ('network = "maybe"', "docker.network"),
        ('workspace = "nfs"', "docker.workspace"),
        ('labels = { "a=b" = "x" }', "docker.labels"),
        ('labels = { "with space" = "x" }', "docker.labels"),
        ('labels = { "" = "x" }', "docker.labels"),
        ("cpu = 2", "docker.cpu"),
    ],
)
def test_every_bad_docker_setting_is_a_config_error_naming_its_key(
    tmp_path: Path, text: str, key: str
) -> None:
    path = write_config(tmp_path / "c.toml", f"[docker]\n{text}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert key in str(caught.value)


@pytest.mark.parametrize("mode", ["bind", "copy"])
def test_docker_workspace_mode_is_read(tmp_path: Path, mode: str) -> None:
    path = write_config(tmp_path / "c.toml", f'[docker]\nworkspace = "{mode}"\n')
    assert load_config(path).docker.workspace == mode


def test_docker_workspace_mode_defaults_to_none_meaning_by_engine(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", "[docker]\ncpus = 1\n")
    assert load_config(path).docker.workspace is None


def test_the_defaults_without_a_file_are_the_validated_defaults(tmp_path: Path) -> None:
    config = load_config(tmp_path / "missing.toml")
    assert config.docker == DockerSettings()
    assert config.output == OutputSettings()


def test_a_run_without_a_config_file_builds_no_settings_model(tmp_path: Path) -> None:
    done = fresh_python(
        f"""
from quire.config import DockerSettings, OutputSettings, load_config
config = load_config(__import__("pathlib").Path({str(tmp_path / "missing.toml")!r}))
assert config.docker.network and config.output.capture_limit
print(DockerSettings.__pydantic_complete__, OutputSettings.__pydantic_complete__)
""",
        tmp_path,
    )
    assert (done.returncode, done.stdout) == (0, "False False\n"), done.stderr


def test_quires_models_never_look_for_pydantic_plugins(tmp_path: Path) -> None:
    done = fresh_python(
        """
import importlib.metadata
def no_scan(*args, **kwargs):
    raise AssertionError("pydantic scanned the installed packages for plugins")
importlib.metadata.entry_points = no_scan
from pydantic.plugin import _loader
_loader.entry_points = no_scan
from quire.ci.store.records import RunMeta
from quire.config import DockerSettings
DockerSettings(network=False)
RunMeta.model_rebuild(force=True)
print("built")
""",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("built\n")
