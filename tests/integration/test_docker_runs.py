"""`quire ci run --executor docker` for real: a subprocess against the machine's engine.

Each test commits a pipeline and a `.quire/Dockerfile` (FROM the busybox
base image) to a throwaway repository, runs quire as a user would, and
reads back the exit code, stderr and the run's records. The autouse
fixture in conftest.py checks that no container outlives any test.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from quire.ci.store.logs import LogReader, event_bytes
from quire.ci.store.runs import RunDir, store_for
from tests.helpers import make_repo
from tests.integration.support import (
    BASE_IMAGE,
    SESSION_PREFIX,
    Engine,
    docker_cli,
    without_sandbox,
)

pytestmark = pytest.mark.integration

DOCKERFILE = f"FROM {BASE_IMAGE}\n"
QUIRE_RUN = [sys.executable, "-m", "quire", "ci", "run", "--executor", "docker", "--repo"]


@dataclass
class Quire:
    code: int
    stdout: str
    stderr: str
    repo: Path

    def run(self) -> RunDir:
        return store_for(self.repo).find("latest")

    def outputs(self, job: str) -> dict[str, Any]:
        state = yaml.safe_load((self.run().path / "jobs" / job / "state.yml").read_text())
        assert state["status"] == "success", state
        outputs: dict[str, Any] = state["outputs"]
        return outputs

    def job_state(self, job: str) -> dict[str, Any]:
        state: dict[str, Any] = yaml.safe_load(
            (self.run().path / "jobs" / job / "state.yml").read_text()
        )
        return state

    def container_record(self) -> dict[str, Any]:
        record: dict[str, Any] = yaml.safe_load((self.run().path / "container.yml").read_text())
        return record


def repo_with(tmp_path: Path, name: str, files: dict[str, str | bytes]) -> Path:
    path = tmp_path / f"{SESSION_PREFIX}-{name}"
    make_repo(path, files)
    return path


def quire_run(repo: Path, *args: str, env: dict[str, str] | None = None) -> Quire:
    done = subprocess.run(
        [*QUIRE_RUN, str(repo), *args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    return Quire(done.returncode, done.stdout, done.stderr, repo)


def pipeline(tmp_path: Path, name: str, ci: str, **extra: str | bytes) -> Quire:
    """Commit `ci` and the base Dockerfile to a new repo and run it."""
    files: dict[str, str | bytes] = {".quire/ci.py": ci, ".quire/Dockerfile": DOCKERFILE}
    files.update(extra)
    return quire_run(repo_with(tmp_path, name, files))


def image_exists(tag: str) -> bool:
    return docker_cli("image", "inspect", tag, check=False).returncode == 0


# --- where commands run ---------------------------------------------------------------------------

PROBE = """
from quire.ci import job

@job(inputs=["quire/push"])
def probe(rt):
    uname = rt.sh(["uname", "-a"], check=True).stdout
    hostname = rt.sh(["hostname"], check=True).stdout.strip()
    listing = rt.sh("ls /work", check=True).stdout.split()
    pwd = rt.sh(["pwd"], check=True).stdout.strip()
    return {"uname": uname, "hostname": hostname, "ls": listing, "pwd": pwd}
"""


@pytest.mark.engines("docker", "podman")
def test_job_runs_in_the_container_and_sees_the_workspace(tmp_path: Path) -> None:
    done = pipeline(tmp_path, "probe", PROBE, **{"hello.txt": "hi\n", "src/main.c": "int x;\n"})
    assert done.code == 0, done.stderr
    out = done.outputs("probe")
    container_id = done.container_record()["container_id"]
    assert out["hostname"] != socket.gethostname()
    assert len(out["hostname"]) == 12
    assert container_id.startswith(out["hostname"])
    assert out["uname"].startswith("Linux ")
    assert out["hostname"] in out["uname"]
    assert out["pwd"] == "/work"
    assert sorted(out["ls"]) == ["hello.txt", "src"]


def test_files_written_to_work_land_in_the_host_workspace(tmp_path: Path) -> None:
    ci = """
    from quire.ci import job

    @job(inputs=["quire/push"])
    def write(rt):
        rt.sh("echo made in the container > /work/artifact.txt", check=True)
    """
    repo = repo_with(tmp_path, "artifact", {".quire/ci.py": ci, ".quire/Dockerfile": DOCKERFILE})
    done = quire_run(repo, "--keep-workspace")
    assert done.code == 0, done.stderr
    artifact = done.run().workspace / "artifact.txt"
    assert artifact.read_text() == "made in the container\n"


def test_a_workspace_path_with_a_comma_is_mounted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUIRE_CACHE_DIR", str(tmp_path / "cache,with a comma"))
    done = pipeline(tmp_path, "comma", PROBE, **{"hello.txt": "hi\n"})
    assert done.code == 0, done.stderr
    assert done.outputs("probe")["ls"] == ["hello.txt"]


# --- commands, output, environment, exits ---------------------------------------------------------

SHELL = r"""
from quire.ci import job

