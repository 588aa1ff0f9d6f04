"""The run store on a fake filesystem: creation, transitions by rename, `latest`, lookups."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem
from pyfakefs.helpers import reset_ids, set_uid

from quire.ci.store.records import ExecutorKind, RunMeta, RunResult, RunTimes, read_record
from quire.ci.store.runs import ALLOWED, InvalidTransition, RunDir, RunState, RunStore, new_run_id
from quire.errors import QuireError, RunNotFound

ROOT = Path("/state/runs/example")
CACHE = Path("/cache/runs/example")
T0 = datetime(2026, 5, 4, 16, 20, 1, tzinfo=UTC)


def meta_for(run_id: str) -> RunMeta:
    return RunMeta(
        run_id=run_id,
        repo="example",
        git_dir="/srv/git/example.git",
        revision="HEAD",
        sha="a" * 40,
        ref="refs/heads/main",
        pushed_at=T0,
        executor=ExecutorKind.host,
    )


@pytest.fixture
def store(fs: FakeFilesystem) -> RunStore:
    return RunStore("example", root=ROOT, cache=CACHE)


def ids_counting_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `new_run_id` use a clock that moves one second per call."""
    import quire.ci.store.runs as runs

    clock = iter(T0 + timedelta(seconds=i) for i in range(1000))
    real = runs.new_run_id
    monkeypatch.setattr(runs, "new_run_id", lambda now=None: real(next(clock)))


def latest_target(store: RunStore) -> str:
    return os.readlink(store.root / "latest")


def test_create_makes_a_pending_run_with_meta(store: RunStore) -> None:
    run = store.create(meta_for)
    assert run.state == RunState.pending
    assert run.path == ROOT / "pending" / run.run_id
    assert run.path.is_dir()
    assert (run.path / "jobs").is_dir()
    assert read_record(run.path / "meta.yml", RunMeta) == meta_for(run.run_id)
    assert run.meta().run_id == run.run_id


def test_create_leaves_no_staging_directory(store: RunStore) -> None:
    run = store.create(meta_for)
    assert sorted(p.name for p in (ROOT / "pending").iterdir()) == [run.run_id]


def test_create_points_latest_at_the_new_run(store: RunStore) -> None:
    run = store.create(meta_for)
    assert latest_target(store) == f"pending/{run.run_id}"
    assert (ROOT / "latest").resolve() == run.path


def test_workspace_lives_in_the_cache_apart_from_records(store: RunStore) -> None:
    run = store.create(meta_for)
    assert run.workspace == CACHE / run.run_id / "workspace"


