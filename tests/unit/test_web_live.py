"""Following a running run: output from an offset, job changes, the move at the end."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from quire.ci.store.runs import RunDir, RunState
from quire.ci.store.views import RunDetails
from quire.web import live
from quire.web.live import RunFollower, parse_offsets
from quire.web.lookup import StoreView
from tests.unit.test_web_support import Store, line, out, run_id, untimed


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state")


def rows(run: RunDetails) -> dict[str, str]:
    return {"html": ",".join(f"{job.job_id}={job.status.value}" for job in run.jobs)}


def follower(store: Store, **kwargs: object) -> RunFollower:
    view = StoreView(store.state / "runs")
    return RunFollower(view, view.run("proj", run_id(1)), rows, **kwargs)  # type: ignore[arg-type]


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(data)


def outputs(messages: list[live.Message]) -> str:
    return untimed("".join(data["html"] for name, data in messages if name == "output"))


def test_follows_output_as_it_is_appended_then_ends_after_the_move(store: Store) -> None:
    path = store.add(1, state="active", jobs={"build": line("sh-start", cmd="make")})
    log = path / "jobs" / "build" / "log.jsonl"
    watcher = follower(store)
    first = watcher.poll()
    assert ("jobs", {"state": "active", "html": "build=running"}) in first
    assert "$ make" in outputs(first)
    assert watcher.poll() == []  # nothing new
    append(log, out("compiling\n") + b'{"t": "x", "event": "stdout", "da')  # torn: not yet
    assert outputs(watcher.poll()) == "compiling\n"
    append(log, b'ta": "linked\\n"}\n' + line("sh-exit", exit=0))
    Store.write_job(path, "build", "success")
    finished = path.parent.parent / "complete" / path.name
    finished.parent.mkdir()
    path.rename(finished)  # the run ends: its directory moves; the open log follows
    last = watcher.poll()
    assert "linked\n" in outputs(last) and "exit 0" in outputs(last)
    assert ("jobs", {"state": "complete", "html": "build=success"}) in last
    assert last[-1] == ("end", {"state": "complete"})
    assert watcher.finished
    watcher.close()


def test_a_job_that_starts_later_is_followed_from_its_first_line(store: Store) -> None:
    path = store.add(1, state="active", jobs={"a": out("a1\n")})
    watcher = follower(store, offsets={"a": len(out("a1\n"))})
    assert outputs(watcher.poll()) == ""
    Store.write_job(path, "b", "running", 1)
    (path / "jobs" / "b" / "log.jsonl").write_bytes(out("b1\n"))
    messages = watcher.poll()
    assert [(d["job"], untimed(d["html"])) for n, d in messages if n == "output"] == [("b", "b1\n")]
    assert ("jobs", {"state": "active", "html": "a=running,b=running"}) in messages
    watcher.close()


def test_one_job_only_when_asked(store: Store) -> None:
    store.add(1, state="active", jobs={"a": out("from a\n"), "b": out("from b\n")})
    watcher = follower(store, job="b")
    assert outputs(watcher.poll()) == "from b\n"
    watcher.close()


def test_a_follower_far_behind_skips_to_the_tail_and_says_so(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "SKIP_BYTES", 10_000)
    monkeypatch.setattr(live, "TAIL_BYTES", 1_000)
    chunks = b"".join(out(f"{i:04d}\n") for i in range(2000))
    store.add(1, state="active", jobs={"a": chunks})
    watcher = follower(store)
    html = outputs(watcher.poll())
    assert "MiB of log not shown here" in html
    assert "1999\n" in html and "0000\n" not in html
    watcher.close()


def test_a_run_that_disappears_ends_the_stream(store: Store) -> None:
    import shutil

    path = store.add(1, state="active", jobs={"a": out("x\n")})
    watcher = follower(store)
    watcher.poll()
    shutil.rmtree(path)
    assert watcher.poll() == [("end", {"state": "gone"})]
    assert watcher.finished
    watcher.close()


def test_parse_offsets_accepts_only_job_names_to_byte_offsets() -> None:
    assert parse_offsets(None) == {}
    assert parse_offsets('{"a": 3, "b c": 0}') == {"a": 3, "b c": 0}
    for bad in ('{"a": -1}', '{"a": "3"}', '{"a": true}', "[1]", '{"a": 1.5}'):
        with pytest.raises(ValueError):
            parse_offsets(bad)


def finish(path: Path, log: Path, tail: bytes) -> Path:
    """The job writes its last lines, then the run ends: its directory moves to complete/."""
    append(log, tail)
    Store.write_job(path, "build", "success")
    target = path.parent.parent / "complete" / path.name
    target.parent.mkdir(exist_ok=True)
    path.rename(target)
    return target


def until_finished(watcher: RunFollower) -> list[live.Message]:
    messages: list[live.Message] = []
    for _ in range(10_000):  # a bound on polls, not on time: a stuck follower fails
        messages += watcher.poll()
        if watcher.finished:
            break
    watcher.close()
    assert watcher.finished, messages
    return messages


def assert_every_line_before_end(messages: list[live.Message], count: int) -> None:
    names = [name for name, _ in messages]
    assert names.count("end") == 1 and names[-1] == "end", names
    assert messages[-1] == ("end", {"state": "complete"})
    shown = outputs(messages[:-1])
    assert shown.count("\n") == shown.count("last ") + 3  # "$ make", "first", "exit 0"
    assert [int(n) for n in re.findall(r"last (\d+)", shown)] == list(range(count))
    assert shown.endswith("exit 0</span>\n")


TAIL_LINES = 300
TAIL = b"".join(out(f"last {i}\n") for i in range(TAIL_LINES)) + line("sh-exit", exit=0)


def test_a_lagging_jobs_last_lines_all_come_before_end(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Less than the tail per poll: the follower needs several polls to catch up
    # after it has seen the run finish.
    monkeypatch.setattr(live, "CHUNK_BYTES", 1000)
    path = store.add(1, state="active", jobs={"build": line("sh-start", cmd="make")})
    log = path / "jobs" / "build" / "log.jsonl"
    append(log, out("first\n"))
    watcher = follower(store)
    seen = watcher.poll()
    assert "first" in outputs(seen)
    finish(path, log, TAIL)
    assert_every_line_before_end(seen + until_finished(watcher), TAIL_LINES)


class FinishesRightAfterALook(StoreView):
    """A store whose run ends just after the follower has looked where it is: the
    follower saw it active, and the job's last lines and the move land before it
    reads the job's log."""

    def __init__(self, runs_root: Path, end: Callable[[], object]) -> None:
        super().__init__(runs_root)
        self.end: Callable[[], object] | None = end

    def refind(self, run: RunDir) -> RunDir:
        found = super().refind(run)
        if self.end is not None and found.state is RunState.active:
            end, self.end = self.end, None
            end()
        return found


