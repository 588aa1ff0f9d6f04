"""Everything a run shows or stores goes through its outlet: masked once, wherever it came from.

Secrets printed by the image build, quoted in a failed build's error, printed
by a job's own Python code and passed to `rt.log` never reach the terminal,
the state dir or the cache dir; a job's print() is part of its logged output.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from quire.ci.store.runs import store_for
from quire.paths import cache_dir, state_dir
from tests.integration.test_docker_runs import DOCKERFILE, Quire, quire_run, repo_with
from tests.integration.test_streaming import files_under, quire, write_config

pytestmark = pytest.mark.integration


def fresh_secret() -> str:
    value = f"s3cr3t-{secrets.token_hex(8)}"
    write_config(f'[secrets]\ntok = "{value}"\n')
    return value


def assert_nowhere_on_disk(value: str) -> None:
    for root in (state_dir(), cache_dir()):
        for path in files_under(root) if root.exists() else []:
            assert value.encode() not in path.read_bytes(), path


TALK = """
from quire.ci import job

@job(inputs=["quire/push"])
def talk(rt):
    print("token:", rt.secret("tok"))
    rt.sh("echo from the command")
    rt.log("message " + rt.secret("tok"))
    print("after", end="")
"""


def test_a_jobs_print_and_rt_log_are_masked_logged_in_order_and_quiet_under_quiet(
    tmp_path: Path, docker_engine: str
) -> None:
    value = fresh_secret()
    repo = repo_with(tmp_path, "talk", {".quire/ci.py": TALK})
    run = quire_run(repo, "--executor", "host")
    assert run.code == 0, run.stderr
    assert value not in run.stdout + run.stderr
    expected = "token: ***\n$ echo from the command\nfrom the command\nmessage ***\nafter"
    assert expected in run.stdout

    logs = quire("ci", "logs", "latest", "talk", "--repo", str(repo))
    assert logs.wait(30) == 0
    assert bytes(logs.out.data) == f"==> talk\n{expected}".encode()

    quiet = quire_run(repo, "--executor", "host", "--quiet")
    assert quiet.code == 0, quiet.stderr
    for word in ("token:", "from the command", "message", "after"):
        assert word not in quiet.stdout + quiet.stderr
    assert "run complete in " in quiet.stdout
    assert_nowhere_on_disk(value)


def build_with(tmp_path: Path, step: str) -> Quire:
    """A docker run of a do-nothing pipeline whose Dockerfile has one more `step`."""
    ci = 'from quire.ci import job\n\n@job(inputs=["quire/push"])\ndef a(rt):\n    pass\n'
    files = {".quire/ci.py": ci, ".quire/Dockerfile": f"{DOCKERFILE}{step}\n"}
    return quire_run(repo_with(tmp_path, "build", files))


def test_secrets_in_the_image_builds_output_are_masked_everywhere(
    tmp_path: Path, docker_engine: str
) -> None:
    value = fresh_secret()
    run = build_with(tmp_path, f'RUN echo "the build printed {value}"')
    assert run.code == 0, run.stderr
    assert "the build printed ***" in run.stdout + run.stderr
    assert value not in run.stdout + run.stderr
    log = next(
        p for p in files_under(state_dir()) if p.name == "log.jsonl" and "jobs" not in str(p)
    )
    assert "the build printed ***" in log.read_text()
    assert_nowhere_on_disk(value)


def test_a_secret_quoted_by_a_failing_builds_error_is_masked_everywhere(
    tmp_path: Path, docker_engine: str
) -> None:
    value = fresh_secret()
    run = build_with(tmp_path, f'RUN test "{value}" = nothing-like-it')
    assert run.code == 3, run.stdout + run.stderr
    assert "returned a non-zero code: 1" in run.stderr
    assert "***" in run.stderr
    assert value not in run.stdout + run.stderr
    assert_nowhere_on_disk(value)


CHATTY = """
from quire.ci import job

@job(inputs=["quire/push"])
def chatty(rt):
    rt.sh("i=0; while [ $i -lt 20000 ]; do echo line $i; i=$((i+1)); done")

@job(inputs=["chatty"])
def after(rt):
    rt.sh("echo the next job ran")
"""


def test_a_closed_terminal_pipe_stops_the_screen_only_the_run_goes_on(
    tmp_path: Path, docker_engine: str
) -> None:
    repo = repo_with(tmp_path, "head", {".quire/ci.py": CHATTY})
    proc = subprocess.Popen(
        [sys.executable, "-m", "quire", "ci", "run", "--repo", str(repo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # `| head -1`
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(60) == 0, err
    assert first.startswith(b"run ")
    assert b"error" not in err and b"Traceback" not in err, err
    done = quire_run(repo, "--executor", "host")  # a second run, read whole
    assert done.code == 0
    shown = quire("ci", "show", latest_but_one(repo), "--repo", str(repo))
    assert shown.wait(30) == 0
    assert b"state     complete" in bytes(shown.out.data)
    logs = quire("ci", "logs", latest_but_one(repo), "after", "--repo", str(repo))
    assert logs.wait(30) == 0
    assert b"the next job ran" in bytes(logs.out.data)


def latest_but_one(repo: Path) -> str:
    runs = sorted(run.run_id for run in store_for(repo).runs())
    return runs[-2]


@pytest.mark.parametrize("command", [["show", "latest"], ["logs", "latest"], ["runs"]])
def test_a_reader_that_stops_early_ends_history_commands_quietly(
    tmp_path: Path, docker_engine: str, command: list[str]
) -> None:
    repo = repo_with(tmp_path, "reader", {".quire/ci.py": CHATTY})
    assert quire_run(repo, "--executor", "host").code == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "quire", "ci", *command, "--repo", str(repo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(60) == 0, err
    assert err == b""
