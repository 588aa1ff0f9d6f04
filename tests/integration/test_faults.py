"""A state dir on a full disk: the run says so and ends with exit 3, it does not crash."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_docker_runs import repo_with

pytestmark = pytest.mark.integration

LOUD = """
from quire.ci import job

@job(inputs=["quire/push"])
def loud(rt):
    rt.sh("head -c 10485760 /dev/zero | tr '\\\\0' x")

@job(inputs=["quire/push"])
def other(rt):
    rt.sh("echo the other job ran")
"""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only: mounting needs it)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


def test_a_full_state_dir_ends_the_run_with_exit_3_naming_the_disk_and_path(
    tmp_path: Path, small_disk: Path, docker_engine: str
) -> None:
    repo = repo_with(tmp_path, "full-disk", {".quire/ci.py": LOUD})
    state = small_disk / "state"
    env = {**os.environ, "QUIRE_STATE_DIR": str(state)}
    done = subprocess.run(
        [sys.executable, "-m", "quire", "ci", "run", "--executor", "host", "--repo", str(repo)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    shown = done.stdout + done.stderr
    assert done.returncode == 3, shown
    assert "internal error" not in shown and "Traceback" not in shown
    assert f"cannot write {state}" in done.stderr
    assert "No space left on device" in done.stderr and "the disk is full" in done.stderr
    assert "the other job ran" not in done.stdout
    # Finalized as failed where its end could be written; else left for reconcile, said so.
    finished = list((state / "runs").glob("*/failed/*/result.yml"))
    left = list((state / "runs").glob("*/active/*"))
    assert finished or (left and "quire ci reconcile" in shown), shown
