"""The local runner as people use it between commits: --dirty, job subsets, what commands
see, pipelines in several files; real quire, real git, both executors where it matters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import LINT_TESTS_DOCS, commit, make_repo
from tests.integration.test_docker_runs import DOCKERFILE, repo_with

pytestmark = pytest.mark.integration

QUIRE = [sys.executable, "-m", "quire", "ci"]


def quire(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*QUIRE, *args], capture_output=True, text=True, timeout=120)


SHOWS_TREE = """
from quire.ci import job

@job(inputs=["quire/push"])
def tree(rt):
    rt.sh("cat tracked.txt; ls -A | sort | tr '\\\\n' ' '; echo")
"""


def test_dirty_runs_the_working_tree_modified_and_untracked_files_never_ignored_ones(
    tmp_path: Path, docker_engine: str
) -> None:
    repo = repo_with(
        tmp_path,
        "dirty",
        {".quire/ci.py": SHOWS_TREE, "tracked.txt": "committed\n", ".gitignore": "ignored.txt\n"},
    )
    (repo / "tracked.txt").write_text("modified in the tree\n")
    (repo / "untracked.txt").write_text("new\n")
    (repo / "ignored.txt").write_text("never\n")

    plain = quire("run", "--repo", str(repo))
    assert plain.returncode == 0, plain.stderr
    assert "committed" in plain.stdout and "untracked.txt" not in plain.stdout
    assert "`quire ci run --dirty` includes them" in plain.stdout  # the one-line note

    dirty = quire("run", "--dirty", "--repo", str(repo))
    assert dirty.returncode == 0, dirty.stderr
    assert "modified in the tree" in dirty.stdout
    assert "untracked.txt" in dirty.stdout and "ignored.txt" not in dirty.stdout
    shown = json.loads(quire("show", "latest", "--json", "--repo", str(repo)).stdout)
    assert shown["dirty"] is True
    assert "+dirty" in quire("runs", "--repo", str(repo)).stdout


def test_validate_dirty_reads_the_fixed_pipeline_before_it_is_committed(
    tmp_path: Path, docker_engine: str
) -> None:
    broken = SHOWS_TREE.replace('inputs=["quire/push"]', 'inputs=["quire/posh"]')
    repo = repo_with(tmp_path, "validate", {".quire/ci.py": broken})
    assert quire("validate", "--repo", str(repo)).returncode == 2
    (repo / ".quire" / "ci.py").write_text(SHOWS_TREE)
    assert quire("validate", "--repo", str(repo)).returncode == 2  # the commit is still broken
    fixed = quire("validate", "--dirty", "--repo", str(repo))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "tree  <- quire/push" in fixed.stdout


def test_a_job_subset_runs_those_jobs_and_their_inputs_only(
    tmp_path: Path, docker_engine: str
) -> None:
    repo = repo_with(tmp_path, "subset", {".quire/ci.py": LINT_TESTS_DOCS})
    done = quire("run", "tests", "--repo", str(repo))
    assert done.returncode == 0, done.stderr
    assert "lint ran" in done.stdout and "tests ran" in done.stdout
    assert "docs ran" not in done.stdout
    typo = quire("run", "tset", "--repo", str(repo))
    assert typo.returncode == 2 and "did you mean 'tests'?" in typo.stderr


ENV = """
from quire.ci import job

@job(inputs=["quire/push"])
def env(rt):
    rt.sh("env | grep -E '^(CI|QUIRE[A-Z_]*)=' | sort")
"""


@pytest.mark.parametrize("executor", ["host", "docker"])
def test_commands_see_ci_and_the_runs_identity_in_both_executors(
    tmp_path: Path, docker_engine: str, executor: str
) -> None:
    repo = repo_with(
        tmp_path, f"env-{executor}", {".quire/ci.py": ENV, ".quire/Dockerfile": DOCKERFILE}
    )
    done = quire("run", "--executor", executor, "--repo", str(repo))
    assert done.returncode == 0, done.stderr
    seen = dict(
        line.split("=", 1) for line in done.stdout.splitlines() if "=" in line and line[0].isupper()
    )
    shown = json.loads(quire("show", "latest", "--json", "--repo", str(repo)).stdout)
    assert seen["CI"] == "true" and seen["QUIRE"] == "true"
    assert seen["QUIRE_RUN_ID"] == shown["id"]
    assert seen["QUIRE_JOB"] == "env"
    assert seen["QUIRE_SHA"] == shown["sha"]
    assert seen["QUIRE_REF"] == "refs/heads/main" and seen["QUIRE_BRANCH"] == "main"
    if executor == "docker":
        assert seen["QUIRE_WORKSPACE"] == "/work"
    else:
        assert seen["QUIRE_WORKSPACE"].endswith("/workspace")


HELPED = """
from quire.ci import job
from helpers import GREETING

@job(inputs=["quire/push"])
def hello(rt):
    rt.sh(["echo", GREETING])
"""


def test_a_helper_module_comes_from_the_commit_unless_the_run_is_dirty(
    tmp_path: Path, docker_engine: str
) -> None:
    repo = repo_with(
        tmp_path,
        "helpers",
        {".quire/ci.py": HELPED, ".quire/helpers.py": "GREETING = 'from the commit'\n"},
    )
    (repo / ".quire" / "helpers.py").write_text("GREETING = 'from the working tree'\n")
    at_commit = quire("run", "--repo", str(repo))
    assert at_commit.returncode == 0, at_commit.stderr
    assert "from the commit" in at_commit.stdout and "from the working tree" not in at_commit.stdout
    dirty = quire("run", "--dirty", "--repo", str(repo))
    assert "from the working tree" in dirty.stdout
    commit(repo, {".quire/helpers.py": "GREETING = 'committed later'\n"})
    again = quire("run", "--repo", str(repo))
    assert "committed later" in again.stdout


def test_run_json_prints_one_summary_on_stdout_and_the_output_on_stderr(
    tmp_path: Path, docker_engine: str
) -> None:
    repo = repo_with(tmp_path, "json", {".quire/ci.py": LINT_TESTS_DOCS})
    done = quire("run", "docs", "--json", "--keep-workspace", "--repo", str(repo))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["state"] == "complete" and summary["exit_code"] == 0
    assert [(job["id"], job["status"]) for job in summary["jobs"]] == [("docs", "success")]
    assert "docs ran" in done.stderr
    kept = Path(summary["workspace"])
    assert (kept / ".quire" / "ci.py").is_file()
    assert f"workspace kept: {kept}" in done.stderr


FAST_STEPS = """
from quire.ci import job

@job(inputs=["quire/push"])
def steps(rt):
    for step in range(500):
        done = rt.sh(["true"])
        if done.exit != 0:
            raise RuntimeError(f"step {step} exited {done.exit}")
"""


def test_five_hundred_fast_host_steps_in_a_row_all_pass(tmp_path: Path) -> None:
    """The host-mode race: a `true` that ends before its pid is recorded is never taken
    for an orphan by the collector (it once failed 2 of 30 runs of 50 steps)."""
    repo = tmp_path / "steps"
    make_repo(repo, {".quire/ci.py": FAST_STEPS})
    done = quire("run", "--repo", str(repo))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "run complete" in done.stdout + done.stderr