@pytest.mark.parametrize("chunk", [1000, live.CHUNK_BYTES])
def test_lines_written_as_the_run_ends_mid_poll_all_come_before_end(
    store: Store, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(live, "CHUNK_BYTES", chunk)
    path = store.add(1, state="active", jobs={"build": line("sh-start", cmd="make")})
    log = path / "jobs" / "build" / "log.jsonl"
    append(log, out("first\n"))
    view = FinishesRightAfterALook(store.state / "runs", lambda: finish(path, log, TAIL))
    watcher = RunFollower(view, view.run("proj", run_id(1)), rows)
    messages = until_finished(watcher)
    assert view.end is None  # the run did end in the middle of a poll
    assert_every_line_before_end(messages, TAIL_LINES)
    jobs = [data for name, data in messages if name == "jobs"]
    assert jobs[-1] == {"state": "complete", "html": "build=success"}
    # Records read while the run was moving are not sent (they read as missing).
    assert all(data["html"].startswith("build=") for data in jobs), jobs


def test_a_job_that_ran_whole_between_two_polls_is_sent_before_end(store: Store) -> None:
    path = store.add(1, state="active", jobs={"build": line("sh-start", cmd="make")})
    log = path / "jobs" / "build" / "log.jsonl"
    append(log, out("first\n"))
    watcher = follower(store)
    seen = watcher.poll()
    Store.write_job(path, "late", "success", 1)
    (path / "jobs" / "late" / "log.jsonl").write_bytes(out("late 1\n") + out("late 2\n"))
    finish(path, log, TAIL)
    messages = seen + until_finished(watcher)
    assert_every_line_before_end(
        [m for m in messages if m[0] != "output" or m[1]["job"] == "build"], TAIL_LINES
    )
    late = [
        untimed(data["html"])
        for name, data in messages
        if name == "output" and data["job"] == "late"
    ]
    assert "".join(late) == "late 1\nlate 2\n"
