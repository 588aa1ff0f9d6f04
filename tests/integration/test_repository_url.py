"""Repositories by URL: a worker fetches a queued run's pushed object into its own mirror
(`$QUIRE_CACHE_DIR/mirrors/<repo>.git`) and runs it from there, with real git, the hook and
`quire ci worker` processes (the helpers of test_worker.py).

The worker never reads the pushed repository itself: the run still works once that
repository is gone, whether its object is already in the mirror (a run again) or the
configured URL is another repository than the pushed one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from quire.ci.store.records import RunMeta, RunResult, read_record
from quire.ci.store.runs import RunState, RunStore
from quire.paths import cache_dir, state_dir
from quire.service.queue import Push, Queue, queue_path, repository_name, utc_text
from quire.service.wake import wake_all
from tests.helpers import git
from tests.integration.test_worker import (
    OK_PIPELINE,
    all_done,
    push,
    pushable,
    rows,
    wait_for,
    worker,
)

pytestmark = pytest.mark.integration


def configure_url(bare: Path, url: str) -> None:
    """`[repositories."<store name>"] url = URL` in the config file the hook reads."""
    path = Path(__import__("os").environ["QUIRE_CONFIG"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[repositories."{repository_name(str(bare))}"]\nurl = "{url}"\n')


def mirror_of(bare: Path) -> Path:
    return cache_dir() / "mirrors" / f"{repository_name(str(bare))}.git"


def run_of(bare: Path, run_id: str) -> tuple[RunState, RunMeta, RunResult]:
    run = RunStore(repository_name(str(bare))).find(run_id)
    meta = read_record(run.path / "meta.yml", RunMeta)
    return run.state, meta, read_record(run.path / "result.yml", RunResult)


def test_a_run_again_comes_from_the_mirror_once_the_pushed_repository_is_gone(
    tmp_path: Path,
) -> None:
    bare, work = pushable(tmp_path, "mirror", {".quire/ci.py": OK_PIPELINE})
    sha = git(work, "rev-parse", "HEAD")
    with worker(tmp_path) as proc:
        push(work, "HEAD:main")
        wait_for(all_done(1), "the pushed run", proc=proc)
        (first,) = rows()
        assert first.url is None and first.outcome == "complete", first.message
        mirror = mirror_of(bare)
        assert git(mirror, "cat-file", "-t", sha) == "commit"
        assert git(mirror, "rev-parse", "refs/quire/heads/main") == sha
        bare.rename(tmp_path / "moved-away.git")
        with Queue(queue_path(state_dir())) as queue:  # the same push, queued again
            (again,) = queue.enqueue([Push(str(bare), "refs/heads/main", sha, utc_text())])
        wake_all(str(state_dir()))
        wait_for(all_done(2), "the run again", proc=proc)
    done = {row.run_id: row for row in rows()}[again.run_id]
    assert done.outcome == "complete", done.message
    state, meta, _ = run_of(bare, again.run_id)
    # Recorded under the pushed repository, as the first run was, not under the mirror.
    assert (state, meta.sha, meta.git_dir) == (RunState.complete, sha, str(bare))


def test_a_configured_url_is_fetched_instead_of_the_pushed_path(tmp_path: Path) -> None:
    bare, work = pushable(tmp_path, "byurl", {".quire/ci.py": OK_PIPELINE})
    upstream = tmp_path / "githost" / "byurl.git"
    git(tmp_path, "init", "-q", "--bare", str(upstream))
    git(work, "push", "-q", str(upstream), "HEAD:refs/heads/main")
    configure_url(bare, f"file://{upstream}")
    push(work, "HEAD:main")
    (row,) = rows()
    assert row.url == f"file://{upstream}"
    shutil.rmtree(bare)  # only the URL is left to fetch from
    with worker(tmp_path) as proc:
        wait_for(all_done(1), "the run", proc=proc)
    (row,) = rows()
    assert row.outcome == "complete", row.message
    state, meta, _ = run_of(bare, row.run_id)
    assert (state, meta.git_dir) == (RunState.complete, str(bare))
    assert git(mirror_of(bare), "cat-file", "-t", git(work, "rev-parse", "HEAD")) == "commit"


def test_an_object_the_url_does_not_have_fails_the_run_naming_both(tmp_path: Path) -> None:
    bare, work = pushable(tmp_path, "missing", {".quire/ci.py": OK_PIPELINE})
    empty = tmp_path / "githost" / "empty.git"
    git(tmp_path, "init", "-q", "--bare", str(empty))
    configure_url(bare, f"file://{empty}")
    sha = git(work, "rev-parse", "HEAD")
    with worker(tmp_path) as proc:
        push(work, "HEAD:main")
        wait_for(all_done(1), "the run", proc=proc)
        # The worker goes on: a later push that can be fetched runs.
        configure_url(bare, f"file://{bare}")
        git(work, "commit", "-q", "--allow-empty", "-m", "again")
        push(work, "HEAD:main")
        wait_for(all_done(2), "the next run", proc=proc)
    failed, complete = sorted(rows(), key=lambda row: row.seq)
    assert (failed.outcome, failed.reason) == ("failed", "error")
    assert f"file://{empty}" in (failed.message or "") and sha in (failed.message or "")
    state, _, result = run_of(bare, failed.run_id)
    assert state == RunState.failed
    assert f"file://{empty}" in (result.error or "") and sha in (result.error or "")
    assert complete.outcome == "complete", complete.message


def test_a_pushed_repository_whose_path_has_percent_signs_and_spaces_is_fetched(
    tmp_path: Path,
) -> None:
    from quire.ci.run import mirror
    from quire.service.queue import file_url

    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q")
    git(work, "commit", "-q", "--allow-empty", "-m", "x")
    sha = git(work, "rev-parse", "HEAD")
    # git decodes %XX in a file:// URL: `proj%41` unquoted would name `projA`.
    bare = tmp_path / "a b" / "proj%41#1?.git"
    bare.mkdir(parents=True)
    git(bare, "init", "-q", "--bare")
    git(work, "push", "-q", str(bare), "HEAD:refs/heads/main")
    (tmp_path / "a b" / "projA#1?.git").mkdir()  # what the unquoted URL would name
    fetched = mirror.fetch("proj-1", file_url(str(bare)), sha, "refs/heads/main")
    assert git(fetched, "cat-file", "-t", sha) == "commit"