@job(inputs=["quire/push"])
def shell(rt):
    piped = rt.sh("printf '%s\n' 'a b' \"c'd\" x | tr a-z A-Z | sort -r", check=True)
    split = rt.sh("echo to-out; echo to-err >&2")
    return {"piped": piped.stdout, "out": split.stdout, "err": split.stderr}
"""


def test_string_commands_keep_pipes_and_quotes_and_streams_stay_apart(tmp_path: Path) -> None:
    done = pipeline(tmp_path, "shell", SHELL)
    assert done.code == 0, done.stderr
    out = done.outputs("shell")
    assert out["piped"] == "X\nC'D\nA B\n"
    assert out["out"] == "to-out\n"
    assert out["err"] == "to-err\n"
    events = list(LogReader(done.run().path / "jobs" / "shell" / "log.jsonl"))
    stdout = b"".join(event_bytes(e) for e in events if e["event"] == "stdout")
    stderr = b"".join(event_bytes(e) for e in events if e["event"] == "stderr")
    assert b"to-out\n" in stdout and b"to-err" not in stdout
    assert stderr == b"to-err\n"


ENV = r"""
from quire.ci import job

VALUE = "two  spaces, a=b, 'single' \"double\" $HOME `tick`\nsecond line "

@job(inputs=["quire/push"])
def env(rt):
    got = rt.sh(["sh", "-c", 'printf %s "$WEIRD"'], env={"WEIRD": VALUE}, check=True).stdout
    if got != VALUE:
        raise RuntimeError(f"env arrived changed: {got!r}")
    path = rt.sh("echo $PATH", env={"WEIRD": VALUE}, check=True).stdout.strip()
    if not path:
        raise RuntimeError("env replaced the container's PATH")
    return {"path": path}
"""


@pytest.mark.engines("docker", "podman")
def test_env_values_with_spaces_quotes_and_newlines_arrive_intact(tmp_path: Path) -> None:
    done = pipeline(tmp_path, "env", ENV)
    assert done.code == 0, done.stdout + done.stderr
    assert done.job_state("env")["status"] == "success"
    assert "/bin" in done.outputs("env")["path"].split(":")


def test_non_utf8_output_is_kept_as_base64_in_the_job_log(tmp_path: Path) -> None:
    ci = r"""
    from quire.ci import job

    @job(inputs=["quire/push"])
    def binary(rt):
        rt.sh(["printf", "\\377\\376 raw \\200"], check=True)
    """
    done = pipeline(tmp_path, "binary", ci)
    assert done.code == 0, done.stderr
    events = list(LogReader(done.run().path / "jobs" / "binary" / "log.jsonl"))
    chunks = [e for e in events if e["event"] == "stdout"]
    assert any(e.get("encoding") == "base64" for e in chunks)
    assert b"".join(event_bytes(e) for e in chunks) == b"\xff\xfe raw \x80"


EXITS = """
from quire.ci import job

@job(inputs=["quire/push"])
def exits(rt):
    return {
        "seven": rt.sh("exit 7").exit,
        "argv": rt.sh(["sh", "-c", "exit 255"]).exit,
        "ok": rt.sh(["true"]).exit,
        "missing": rt.sh(["no-such-program"]).exit,
    }
"""


@pytest.mark.engines("docker", "podman")
def test_exit_codes_propagate_to_sh_output(tmp_path: Path, engine: Engine) -> None:
    done = pipeline(tmp_path, "exits", EXITS)
    assert done.code == 0, done.stderr
    # `docker exec` reports a program it cannot find as 126, `podman exec` as 127.
    missing = 127 if engine.is_podman else 126
    assert done.outputs("exits") == {"seven": 7, "argv": 255, "ok": 0, "missing": missing}


CHECKED = """
from quire.ci import job

@job(inputs=["quire/push"])
def broken(rt):
    rt.sh("exit 3", check=True)

@job(inputs=["broken"])
def after(rt):
    rt.sh("true")

@job(inputs=["quire/push"])
def missing(rt):
    rt.sh(["no-such-program"], check=True)
"""


def test_check_true_and_a_missing_program_fail_their_jobs_and_the_run(tmp_path: Path) -> None:
    done = pipeline(tmp_path, "checked", CHECKED)
    assert done.code == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    broken = done.job_state("broken")
    assert broken["status"] == "failed"
    assert "exited 3" in broken["error"]
    assert done.job_state("after")["status"] == "skipped"
    missing = done.job_state("missing")
    assert missing["status"] == "failed"
    assert "exited 126" in missing["error"]
    log = (done.run().path / "jobs" / "missing" / "log.jsonl").read_text()
    assert "executable file not found" in log
    assert done.run().state.value == "failed"


# --- one container per run ------------------------------------------------------------------------

TWO_JOBS = """
from quire.ci import job

