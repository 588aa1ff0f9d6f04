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


# --- [secrets] repos: a secret only the named repositories may read -------------------------------

STORE = "proj-1a2b3c4d"  # a store name: folder `proj`, hash of its git dir


def scoped_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    key = tmp_path / "key"
    key.write_text("deploy-key-value\n")
    monkeypatch.setenv("QUIRE_TEST_TOKEN", "token-value")
    return write_config(
        tmp_path / "c.toml",
        f"""
[secrets]
deploy_key = {{ file = "{key}", repos = ["proj", "infra-*"] }}
plain = "plain-value"
token = {{ env = "QUIRE_TEST_TOKEN", repos = ["proj"] }}
pinned = {{ value = "pinned-value", repos = ["{STORE}"] }}
""",
    )


@pytest.mark.parametrize("glob", ["proj", STORE, "pro*", "proj-*", "p?oj", "[op]roj"])
def test_a_repos_glob_matches_the_store_name_or_its_folder_name(tmp_path: Path, glob: str) -> None:
    path = write_config(
        tmp_path / "c.toml", f'[secrets]\nk = {{ value = "v", repos = ["{glob}"] }}\n'
    )
    assert load_config(path).secrets_for(STORE).get("k") == "v"


@pytest.mark.parametrize(
    "repo", ["proj2-1a2b3c4d", "myproj-1a2b3c4d", "proj-9f9f9f9f-1a2b3c4d", "infra", "proj-x"]
)
def test_a_repos_glob_matches_whole_names_only(tmp_path: Path, repo: str) -> None:
    path = write_config(tmp_path / "c.toml", '[secrets]\nk = { value = "v", repos = ["proj"] }\n')
    assert "k" not in load_config(path).secrets_for(repo).values


def test_a_store_name_glob_does_not_match_another_folder_of_the_same_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(scoped_config(tmp_path, monkeypatch))
    assert config.secrets_for(STORE).get("pinned") == "pinned-value"
    assert "pinned" not in config.secrets_for("proj-00000000").values


def test_a_bare_repository_is_matched_by_its_folder_name_without_dot_git(
    tmp_path: Path,
) -> None:
    from quire.paths import repo_id

    bare = repo_id("proj.git", tmp_path / "proj.git")
    path = write_config(tmp_path / "c.toml", '[secrets]\nk = { value = "v", repos = ["proj"] }\n')
    assert load_config(path).secrets_for(bare).get("k") == "v"


def test_repositories_see_their_scoped_secrets_and_every_unscoped_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(scoped_config(tmp_path, monkeypatch))
    assert config.secrets_for(STORE).values == {
        "deploy_key": "deploy-key-value",
        "plain": "plain-value",
        "token": "token-value",
        "pinned": "pinned-value",
    }
    assert config.secrets_for("infra-web-00ff00ff").values == {
        "deploy_key": "deploy-key-value",
        "plain": "plain-value",
    }
    assert config.secrets_for("other-12345678").values == {"plain": "plain-value"}