def test_store_defaults_to_quire_state_and_cache_dirs(
    fs: FakeFilesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUIRE_STATE_DIR", "/elsewhere/state")
    monkeypatch.setenv("QUIRE_CACHE_DIR", "/elsewhere/cache")
    store = RunStore("proj")
    run = store.create(meta_for)
    assert run.path == Path("/elsewhere/state/runs/proj/pending") / run.run_id
    assert run.workspace == Path("/elsewhere/cache/runs/proj") / run.run_id / "workspace"


@pytest.mark.parametrize("final", [RunState.complete, RunState.failed])
def test_transition_pending_active_final_moves_the_directory(
    store: RunStore, final: RunState
) -> None:
    run = store.create(meta_for)
    pending_path = run.path
    run.transition(RunState.active)
    assert run.state == RunState.active
    assert not pending_path.exists()
    assert run.path == ROOT / "active" / run.run_id
    run.write_times(RunTimes(started_at=T0))

    run.transition(final)
    assert run.state == final
    assert run.path == ROOT / final.value / run.run_id
    assert not (ROOT / "active" / run.run_id).exists()
    # Everything written along the way moved with it.
    assert run.meta().run_id == run.run_id
    assert run.times().started_at == T0


def test_transition_pending_to_failed_is_allowed(store: RunStore) -> None:
    run = store.create(meta_for)
    run.transition(RunState.failed)
    assert run.path == ROOT / "failed" / run.run_id


def test_transition_is_a_rename_of_the_same_directory(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = store.create(meta_for)
    renames: list[tuple[str, str]] = []
    real = os.rename

    def spy(src: str, dst: str) -> None:
        renames.append((str(src), str(dst)))
        real(src, dst)

    monkeypatch.setattr(os, "rename", spy)
    run.transition(RunState.active)
    assert renames == [(str(ROOT / "pending" / run.run_id), str(ROOT / "active" / run.run_id))]


@pytest.mark.parametrize(
    ("start", "path", "target"),
    [
        (RunState.complete, [RunState.active, RunState.complete], RunState.active),
        (RunState.complete, [RunState.active, RunState.complete], RunState.failed),
        (RunState.failed, [RunState.failed], RunState.active),
        (RunState.failed, [RunState.failed], RunState.complete),
        (RunState.pending, [], RunState.complete),
        (RunState.pending, [], RunState.pending),
        (RunState.active, [RunState.active], RunState.pending),
        (RunState.active, [RunState.active], RunState.active),
    ],
    ids=lambda v: v.value if isinstance(v, RunState) else None,
)
def test_transition_rejects_moves_the_table_does_not_allow(
    store: RunStore, start: RunState, path: list[RunState], target: RunState
) -> None:
    run = store.create(meta_for)
    for step in path:
        run.transition(step)
    assert run.state == start
    where = run.path
    with pytest.raises(InvalidTransition) as caught:
        run.transition(target)
    assert f"from {start.value} to {target.value}" in str(caught.value)
    assert run.run_id in str(caught.value)
    assert run.state == start
    assert where.is_dir()


def test_transition_rejects_complete_to_active(store: RunStore) -> None:
    run = store.create(meta_for)
    run.transition(RunState.active)
    run.transition(RunState.complete)
    with pytest.raises(InvalidTransition):
        run.transition(RunState.active)
    assert (ROOT / "complete" / run.run_id).is_dir()
    assert not (ROOT / "active" / run.run_id).exists()


def test_final_states_allow_nothing() -> None:
    assert ALLOWED[RunState.complete] == frozenset()
    assert ALLOWED[RunState.failed] == frozenset()


def test_latest_follows_transitions(store: RunStore) -> None:
    run = store.create(meta_for)
    run.transition(RunState.active)
    assert latest_target(store) == f"active/{run.run_id}"
    assert (ROOT / "latest").resolve() == run.path
    run.transition(RunState.complete)
    assert latest_target(store) == f"complete/{run.run_id}"
    assert (ROOT / "latest" / "meta.yml").is_file()


def test_latest_is_not_stolen_by_an_older_run(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids_counting_up(monkeypatch)
    older = store.create(meta_for)
    newer = store.create(meta_for)
    assert older.run_id < newer.run_id
    assert latest_target(store) == f"pending/{newer.run_id}"

    older.transition(RunState.active)
    older.transition(RunState.failed)
    assert latest_target(store) == f"pending/{newer.run_id}"

    newer.transition(RunState.active)
    assert latest_target(store) == f"active/{newer.run_id}"


def test_latest_leaves_no_temporary_links(store: RunStore) -> None:
    run = store.create(meta_for)
    run.transition(RunState.active)
    run.transition(RunState.complete)
    # Every state's directory (made with the first run), the link, and nothing else.
    assert sorted(p.name for p in ROOT.iterdir()) == sorted([*RunState, "latest"])


def test_run_ids_sort_by_creation_time() -> None:
    times = [T0 + timedelta(microseconds=i) for i in (0, 1, 999_999)]
    times += [T0 + timedelta(seconds=1), T0 + timedelta(days=40), T0 + timedelta(days=400)]
    ids = [new_run_id(t) for t in times]
    assert sorted(ids) == ids


def test_run_ids_use_utc_whatever_the_timezone() -> None:
    from datetime import timezone

    east = T0.astimezone(timezone(timedelta(hours=9)))
    assert new_run_id(east)[:22] == new_run_id(T0)[:22]
    assert new_run_id(T0).startswith("20260504-162001-000000-")


def test_run_ids_at_the_same_instant_are_distinct() -> None:
    ids = {new_run_id(T0) for _ in range(200)}
    assert len(ids) == 200


def test_runs_created_in_a_row_are_distinct_and_listed_newest_first(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids_counting_up(monkeypatch)
    created = [store.create(meta_for).run_id for _ in range(5)]
    assert len(set(created)) == 5
    assert [run.run_id for run in store.runs()] == sorted(created, reverse=True)


def test_runs_lists_every_state(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    ids_counting_up(monkeypatch)
    a = store.create(meta_for)
    b = store.create(meta_for)
    b.transition(RunState.active)
    c = store.create(meta_for)
    c.transition(RunState.failed)
    assert [(r.run_id, r.state) for r in store.runs()] == [
        (c.run_id, RunState.failed),
        (b.run_id, RunState.active),
        (a.run_id, RunState.pending),
    ]


def test_find_latest(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    ids_counting_up(monkeypatch)
    store.create(meta_for)
    newest = store.create(meta_for)
    newest.transition(RunState.active)
    found = store.find("latest")
    assert (found.run_id, found.state) == (newest.run_id, RunState.active)


def test_find_latest_without_runs_raises_run_not_found(store: RunStore) -> None:
    with pytest.raises(RunNotFound, match="no runs yet"):
        store.find("latest")


def test_find_by_full_id(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    ids_counting_up(monkeypatch)
    first = store.create(meta_for)
    store.create(meta_for)
    first.transition(RunState.active)
    first.transition(RunState.complete)
    found = store.find(first.run_id)
    assert (found.run_id, found.state, found.path) == (first.run_id, RunState.complete, first.path)


def test_find_by_unique_prefix(store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    ids_counting_up(monkeypatch)
    first = store.create(meta_for)  # ...-162001-...
    second = store.create(meta_for)  # ...-162002-...
    assert store.find(first.run_id[:15]).run_id == first.run_id
    assert store.find(second.run_id[:15]).run_id == second.run_id


def test_find_by_ambiguous_prefix_lists_candidates(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids_counting_up(monkeypatch)
    first = store.create(meta_for)
    second = store.create(meta_for)
    with pytest.raises(RunNotFound) as caught:
        store.find("20260504-1620")
    message = str(caught.value)
    assert "ambiguous" in message
    assert first.run_id in message
    assert second.run_id in message


def test_find_unknown_raises_run_not_found(store: RunStore) -> None:
    store.create(meta_for)
    with pytest.raises(RunNotFound, match="no run '19990101'"):
        store.find("19990101")


def test_find_ignores_staging_directories(store: RunStore) -> None:
    (ROOT / "pending" / ".20260504-162001-000000-abcdef.new").mkdir(parents=True)
    with pytest.raises(RunNotFound):
        store.find("2026")


def test_result_is_none_until_written(store: RunStore) -> None:
    run = store.create(meta_for)
    assert run.result() is None
    run.transition(RunState.failed)
    run.write_result(RunResult(exit_code=3, error="boom"))
    assert run.result() == RunResult(exit_code=3, error="boom")


def test_run_dir_for_a_found_run_reads_the_same_records(store: RunStore) -> None:
    run = store.create(meta_for)
    again = RunDir(store, run.run_id, RunState.pending)
    assert again.meta() == run.meta()


# --- `latest` when what it names is gone, or when it is not a link at all -------------------------


def debris(store: RunStore) -> list[str]:
    return sorted(p.name for p in store.root.iterdir() if p.name.startswith(".latest"))


def test_latest_goes_back_to_an_older_run_when_the_newer_one_it_names_was_deleted(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids_counting_up(monkeypatch)
    older = store.create(meta_for)
    newer = store.create(meta_for)
    shutil.rmtree(newer.path)
    older.transition(RunState.active)
    assert latest_target(store) == f"active/{older.run_id}"
    assert store.find("latest").run_id == older.run_id


@pytest.mark.parametrize(
    "junk",
    [
        lambda link: (link.mkdir(), (link / "left-over.txt").write_text("x\n")),
        lambda link: link.mkdir(),
        lambda link: link.write_text("not a link\n"),
        lambda link: link.symlink_to("../../nowhere/zzzz-not-a-run"),
    ],
    ids=["directory", "empty-directory", "file", "link-to-no-run"],
)
def test_a_junk_latest_is_replaced_by_the_link_and_leaves_no_debris(
    store: RunStore, junk: Callable[[Path], object]
) -> None:
    ROOT.mkdir(parents=True)
    junk(ROOT / "latest")
    run = store.create(meta_for)
    assert latest_target(store) == f"pending/{run.run_id}"
    assert debris(store) == []
    run.transition(RunState.active)
    assert latest_target(store) == f"active/{run.run_id}"
    assert store.find("latest").run_id == run.run_id


def test_a_latest_that_cannot_be_replaced_raises_a_clear_error_and_leaves_no_debris(
    store: RunStore,
) -> None:
    stuck = ROOT / "latest" / "locked"
    stuck.mkdir(parents=True)
    (stuck / "file").write_text("x\n")
    stuck.chmod(0o555)  # its file cannot be removed, so neither can `latest`
    ROOT.chmod(0o777)  # the store itself stays writable for the user below
    set_uid(1000)
    try:
        with pytest.raises(QuireError) as caught:
            store.create(meta_for)
    finally:
        reset_ids()
    message = str(caught.value)
    assert str(ROOT / "latest") in message
    assert "remove it" in message
    assert debris(store) == []


def test_find_latest_falls_back_to_the_newest_run_when_the_link_is_missing(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids_counting_up(monkeypatch)
    store.create(meta_for)
    newest = store.create(meta_for)
    (ROOT / "latest").unlink()
    assert store.find("latest").run_id == newest.run_id


def test_find_latest_falls_back_to_the_newest_run_when_the_link_names_a_deleted_run(
    store: RunStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids_counting_up(monkeypatch)
    older = store.create(meta_for)
    newer = store.create(meta_for)
    shutil.rmtree(newer.path)
    assert store.find("latest").run_id == older.run_id


@pytest.mark.parametrize(
    "junk",
    [lambda link: link.mkdir(), lambda link: link.write_text("x\n")],
    ids=["directory", "file"],
)
def test_find_latest_falls_back_to_the_newest_run_when_latest_is_junk(
    store: RunStore, monkeypatch: pytest.MonkeyPatch, junk: Callable[[Path], object]
) -> None:
    ids_counting_up(monkeypatch)
    store.create(meta_for)
    newest = store.create(meta_for)
    newest.transition(RunState.active)
    (ROOT / "latest").unlink()
    junk(ROOT / "latest")
    found = store.find("latest")
    assert (found.run_id, found.state) == (newest.run_id, RunState.active)


def test_find_latest_with_junk_and_no_runs_says_there_are_no_runs_yet(store: RunStore) -> None:
    (ROOT / "latest").mkdir(parents=True)
    with pytest.raises(RunNotFound, match="no runs yet"):
        store.find("latest")
