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
    # Marked failed where it lies (a rename needs no space), its result maybe not written.
    (failed,) = list((state / "runs").glob("*/failed/*"))
    assert not list((state / "runs").glob("*/active/*"))
    if not (failed / "result.yml").exists():
        assert "quire ci reconcile" in shown, shown

    # While the disk is full, every command says so (exit 3, never 70) and reconcile is
    # not done.
    filler = small_disk / "filler"
    subprocess.run(["sh", "-c", f"cat /dev/zero > {filler}"], capture_output=True)
    (failed / "result.yml").unlink(missing_ok=True)  # as if its end had never been written
    again = subprocess.run(
        [sys.executable, "-m", "quire", "ci", "run", "--executor", "host", "--repo", str(repo)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert again.returncode == 3, again.stdout + again.stderr
    assert "the disk is full" in again.stderr and "internal error" not in again.stderr
    reconcile = [sys.executable, "-m", "quire", "ci", "reconcile", "--repo", str(repo)]
    full = subprocess.run(reconcile, capture_output=True, text=True, env=env, timeout=120)
    assert full.returncode == 3, full.stdout + full.stderr
    assert "No space left on device" in full.stdout + full.stderr

    filler.unlink()  # space again (the job's 1 MiB of output too): reconcile finishes the run
    (failed / "jobs" / "loud" / "log.jsonl").unlink()
    freed = subprocess.run(reconcile, capture_output=True, text=True, env=env, timeout=120)
    assert freed.returncode == 0, freed.stdout + freed.stderr
    assert (failed / "result.yml").exists()
    assert "could not be written" in (failed / "result.yml").read_text()