def test_a_secret_without_repos_is_readable_by_every_repository(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.toml", '[secrets]\nplain = "x"\ntable = { value = "y" }\n')
    config = load_config(path)
    for repo in (STORE, "anything-00000000", "repo"):
        assert config.secrets_for(repo).values == {"plain": "x", "table": "y"}


def test_a_secret_scoped_elsewhere_is_unknown_and_the_message_lists_only_visible_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(scoped_config(tmp_path, monkeypatch))
    other = config.secrets_for("other-12345678")
    with pytest.raises(UnknownSecret) as hidden:
        other.get("deploy_key")
    with pytest.raises(UnknownSecret) as absent:
        other.get("no_such_secret")
    message = str(hidden.value)
    assert "unknown secret 'deploy_key'" in message
    assert "may read: plain;" in message
    for name in ("token", "pinned"):
        assert name not in message
    assert "-value" not in message
    # Nothing tells a hidden secret from one that does not exist.
    assert message.replace("deploy_key", "NAME") == str(absent.value).replace(
        "no_such_secret", "NAME"
    )


def test_a_hidden_secret_is_not_in_the_values_so_never_sent_nor_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(scoped_config(tmp_path, monkeypatch))
    other = config.secrets_for("other-12345678")
    assert set(other.values) | set(other.unavailable) == {"plain"}
    assert "deploy-key-value" not in other.values.values()
    assert "token-value" not in other.values.values()


def test_a_missing_file_of_a_hidden_secret_is_not_even_read(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-key"
    path = write_config(
        tmp_path / "c.toml",
        f'[secrets]\nk = {{ file = "{missing}", repos = ["proj"] }}\nplain = "x"\n',
    )
    config = load_config(path)
    assert config.secrets_for("other-12345678").values == {"plain": "x"}
    assert config.secrets_for("other-12345678").unavailable == {}
    with pytest.raises(UnknownSecret, match="cannot be read"):
        config.secrets_for(STORE).get("k")


def test_a_repositorys_secrets_are_resolved_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(scoped_config(tmp_path, monkeypatch))
    first = config.secrets_for(STORE)
    (tmp_path / "key").write_text("rotated\n")
    assert config.secrets_for(STORE) is first
    assert first.get("deploy_key") == "deploy-key-value"


def test_config_secrets_still_holds_every_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(scoped_config(tmp_path, monkeypatch))
    assert set(config.secrets.values) == {"deploy_key", "plain", "token", "pinned"}


def test_without_a_config_file_a_repository_has_no_secrets(tmp_path: Path) -> None:
    secrets = load_config(tmp_path / "absent.toml").secrets_for(STORE)
    assert secrets.values == {}
    with pytest.raises(UnknownSecret, match="may read: none"):
        secrets.get("anything")


@pytest.mark.parametrize(
    ("repos", "problem"),
    [
        ('"proj"', "non-empty list"),
        ("[]", "non-empty list"),
        ('[""]', "non-empty string"),
        ('["proj", 3]', "non-empty string"),
        ('["Proj"]', "can never match"),
        ('["proj.git"]', "can never match"),
        ('["srv/proj"]', "can never match"),
    ],
)
def test_a_bad_repos_value_is_a_config_error_naming_the_secret_and_file(
    tmp_path: Path, repos: str, problem: str
) -> None:
    path = write_config(tmp_path / "c.toml", f'[secrets]\nkey = {{ env = "X", repos = {repos} }}\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert "secrets.key.repos" in message
    assert problem in message
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    "spec", ['{ file = "/k", env = "K" }', '{ repos = ["proj"] }', "5", '{ value = "v", x = 1 }']
)
def test_a_secret_needs_exactly_one_of_file_env_or_value(tmp_path: Path, spec: str) -> None:
    path = write_config(tmp_path / "c.toml", f"[secrets]\nkey = {spec}\n")
    with pytest.raises(ConfigError, match=r"secrets\.key"):
        load_config(path)


@pytest.mark.parametrize(
    ("section", "repo", "executor"),
    [
        ("proj", STORE, "docker"),
        (STORE, STORE, "docker"),
        ("proj", "proj-00000000", "docker"),
        (STORE, "proj-00000000", None),
        ("proj", "projx-1a2b3c4d", None),
    ],
)
def test_executor_for_takes_the_store_name_or_the_folder_name(
    tmp_path: Path, section: str, repo: str, executor: str | None
) -> None:
    path = write_config(tmp_path / "c.toml", f'[repositories.{section}]\nexecutor = "docker"\n')
    assert load_config(path).executor_for(repo) == executor


def test_jobs_term_grace_defaults_to_five_seconds_and_must_be_positive(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path / "none.toml", "")).jobs.term_grace == 5.0
    assert (
        load_config(
            write_config(tmp_path / "ok.toml", "[jobs]\nterm_grace = 1.5\n")
        ).jobs.term_grace
        == 1.5
    )
    with pytest.raises(ConfigError, match=r"jobs\.term_grace"):
        load_config(write_config(tmp_path / "bad.toml", "[jobs]\nterm_grace = 0\n"))


def test_docker_sandbox_is_on_unless_the_config_turns_it_off(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path / "none.toml", "")).docker.sandbox is True
    off = write_config(tmp_path / "off.toml", "[docker]\nsandbox = false\n")
    assert load_config(off).docker.sandbox is False
