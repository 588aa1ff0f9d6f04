"""[docker] limits in the config file reach `docker run`, through the whole `quire ci run`.

The config file is read by the CLI as a user would have it; the `docker`
shim of test_docker_executor.py records the argv DockerExecutor builds.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from quire.ci.store.runs import store_for
from quire.paths import state_dir
from tests.unit.test_docker_executor import (  # noqa: F401  (fake_docker is a fixture)
    FakeDocker,
    docker_repo,
    fake_docker,
    run_cli,
)


def write_config(text: str) -> None:
    config = Path(os.environ["QUIRE_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def labels(argv: list[str]) -> dict[str, str]:
    pairs = [argv[i + 1] for i, part in enumerate(argv) if part == "--label"]
    return dict(pair.split("=", 1) for pair in pairs)


def test_config_limits_reach_the_docker_run_argv(
    fake_docker: FakeDocker,  # noqa: F811
    tmp_path: Path,
) -> None:
    write_config(
        "[docker]\n"
        "cpus = 1.5\n"
        'memory = "512m"\n'
        "network = false\n"
        "ceiling = 120\n"
        'labels = { team = "infra", "quire.run-id" = "forged" }\n'
    )
    code, _, err = run_cli(docker_repo(tmp_path))
    assert code == 0, err
    (run,) = fake_docker.argvs("run")
    assert flag(run, "--cpus") == "1.5"
    assert flag(run, "--memory") == "512m"
    assert flag(run, "--network") == "none"
    store = store_for(tmp_path / "proj")
    (recorded,) = store.runs()
    assert labels(run) == {
        "team": "infra",
        "quire.run-id": recorded.run_id,  # a configured label cannot forge the run's own
        "quire.repo": store.repo,
        "quire.store": str(state_dir()),
        "quire.host": socket.gethostname(),
    }
    assert run[-2:] == ["sleep", "120"]
    # Limits are flags of the container, never of the commands run in it.
    for argv in fake_docker.argvs("exec"):
        assert "--cpus" not in argv and "--memory" not in argv and "--network" not in argv


def test_without_a_docker_section_docker_run_has_no_limits_and_network(
    fake_docker: FakeDocker,  # noqa: F811
    tmp_path: Path,
) -> None:
    write_config('[secrets]\nplain = "x"\n')
    code, _, err = run_cli(docker_repo(tmp_path))
    assert code == 0, err
    (run,) = fake_docker.argvs("run")
    for name in ("--cpus", "--memory", "--network"):
        assert name not in run
    assert run[-2:] == ["sleep", str(6 * 3600)]


def test_network_true_in_the_config_keeps_the_default_network(
    fake_docker: FakeDocker,  # noqa: F811
    tmp_path: Path,
) -> None:
    write_config("[docker]\nnetwork = true\ncpus = 2\n")
    code, _, err = run_cli(docker_repo(tmp_path))
    assert code == 0, err
    (run,) = fake_docker.argvs("run")
    assert "--network" not in run
    assert flag(run, "--cpus") == "2"


def test_an_invalid_docker_section_exits_2_naming_the_file_before_docker_does_anything(
    fake_docker: FakeDocker,  # noqa: F811
    tmp_path: Path,
) -> None:
    write_config("[docker]\ncpus = 0\nswap = true\n")
    code, _, err = run_cli(docker_repo(tmp_path))
    assert code == 2
    assert os.environ["QUIRE_CONFIG"] in err
    assert "docker.cpus" in err and "docker.swap" in err
    # At most the read-only container listing a docker run starts with (cancelled here).
    assert set(fake_docker.subcommands()) <= {"ps"}