@job(inputs=["quire/push"])
def first(rt):
    rt.sh("echo left by first > /marker", check=True)
    return {"hostname": rt.sh(["hostname"], check=True).stdout.strip()}

@job(inputs=["first"])
def second(rt):
    return {
        "hostname": rt.sh(["hostname"], check=True).stdout.strip(),
        "marker": rt.sh(["cat", "/marker"], check=True).stdout,
        "first": rt.jobs("first")["hostname"],
    }
"""


@pytest.mark.engines("docker", "podman")
def test_two_jobs_share_one_container_and_container_yml_is_complete(tmp_path: Path) -> None:
    done = pipeline(tmp_path, "two-jobs", TWO_JOBS)
    assert done.code == 0, done.stderr
    first, second = done.outputs("first"), done.outputs("second")
    assert first["hostname"] == second["hostname"] == second["first"]
    assert second["marker"] == "left by first\n"
    run = done.run()
    record = done.container_record()
    assert set(record) == {
        "image_tag",
        "container_id",
        "build_started_at",
        "build_finished_at",
        "container_started_at",
        "container_stopped_at",
    }
    assert all(record.values()), record
    repo = store_for(done.repo).repo
    assert record["image_tag"] == f"quire-ci/{repo}:{run.run_id}"
    assert record["container_id"].startswith(first["hostname"])
    assert (
        record["build_started_at"]
        <= record["build_finished_at"]
        <= record["container_started_at"]
        <= record["container_stopped_at"]
    )
    starts = [e for e in LogReader(run.path / "log.jsonl") if e["event"] == "container-start"]
    assert len(starts) == 1
    # The run's tag goes with the run; :latest stays for the next build's cache.
    assert not image_exists(record["image_tag"])
    assert image_exists(f"quire-ci/{repo}:latest")


# --- environment failures: exit 3 -----------------------------------------------------------------

NOOP = """
from quire.ci import job

@job(inputs=["quire/push"])
def noop(rt):
    rt.sh(["true"], check=True)
"""


def test_a_failing_dockerfile_exits_3_with_dockers_message(tmp_path: Path) -> None:
    marker = f"{SESSION_PREFIX}-{secrets.token_hex(4)}"
    dockerfile = f"FROM {BASE_IMAGE}\nRUN echo {marker}; exit 3\n"
    done = quire_run(
        repo_with(tmp_path, "bad-build", {".quire/ci.py": NOOP, ".quire/Dockerfile": dockerfile})
    )
    assert done.code == 3, done.stdout + done.stderr
    assert "returned a non-zero code: 3" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    record = done.container_record()
    assert record["build_started_at"] is not None
    assert record.get("container_id") is None
    assert record.get("container_started_at") is None
    assert not image_exists(record["image_tag"])
    assert done.run().state.value == "failed"
    # The failed RUN step's intermediate container is not left behind either.
    commands = docker_cli(
        "ps",
        "--all",
        "--no-trunc",
        "--filter",
        f"ancestor={BASE_IMAGE}",
        "--format",
        "{{.Command}}",
    ).stdout
    assert marker not in commands


def test_an_unknown_dockerfile_instruction_exits_3_with_dockers_message(tmp_path: Path) -> None:
    done = quire_run(
        repo_with(tmp_path, "frum", {".quire/ci.py": NOOP, ".quire/Dockerfile": "FRUM nothing\n"})
    )
    assert done.code == 3, done.stdout + done.stderr
    assert "unknown instruction: FRUM" in done.stderr


def test_a_repository_without_a_dockerfile_exits_3_naming_it(tmp_path: Path) -> None:
    done = quire_run(repo_with(tmp_path, "no-dockerfile", {".quire/ci.py": NOOP}))
    assert done.code == 3, done.stdout + done.stderr
    assert "error:" in done.stderr
    assert ".quire/Dockerfile" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_an_unreachable_docker_host_exits_3_without_a_traceback(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, "no-daemon", {".quire/ci.py": NOOP, ".quire/Dockerfile": DOCKERFILE})
    done = quire_run(repo, env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert done.code == 3, done.stdout + done.stderr
    assert "docker is unavailable" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert done.run().state.value == "failed"


def test_an_image_that_cannot_start_its_container_exits_3_and_is_untagged(
    tmp_path: Path,
) -> None:
    # FROM scratch with no `sleep`: the build works, `docker run` cannot start.
    dockerfile = "FROM scratch\nCOPY hello.txt /hello.txt\n"
    repo = repo_with(
        tmp_path,
        "no-sleep",
        {".quire/ci.py": NOOP, ".quire/Dockerfile": dockerfile, "hello.txt": "hi\n"},
    )
    done = quire_run(repo)
    assert done.code == 3, done.stdout + done.stderr
    assert "starting a container" in done.stderr
    assert '"sleep"' in done.stderr
    record = done.container_record()
    assert record["build_finished_at"] is not None
    assert record.get("container_id") is None
    assert not image_exists(record["image_tag"])


# --- interrupts -----------------------------------------------------------------------------------

SLOW = """
from quire.ci import job

