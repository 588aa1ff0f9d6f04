"""The run index's publishing and mirroring, with a fake index for the database: what a
scan ships when a file grows, is rewritten, renamed (the run moves) or deleted; that a
publisher resumes exactly where the index is after a lost connection; and that a mirror
built from the shipped changes holds the very bytes the worker's run directory holds.

The real PostgreSQL side is tests/integration/test_run_index_postgres.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quire.ci.store import shipping
from quire.ci.store.mirror import Mirror
from quire.ci.store.records import RunnerInfo, write_record
from quire.ci.store.runs import RunState
from quire.ci.store.shipping import (
    PRUNED,
    FileChange,
    FileKind,
    Marks,
    RunRow,
    Shipped,
    marks_of,
    scan,
)
from quire.ci.store.views import summarize
from quire.service.errors import QueueUnavailable
from quire.service.pgindex.publisher import Publisher
from quire.service.queue import Entry
from tests.unit.test_worker_loop_fakes import entry

RUN = "20261204-120000-000000-abcdef"
REPO = entry().repo


def run_dir(tmp_path: Path, state: str = "active") -> Path:
    path = tmp_path / "worker" / "runs" / REPO / state / RUN
    (path / "jobs" / "build").mkdir(parents=True)
    return path


def kinds(changes: list[FileChange]) -> list[tuple[str, FileKind, int, bytes]]:
    return [(c.path, c.kind, c.at, c.data) for c in changes]


# --- scan -------------------------------------------------------------------------------------


def test_a_new_run_ships_every_file_whole_but_the_local_only_ones(tmp_path: Path) -> None:
    path = run_dir(tmp_path)
    (path / "meta.yml").write_text("run_id: x\n")
    (path / "jobs" / "build" / "log.jsonl").write_bytes(b'{"a": 1}\n')
    write_record(path / "runner.yml", RunnerInfo(pid=1, host="h"))
    (path / "processes.yml").write_text("processes: []\n")
    (path / ".meta.yml.123.tmp").write_text("half")
    changes, _ = scan(RUN, path, {})
    assert kinds(changes) == [
        ("jobs/build/log.jsonl", FileKind.whole, 0, b'{"a": 1}\n'),
        ("meta.yml", FileKind.whole, 0, b"run_id: x\n"),
    ]


def test_a_growing_log_ships_only_its_new_bytes_at_the_old_size(tmp_path: Path) -> None:
    path = run_dir(tmp_path)
    log = path / "jobs" / "build" / "log.jsonl"
    log.write_bytes(b"one\n")
    _, marks = scan(RUN, path, {})
    with log.open("ab") as handle:
        handle.write(b"two\nthr")  # a torn last line goes as it is: the rest follows
    changes, marks = scan(RUN, path, marks)
    assert kinds(changes) == [("jobs/build/log.jsonl", FileKind.append, 4, b"two\nthr")]
    assert scan(RUN, path, marks)[0] == []


def test_a_record_rewritten_ships_whole_only_when_its_content_changed(tmp_path: Path) -> None:
    path = run_dir(tmp_path)
    record = path / "times.yml"
    record.write_text("started_at: a\n")
    _, marks = scan(RUN, path, {})
    record.write_text("started_at: a\n")  # a new inode, the same bytes
    assert scan(RUN, path, marks)[0] == []
    record.write_text("started_at: a\nfinished_at: b\n")
    changes, _ = scan(RUN, path, marks)
    assert kinds(changes) == [("times.yml", FileKind.whole, 0, b"started_at: a\nfinished_at: b\n")]
    assert changes[0].digest is not None


def test_a_deleted_file_ships_a_deletion_and_a_log_that_shrank_goes_whole(tmp_path: Path) -> None:
    path = run_dir(tmp_path)
    (path / "container.yml").write_text("image_tag: t\n")
    (path / "log.jsonl").write_bytes(b"one\ntwo\n")
    _, marks = scan(RUN, path, {})
    (path / "container.yml").unlink()
    (path / "log.jsonl").write_bytes(b"new\n")
    changes, marks = scan(RUN, path, marks)
    assert kinds(changes) == [  # deletions first (a file may become a directory)
        ("container.yml", FileKind.delete, 0, b""),
        ("log.jsonl", FileKind.whole, 0, b"new\n"),
    ]
    assert "container.yml" not in marks


def test_a_large_file_goes_in_chunks_and_links_are_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shipping, "CHUNK_BYTES", 4)
    path = run_dir(tmp_path)
    (path / "artifacts" / "build").mkdir(parents=True)
    (path / "artifacts" / "build" / "out.bin").write_bytes(b"0123456789")
    (tmp_path / "secret").write_text("not the run's")
    (path / "artifacts" / "build" / "link").symlink_to(tmp_path / "secret")
    changes, marks = scan(RUN, path, {})
    assert kinds(changes) == [
        ("artifacts/build/out.bin", FileKind.whole, 0, b"0123"),
        ("artifacts/build/out.bin", FileKind.append, 4, b"4567"),
        ("artifacts/build/out.bin", FileKind.append, 8, b"89"),
    ]
    assert marks["artifacts/build/out.bin"].size == 10


def test_the_marks_rebuilt_from_what_was_shipped_are_the_scans_own(tmp_path: Path) -> None:
    path = run_dir(tmp_path)
    (path / "meta.yml").write_text("run_id: x\n")
    (path / "log.jsonl").write_bytes(b"one\n")
    first, marks = scan(RUN, path, {})
    with (path / "log.jsonl").open("ab") as handle:
        handle.write(b"two\n")
    second, marks = scan(RUN, path, marks)
    rebuilt = marks_of(Shipped(c.path, c.kind, c.end, c.digest) for c in first + second)
    assert {k: (m.size, m.digest) for k, m in rebuilt.items()} == {
        k: (m.size, m.digest) for k, m in marks.items()
    }


# --- the publisher, against a fake index --------------------------------------------------------


class FakeIndex:
    """The run index in memory. `fail_before` ship calls raise before storing anything;
    `fail_after` ones store the batch and then raise (the commit happened, its answer was
    lost with the connection)."""

    def __init__(self) -> None:
        self.rows: dict[str, RunRow] = {}
        self.changes: list[FileChange] = []
        self.seq = 0
        self.fail_before = 0
        self.fail_after = 0
        self.lost_runs: list[tuple[str, str]] = []
        self.marks_asked = 0

    def ship(self, rows: list[RunRow], changes: list[FileChange]) -> None:
        if self.fail_before:
            self.fail_before -= 1
            raise QueueUnavailable("cannot publish runs to the queue database: gone")
        for change in changes:
            self.seq += 1
            self.changes.append(change.model_copy(update={"seq": self.seq}))
        for row in rows:
            self.seq += 1
            self.rows[row.run_id] = row.model_copy(update={"seq": self.seq})
        if self.fail_after:
            self.fail_after -= 1
            raise QueueUnavailable("cannot publish runs to the queue database: reset")

    def marks(self, run_id: str) -> Marks:
        self.marks_asked += 1
        return marks_of(
            Shipped(c.path, c.kind, c.end, c.digest) for c in self.changes if c.run_id == run_id
        )

    def state(self, run_id: str) -> str | None:
        row = self.rows.get(run_id)
        return None if row is None else row.state

    def lost(self, run_id: str, message: str) -> bool:
        self.lost_runs.append((run_id, message))
        return True

    def close(self) -> None:
        pass

    def after(self, seq: int) -> tuple[list[RunRow], list[FileChange]]:
        rows = [r for r in self.rows.values() if r.seq > seq]
        return rows, [c for c in self.changes if c.seq > seq]


def running() -> Entry:
    return entry(run_id=RUN, state="running")


def publisher(tmp_path: Path, index: FakeIndex) -> Publisher:
    made = Publisher(index, "w1", tmp_path / "worker")
    made.track(running())
    return made


def mirrored(tmp_path: Path, index: FakeIndex, mirror: Mirror) -> None:
    rows, changes = index.after(mirror.seq())
    mirror.apply(rows, changes, index.seq)


def same_tree(source: Path, copy: Path) -> None:
    def files(root: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file() and shipping.shipped_path(p.relative_to(root).as_posix())
        }

    assert files(copy) == files(source)


def test_a_run_published_as_it_goes_is_mirrored_byte_for_byte(tmp_path: Path) -> None:
    index = FakeIndex()
    pub = publisher(tmp_path, index)
    path = run_dir(tmp_path, "pending")
    (path / "meta.yml").write_text("run_id: x\n")
    pub.publish()
    assert index.rows[RUN].state == "pending" and index.rows[RUN].worker == "w1"
    mirror = Mirror(tmp_path / "reader" / "mirror")
    mirrored(tmp_path, index, mirror)
    log = path / "jobs" / "build" / "log.jsonl"
    active = path.parent.parent / "active" / RUN
    path.parent.parent.joinpath("active").mkdir()
    os.rename(path, active)  # the run started: its directory moved
    (active / "jobs" / "build" / "log.jsonl").write_bytes(b"one\n")
    pub.publish()
    mirrored(tmp_path, index, mirror)
    copy = mirror.runs_root / REPO / "active" / RUN
    assert (copy / "jobs" / "build" / "log.jsonl").read_bytes() == b"one\n"
    with (active / "jobs" / "build" / "log.jsonl").open("ab") as handle:
        handle.write(b"two\n")
    (active / "result.yml").write_text("exit_code: 0\nreason: null\n")
    (path.parent.parent / "complete").mkdir()
    done = path.parent.parent / "complete" / RUN
    os.rename(active, done)
    pub.finish(RUN)
    assert RUN not in pub.runs  # all shipped: no longer published
    mirrored(tmp_path, index, mirror)
    store = mirror.store(REPO)
    (found,) = list(store.runs())
    assert found.state == RunState.complete and store.find("latest").run_id == RUN
    same_tree(done, found.path)
    assert summarize(found).worker == "w1"
    assert not log.exists()


def test_after_a_lost_connection_the_publisher_resumes_where_the_index_is(tmp_path: Path) -> None:
    index = FakeIndex()
    pub = publisher(tmp_path, index)
    path = run_dir(tmp_path)
    log = path / "log.jsonl"
    log.write_bytes(b"one\n")
    pub.publish()
    with log.open("ab") as handle:
        handle.write(b"two\n")
    index.fail_before = 1  # the server is away: nothing stored
    pub.publish()
    with log.open("ab") as handle:
        handle.write(b"three\n")
    index.fail_after = 1  # stored, but the answer was lost
    pub.publish()
    with log.open("ab") as handle:
        handle.write(b"four\n")
    pub.publish()
    shipped = [c for c in index.changes if c.path == "log.jsonl"]
    assert [(c.at, c.data) for c in shipped] == [
        (0, b"one\n"),
        (4, b"two\nthree\n"),
        (14, b"four\n"),
    ]
    assert index.marks_asked == 3  # at first, and after each failure
    mirror = Mirror(tmp_path / "reader" / "mirror")
    mirrored(tmp_path, index, mirror)
    assert (mirror.runs_root / REPO / "active" / RUN / "log.jsonl").read_bytes() == (
        b"one\ntwo\nthree\nfour\n"
    )


def test_a_run_whose_last_batch_fails_stays_published_until_it_ships(tmp_path: Path) -> None:
    index = FakeIndex()
    pub = publisher(tmp_path, index)
    path = run_dir(tmp_path)
    (path / "meta.yml").write_text("run_id: x\n")
    index.fail_before = 1
    pub.finish(RUN)
    assert RUN in pub.runs
    pub.publish()
    assert RUN not in pub.runs and RUN in index.rows


def test_a_run_that_never_made_its_directory_is_dropped_when_it_ends(tmp_path: Path) -> None:
    index = FakeIndex()
    pub = publisher(tmp_path, index)
    pub.publish()
    pub.finish(RUN)
    assert pub.runs == {} and index.rows == {}


# --- the mirror ---------------------------------------------------------------------------------


def row(state: str, seq: int) -> RunRow:
    return RunRow(
        run_id=RUN,
        repo=REPO,
        git_dir="/g",
        worker="w2",
        state_dir="/s",
        state=state,
        seq=seq,
    )


def whole(path: str, data: bytes, seq: int) -> FileChange:
    return FileChange(run_id=RUN, path=path, kind=FileKind.whole, data=data, seq=seq)


def test_a_batch_applied_twice_writes_each_chunk_once(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "mirror")
    changes = [
        whole("log.jsonl", b"one\n", 1),
        FileChange(run_id=RUN, path="log.jsonl", kind=FileKind.append, at=4, data=b"two\n", seq=2),
    ]
    mirror.apply([row("active", 3)], changes, 3)
    mirror.apply([row("active", 3)], changes[1:], 3)  # a sync cut off and done again
    path = mirror.runs_root / REPO / "active" / RUN / "log.jsonl"
    assert path.read_bytes() == b"one\ntwo\n"
    assert mirror.seq() == 3


def test_an_empty_batch_is_a_sync_and_a_pruned_run_goes(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "mirror")
    mirror.apply([], [], 0)
    mirror.apply([row("active", 2)], [whole("meta.yml", b"x", 1)], 2)
    assert [r.run_id for r in mirror.store(REPO).runs()] == [RUN]
    mirror.apply([row(PRUNED, 5)], [], 5)
    assert list(mirror.store(REPO).runs()) == []
    assert mirror.locate(REPO, RUN) is None


def test_a_change_leading_outside_its_run_is_refused(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "mirror")
    mirror.apply(
        [row("active", 3)],
        [whole("../../escaped", b"x", 1), whole("jobs/../../escaped2", b"x", 2)],
        3,
    )
    assert not list(tmp_path.rglob("escaped*"))


def test_a_row_whose_names_would_lead_outside_the_mirror_is_refused(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "a" / "b" / "mirror")
    bad = [
        row("active", 1).model_copy(update={"repo": "../../outside"}),
        row("active", 2).model_copy(update={"run_id": ".."}),
        row("active", 3).model_copy(update={"run_id": "../x"}),
    ]
    mirror.apply(bad, [], 3)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b"]
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["mirror"]
    assert list((tmp_path / "a").rglob("active")) == []


# --- review of issue 21: races and replacements ---------------------------------------------------


def test_a_run_moving_while_it_is_scanned_ships_no_deletions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = FakeIndex()
    pub = publisher(tmp_path, index)
    path = run_dir(tmp_path)
    (path / "jobs" / "build" / "log.jsonl").write_bytes(b"one\n")
    (path / "meta.yml").write_text("run_id: x\n")
    pub.publish()
    done = path.parent.parent / "complete" / RUN
    real_scan = shipping.scan

    def scan_as_it_moves(run_id: str, root: Path, marks: Marks) -> tuple[list[FileChange], Marks]:
        # The child finishes between the publisher's look and its scan: running/ -> complete/.
        if root.is_dir() and root != done:
            done.parent.mkdir(exist_ok=True)
            os.rename(root, done)
        return real_scan(run_id, root, marks)

    monkeypatch.setattr("quire.service.pgindex.publisher.scan", scan_as_it_moves)
    pub.publish()
    pub.publish()
    assert [c for c in index.changes if c.kind == FileKind.delete] == []
    assert index.rows[RUN].state == "complete"
    assert len([c for c in index.changes if c.path == "meta.yml"]) == 1  # not shipped twice


def test_a_file_replaced_by_a_directory_and_back_is_mirrored(tmp_path: Path) -> None:
    index = FakeIndex()
    pub = publisher(tmp_path, index)
    path = run_dir(tmp_path)
    (path / "out").write_bytes(b"a file\n")
    mirror = Mirror(tmp_path / "reader" / "mirror")
    pub.publish()
    mirrored(tmp_path, index, mirror)
    copy = mirror.runs_root / REPO / "active" / RUN
    (path / "out").unlink()
    (path / "out").mkdir()
    (path / "out" / "inner").write_bytes(b"now a directory\n")
    pub.publish()
    mirrored(tmp_path, index, mirror)
    assert (copy / "out" / "inner").read_bytes() == b"now a directory\n"
    (path / "out" / "inner").unlink()
    (path / "out").rmdir()
    (path / "out").write_bytes(b"a file again\n")
    pub.publish()
    mirrored(tmp_path, index, mirror)
    assert (copy / "out").read_bytes() == b"a file again\n"
    same_tree(path, copy)


def test_a_mirror_makes_room_for_a_change_whatever_stands_in_its_way(tmp_path: Path) -> None:
    # Changes in any order (an index written by another quire): a file where a directory
    # goes, a directory where a file goes, a deletion of a directory.
    mirror = Mirror(tmp_path / "mirror")
    mirror.apply([row("active", 2)], [whole("out", b"x", 1)], 2)
    mirror.apply([], [whole("out/inner", b"y", 3)], 3)
    copy = mirror.runs_root / REPO / "active" / RUN
    assert (copy / "out" / "inner").read_bytes() == b"y"
    mirror.apply([], [whole("out", b"z", 4)], 4)
    assert (copy / "out").read_bytes() == b"z"
    mirror.apply([], [whole("d/inner", b"y", 5)], 5)
    mirror.apply([], [FileChange(run_id=RUN, path="d", kind=FileKind.delete, seq=6)], 6)
    assert not (copy / "d").exists() and mirror.seq() == 6


def test_a_readers_page_holds_up_to_its_bytes_and_at_least_one_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader = pytest.importorskip("quire.service.pgindex.reader")
    monkeypatch.setattr(reader, "PAGE_BYTES", 10)
    assert reader._page([4, 6, 1]) == 2
    assert reader._page([4, 5]) == 2
    assert reader._page([11, 1]) == 1  # alone larger than a page: it comes alone
    assert reader._page([]) == 0


def test_a_large_log_and_file_are_shipped_a_bounded_batch_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shipping, "CHUNK_BYTES", 1000)
    monkeypatch.setattr(shipping, "SCAN_BYTES", 4000)
    index = FakeIndex()
    shipped: list[int] = []
    ship = index.ship

    def counted(rows: list[RunRow], changes: list[FileChange]) -> None:
        shipped.append(sum(len(c.data) for c in changes))
        ship(rows, changes)

    index.ship = counted  # type: ignore[method-assign]
    pub = publisher(tmp_path, index)
    path = run_dir(tmp_path)
    log = path / "jobs" / "build" / "log.jsonl"
    log.write_bytes(b"x" * 9999 + b"\n")
    (path / "artifact.bin").write_bytes(bytes(range(256)) * 30)
    pub.publish()
    assert shipped == [4000]
    mirror = Mirror(tmp_path / "reader" / "mirror")
    done = path.parent.parent / "complete" / RUN
    done.parent.mkdir()
    os.rename(path, done)
    pub.finish(RUN)  # everything left, in as many batches as it takes
    assert RUN not in pub.runs
    assert max(shipped) <= 4000 and sum(shipped) == 10000 + 256 * 30
    mirrored(tmp_path, index, mirror)
    same_tree(done, mirror.runs_root / REPO / "complete" / RUN)
    # Resumed from what the index holds (a new publisher), a file half shipped is finished.
    half = FakeIndex()
    first = publisher(tmp_path, half)
    first.publish()
    second = Publisher(half, "w1", tmp_path / "worker")
    second.track(running())
    second.finish(RUN)
    mirrored(tmp_path, half, fresh := Mirror(tmp_path / "other" / "mirror"))
    same_tree(done, fresh.runs_root / REPO / "complete" / RUN)


def test_a_run_is_not_seen_finished_before_a_later_page_brings_the_rest_of_its_log(
    tmp_path: Path,
) -> None:
    # A page of a sync ends inside a run's changes; its row (fetched with the page, since
    # the page holds its files) is already `complete`, at a seq beyond the page.
    mirror = Mirror(tmp_path / "mirror")
    mirror.apply([row("active", 2)], [whole("log.jsonl", b"one\n", 1)], 2)
    tail = FileChange(run_id=RUN, path="log.jsonl", kind=FileKind.append, at=4, data=b"two\n")
    mirror.apply([row("complete", 9)], [whole("meta.yml", b"x", 3)], 3)
    (seen,) = list(mirror.store(REPO).runs())
    assert seen.state == RunState.active  # not finished with half its log
    mirror.apply([row("complete", 9)], [tail.model_copy(update={"seq": 8})], 9)
    (seen,) = list(mirror.store(REPO).runs())
    assert seen.state == RunState.complete
    assert (seen.path / "log.jsonl").read_bytes() == b"one\ntwo\n"


def test_following_a_mirrored_run_that_moves_between_a_look_and_a_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from quire.ci.store import views

    mirror = Mirror(tmp_path / "mirror")
    line = b'{"event": "stdout", "data": "hello\\n"}\n'
    mirror.apply(
        [row("active", 3)],
        [whole("jobs/build/log.jsonl", line, 1), whole("meta.yml", b"run_id: x\n", 2)],
        3,
    )
    real_reader = views.LogReader
    moved: list[bool] = []

    def reader_as_it_moves(path: Path) -> views.LogReader:
        # The follower thread syncs the run's end (active/ -> complete/) just now, after the
        # log was looked for and before it is opened.
        if not moved and "active" in path.parts and path.name == "log.jsonl":
            moved.append(True)
            mirror.apply([row("complete", 5)], [whole("result.yml", b"exit_code: 0\n", 4)], 5)
        return real_reader(path)

    monkeypatch.setattr(views, "LogReader", reader_as_it_moves)
    events: list[object] = []
    outcome, _ = views.follow(
        mirror.store(REPO), RUN, None, events.append, poll_s=0, alive=lambda run: True
    )
    assert outcome.state == RunState.complete and moved
    assert [type(event).__name__ for event in events] == ["JobStarted", "Output"]


def test_a_change_whose_run_id_would_lead_outside_the_mirror_is_refused(tmp_path: Path) -> None:
    # No row comes with it: the mirror looks for its run among those it has.
    mirror = Mirror(tmp_path / "a" / "mirror")
    mirror.apply([row("active", 2)], [whole("meta.yml", b"x", 1)], 2)
    (tmp_path / "outside").mkdir()
    escape = FileChange(
        run_id="../../../../../outside", path="planted", kind=FileKind.whole, data=b"!", seq=3
    )
    mirror.apply([], [escape], 3)
    assert list((tmp_path / "outside").iterdir()) == []
    assert mirror.seq() == 3


def test_a_file_whose_name_is_not_utf8_is_not_shipped(tmp_path: Path) -> None:
    # The index keeps paths as text: such a name could not be stored, and the batch with
    # it would fail at every try.
    path = run_dir(tmp_path)
    os.close(os.open(os.fsencode(path) + b"/bad\xff.txt", os.O_CREAT | os.O_WRONLY, 0o600))
    (path / "meta.yml").write_text("run_id: x\n")
    changes, marks = scan(RUN, path, {})
    assert [c.path for c in changes] == ["meta.yml"] and list(marks) == ["meta.yml"]
    for change in changes:
        change.path.encode("utf-8")


def test_a_jobs_plain_output_stays_home_and_an_artifact_of_that_name_goes() -> None:
    assert not shipping.shipped_path("jobs/build/output.txt")  # readers decode log.jsonl
    assert shipping.shipped_path("jobs/build/log.jsonl")
    assert shipping.shipped_path("artifacts/build/output.txt")


def test_a_finished_run_is_not_shown_finished_before_its_last_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shipping, "CHUNK_BYTES", 1000)
    monkeypatch.setattr(shipping, "SCAN_BYTES", 4000)
    index = FakeIndex()
    pub = publisher(tmp_path, index)
    path = run_dir(tmp_path, "complete")  # it ended before a batch could ship it all
    (path / "jobs" / "build" / "log.jsonl").write_bytes(b"x" * 9999 + b"\n")
    states = []
    for _ in range(3):
        pub.publish()
        states.append(index.rows[RUN].state)
    assert states == ["active", "active", "complete"]
    mirror = Mirror(tmp_path / "reader" / "mirror")
    mirrored(tmp_path, index, mirror)
    same_tree(path, mirror.runs_root / REPO / "complete" / RUN)
