"""The CLI's exit codes, through typer's CliRunner, on real git repos in tmp."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from quire.cli.app import app
from tests.helpers import make_repo

runner = CliRunner()

PASSING = """
from quire.ci import job

@job(inputs=["quire/push"])
def hello(rt):
    rt.sh(["echo", "hello from the job"])
"""

FAILING = """
from quire.ci import job

@job(inputs=["quire/push"])
def broken(rt):
    rt.sh("exit 4", check=True)

@job(inputs=["broken"])
def after(rt):
    pass
"""


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_run_exits_0_when_every_job_succeeds(tmp_path: Path) -> None:
    make_repo(tmp_path / "proj", {".quire/ci.py": PASSING})
    code, out, _ = invoke("ci", "run", "--repo", str(tmp_path / "proj"))
    assert code == 0
    assert "==> hello" in out
    assert "hello from the job" in out


def test_run_exits_1_and_names_the_failed_job(tmp_path: Path) -> None:
    make_repo(tmp_path / "proj", {".quire/ci.py": FAILING})
    code, out, _ = invoke("ci", "run", "--repo", str(tmp_path / "proj"))
    assert code == 1
    assert "broken  failed" in out
    assert "after   skipped" in out


def test_run_exits_0_with_a_message_when_there_is_no_pipeline(tmp_path: Path) -> None:
    make_repo(tmp_path / "proj", {"README": "nothing here"})
    code, out, _ = invoke("ci", "run", "--repo", str(tmp_path / "proj"))
    assert code == 0
    assert "no .quire/ci.py" in out


def test_run_exits_2_for_an_unknown_revision(tmp_path: Path) -> None:
    make_repo(tmp_path / "proj", {".quire/ci.py": PASSING})
    code, _, err = invoke("ci", "run", "--rev", "no-such-branch", "--repo", str(tmp_path / "proj"))
    assert code == 2
    assert "error: unknown revision 'no-such-branch'" in err
    # A first word that is neither a commit nor a job: both are said.
    code, _, err = invoke("ci", "run", "no-such-branch", "--repo", str(tmp_path / "proj"))
    assert code == 2
    assert "no revision 'no-such-branch' in the repository, and no job 'no-such-branch'" in err


def test_run_exits_2_outside_a_repository(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    code, _, err = invoke("ci", "run", "--repo", str(tmp_path / "plain"))
    assert code == 2
    assert "is not a git repository" in err


def test_validate_exits_2_with_file_and_line_for_a_syntax_error(tmp_path: Path) -> None:
    make_repo(tmp_path / "proj", {".quire/ci.py": "from quire.ci import job\n\ndef broken(:\n"})
    code, out, err = invoke("ci", "validate", "--repo", str(tmp_path / "proj"))
    assert code == 2
    assert err.startswith("error: invalid pipeline: .quire/ci.py:3: syntax error")
    assert "Traceback" not in out + err


def test_run_exits_3_when_docker_is_unavailable(tmp_path: Path) -> None:
    # QUIRE_DOCKER is the unit suite's guard, which fails every call (conftest.py).
    make_repo(tmp_path / "proj", {".quire/ci.py": PASSING, ".quire/Dockerfile": "FROM x\n"})
    code, _, err = invoke("ci", "run", "--repo", str(tmp_path / "proj"), "--executor", "docker")
    assert code == 3
    assert "docker is unavailable" in err