@job(inputs=["quire/push"])
def slow(rt):
    rt.sh(["sleep", "60"])
"""


@pytest.mark.engines("docker", "podman")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_command_exits_130_and_removes_the_container(
    tmp_path: Path, signum: signal.Signals
) -> None:
    repo = repo_with(tmp_path, "slow", {".quire/ci.py": SLOW, ".quire/Dockerfile": DOCKERFILE})
    proc = subprocess.Popen(
        [*QUIRE_RUN, str(repo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    try:
        store = store_for(repo)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            logs = list(store.root.glob("active/*/jobs/slow/log.jsonl"))
            if logs and "sh-start" in logs[0].read_text():
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        else:
            pytest.fail("the job's command never started")
        time.sleep(0.3)  # let docker exec get going
        started = time.monotonic()
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stdout + stderr
    assert time.monotonic() - started < 10
    run = store.find("latest")
    assert run.state.value == "failed"
    record = yaml.safe_load((run.path / "container.yml").read_text())
    assert record["container_stopped_at"] is not None


# --- timeouts, a container that goes away, secrets ------------------------------------------------

TIMEOUT = """
from quire.ci import job
from quire.errors import CommandTimedOut

@job(inputs=["quire/push"])
def slow(rt):
    try:
        rt.sh(["sleep", "37"], timeout=1)
    except CommandTimedOut as exc:
        timed_out = str(exc)
    else:
        raise RuntimeError("sleep 37 was not stopped")
    left = rt.sh(["ps", "-o", "args"], check=True).stdout
    return {"timed_out": timed_out, "processes": left}
"""


def test_a_timed_out_command_is_killed_inside_the_container_too(tmp_path: Path) -> None:
    started = time.monotonic()
    done = pipeline(tmp_path, "timeout", TIMEOUT)
    assert done.code == 0, done.stdout + done.stderr
    assert time.monotonic() - started < 30
    out = done.outputs("slow")
    assert "timeout of 1s" in out["timed_out"]
    # Killing the docker client alone would leave `sleep 37` running in the container.
    assert "sleep 37" not in out["processes"]
    assert "sleep" in out["processes"]  # PID 1, the container's own sleep, stays


VANISHING = """
import os, subprocess
from quire.ci import job

@job(inputs=["quire/push"])
def vanish(rt):
    me = rt.sh(["hostname"], check=True).stdout.strip()
    engine = os.environ.get("QUIRE_DOCKER", "docker")
    subprocess.run([engine, "rm", "--force", me], check=True, capture_output=True)
    rt.sh(["true"])

@job(inputs=["quire/push"])
def later(rt):
    rt.sh(["true"])
"""


@pytest.mark.engines("docker", "podman")
def test_a_container_that_disappears_mid_run_fails_the_run_with_exit_3(tmp_path: Path) -> None:
    without_sandbox()  # the job's Python removes its container through the engine's CLI
    done = pipeline(tmp_path, "vanish", VANISHING)
    assert done.code == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    vanish = done.job_state("vanish")
    assert vanish["status"] == "failed"
    assert "died" in vanish["error"]
    assert done.job_state("later")["status"] == "skipped"
    events = [e["event"] for e in LogReader(done.run().path / "log.jsonl")]
    assert "container-died" in events


SECRET = """
from quire.ci import job

@job(inputs=["quire/push"])
def publish(rt):
    token = rt.secret("registry_token")
    out = rt.sh("echo token=$TOKEN; test \\"$TOKEN\\" = 'hunter2 and more'",
                env={"TOKEN": token}, check=True)
    if out.stdout != "token=hunter2 and more\\n":
        raise RuntimeError("the command did not get the secret")
"""


def test_a_secret_passed_as_env_reaches_the_command_but_no_record(tmp_path: Path) -> None:
    config = Path(os.environ["QUIRE_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('[secrets]\nregistry_token = "hunter2 and more"\n')
    done = pipeline(tmp_path, "secret", SECRET)
    assert done.code == 0, done.stdout + done.stderr
    assert "hunter2" not in done.stdout + done.stderr
    run = done.run()
    for path in run.path.rglob("*"):
        if path.is_file():
            assert b"hunter2" not in path.read_bytes(), path
    assert "token=***" in (run.path / "jobs" / "publish" / "log.jsonl").read_text()
