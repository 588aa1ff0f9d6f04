"""`quire ci run` choosing jobs, and `quire ci jobs`, through typer's CliRunner on real repos."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from quire.ci.store.runs import store_for
from quire.cli.app import app
from tests.helpers import LINT_TESTS_DOCS, make_repo


def quire(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    make_repo(tmp_path / "proj", {".quire/ci.py": LINT_TESTS_DOCS})
    return tmp_path / "proj"


def ran(result: Result) -> list[str]:
    return [
        line.split()[0]
        for line in result.stdout.splitlines()
        if line.endswith(" ran") and not line.startswith("$")
    ]


def test_run_with_job_names_runs_those_and_what_they_need_only(repo: Path) -> None:
    result = quire("ci", "run", "tests", "--repo", str(repo))
    assert result.exit_code == 0, result.output
    assert ran(result) == ["lint", "tests"]
    jobs = json.loads(quire("ci", "show", "latest", "--json", "--repo", str(repo)).stdout)["jobs"]
    assert [job["job_id"] for job in jobs] == ["lint", "tests"]


def test_a_revision_as_the_first_word_still_works_and_rev_is_explicit(repo: Path) -> None:
    assert ran(quire("ci", "run", "HEAD", "docs", "--repo", str(repo))) == ["docs"]
    assert ran(quire("ci", "run", "--rev", "HEAD", "docs", "--repo", str(repo))) == ["docs"]
    assert ran(quire("ci", "run", "--repo", str(repo))) == ["lint", "tests", "docs"]


def test_an_unknown_job_is_exit_2_with_a_suggestion_and_records_nothing(repo: Path) -> None:
    result = quire("ci", "run", "tset", "--repo", str(repo))
    assert result.exit_code == 2
    assert "no job 'tset'" in result.stderr and "did you mean 'tests'?" in result.stderr
    assert list(store_for(repo).runs()) == []


def test_a_word_that_is_no_revision_where_there_is_no_pipeline_is_bad_input(
    tmp_path: Path,
) -> None:
    make_repo(tmp_path / "plain", {"README": "no pipeline here\n"})
    result = quire("ci", "run", "tests", "--repo", str(tmp_path / "plain"))
    assert result.exit_code == 2, result.output
    assert "no revision 'tests'" in result.stderr and "no job 'tests'" in result.stderr
    assert ".quire/ci.py" in result.stderr
    nothing = quire("ci", "run", "--repo", str(tmp_path / "plain"))
    assert nothing.exit_code == 0  # no word: nothing to run, as before
    assert "nothing to run" in nothing.output
    assert quire("ci", "run", "HEAD", "--repo", str(tmp_path / "plain")).exit_code == 0


def test_jobs_lists_each_job_with_its_inputs_and_as_json(repo: Path) -> None:
    listed = quire("ci", "jobs", "--repo", str(repo))
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.splitlines() == [
        "lint   <- quire/push",
        "tests  <- lint",
        "docs   <- quire/push",
    ]
    data = json.loads(quire("ci", "jobs", "--json", "--repo", str(repo)).stdout)
    assert data[1] == {"id": "tests", "inputs": ["lint"], "timeout": None}


def test_a_run_by_hand_tells_no_notify_target(tmp_path: Path) -> None:
    # The README says so: only the worker sends notifications; a terminal run shows its result.
    failing = (
        "from quire.ci import job\n\n"
        "@job(inputs=['quire/push'])\n"
        "def lint(rt):\n"
        "    raise RuntimeError('red')\n"
    )
    make_repo(tmp_path / "proj", {".quire/ci.py": failing})
    state = Path(os.environ["QUIRE_STATE_DIR"])
    Path(os.environ["QUIRE_CONFIG"]).parent.mkdir(parents=True, exist_ok=True)
    Path(os.environ["QUIRE_CONFIG"]).write_text(
        '[[notify]]\nurl = "http://127.0.0.1:9/hook"\non = ["all"]\n'
    )
    result = quire("ci", "run", "--repo", str(tmp_path / "proj"))
    assert result.exit_code == 1, result.output
    (run,) = store_for(tmp_path / "proj").runs()
    assert run.state == "failed"
    assert not (state / "notify.pending").exists()
    assert list(state.rglob("notifications.yml")) == []


def test_only_commands_run_in_the_workspace_not_the_jobs_python(tmp_path: Path) -> None:
    # The README warns of it: a job's Python looking at "dist" looks at quire's directory.
    pipeline = (
        "import os\n"
        "from quire.ci import job\n\n"
        "@job(inputs=['quire/push'])\n"
        "def look(rt):\n"
        "    return {'python': os.getcwd(), 'command': rt.sh('pwd -P').stdout.strip()}\n"
    )
    make_repo(tmp_path / "proj", {".quire/ci.py": pipeline})
    result = quire("ci", "run", "--json", "--repo", str(tmp_path / "proj"))
    assert result.exit_code == 0, result.output
    shown = json.loads(
        quire("ci", "show", "latest", "--json", "--repo", str(tmp_path / "proj")).stdout
    )
    seen = shown["jobs"][0]["outputs"]
    assert seen["command"].endswith("/workspace")
    assert Path(seen["python"]).resolve() == Path.cwd().resolve() != Path(seen["command"])
