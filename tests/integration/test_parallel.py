"""`quire ci run --jobs 3`: independent jobs at the same time, in both executors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_docker_runs import DOCKERFILE, repo_with

pytestmark = pytest.mark.integration

THREE_SLEEPERS = """
from quire.ci import job

@job(inputs=["quire/push"])
def one(rt):
    rt.sh("sleep 1; echo one done")

@job(inputs=["quire/push"])
def two(rt):
    rt.sh("sleep 1; echo two done")

@job(inputs=["quire/push"])
def three(rt):
    rt.sh("sleep 1; echo three done")

@job(inputs=["one", "two", "three"])
def last(rt):
    rt.sh("echo last ran")
"""


@pytest.mark.parametrize("executor", ["host", "docker"])
def test_three_independent_jobs_run_at_the_same_time_with_jobs_3(
    tmp_path: Path, docker_engine: str, executor: str
) -> None:
    files = {".quire/ci.py": THREE_SLEEPERS, ".quire/Dockerfile": DOCKERFILE}
    repo = repo_with(tmp_path, f"parallel-{executor}", files)
    argv = [sys.executable, "-m", "quire", "ci", "run", "--executor", executor, "--repo", str(repo)]
    walls = {}
    for jobs in ("1", "3"):
        t0 = time.monotonic()
        done = subprocess.run([*argv, "--jobs", jobs], capture_output=True, text=True, timeout=120)
        walls[jobs] = time.monotonic() - t0
        assert done.returncode == 0, done.stdout + done.stderr
        for word in ("one done", "two done", "three done", "last ran"):
            assert word in done.stdout
    print(f"{executor}: --jobs 1 took {walls['1']:.2f}s, --jobs 3 took {walls['3']:.2f}s")
    assert "[one] one done" in done.stdout  # lines carry their job when jobs run side by side
    shown = subprocess.run(
        [sys.executable, "-m", "quire", "ci", "show", "latest", "--json", "--repo", str(repo)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    jobs = {job["job_id"]: job for job in json.loads(shown.stdout)["jobs"]}
    sleepers = [jobs[name] for name in ("one", "two", "three")]
    # They overlapped: each started before any of them finished; `last` waited for all.
    assert max(j["started_at"] for j in sleepers) < min(j["finished_at"] for j in sleepers)
    assert jobs["last"]["started_at"] >= max(j["finished_at"] for j in sleepers)
