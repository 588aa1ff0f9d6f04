"""The hook and the worker on a full disk: the push still succeeds (with a warning), and a
worker that cannot write the queue says so and retries until it can.

A real full filesystem: a small tmpfs mounted over the test's state directory (needs root;
skipped otherwise), filled with a filler file.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from quire.paths import state_dir
from tests.helpers import git
from tests.integration.test_worker import OK_PIPELINE, all_done, pushable, rows, wait_for, worker

pytestmark = pytest.mark.integration


@pytest.fixture
def small_state_dir() -> Iterator[Path]:
    """The state directory on its own 4 MiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    state = state_dir()
    state.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "--lazy", str(state)], check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem of `directory` to the last byte."""
    filler = directory / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


def test_a_push_on_a_full_disk_succeeds_with_a_warning(
    tmp_path: Path, small_state_dir: Path
) -> None:
    bare, work = pushable(tmp_path, "full", {".quire/ci.py": OK_PIPELINE})
    fill(small_state_dir)
    done = subprocess.run(
        ["git", "push", "origin", "HEAD:main"], cwd=work, capture_output=True, text=True
    )
    assert done.returncode == 0
    assert "quire: warning: no CI run queued for refs/heads/main" in done.stderr
    assert "the push itself succeeded" in done.stderr
    assert git(bare, "rev-parse", "main") == git(work, "rev-parse", "HEAD")


def test_a_worker_on_a_full_disk_reports_and_runs_the_push_once_there_is_room(
    tmp_path: Path, small_state_dir: Path
) -> None:
    _bare, work = pushable(tmp_path, "full-worker", {".quire/ci.py": OK_PIPELINE})
    done = subprocess.run(
        ["git", "push", "origin", "HEAD:main"], cwd=work, capture_output=True, text=True
    )
    assert "quire: queued run" in done.stderr, done.stderr  # no worker yet: it waits
    filler = fill(small_state_dir)
    with worker(tmp_path, ready="retrying in") as proc:
        assert "disk" in (tmp_path / "worker.log").read_text()  # full, or an I/O error
        filler.unlink()
        wait_for(all_done(1), "the run once there is room", proc=proc)
    (row,) = rows()
    assert row.outcome == "complete"
