"""Scheduled runs: due times, a new schedule, missed times run once, never queued twice.

The scheduler runs against the real SQLite queue (in tmp_path) with a fake clock
(`now` handed to `tick`) and a fake ref resolver; the worker's loop against them.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from quire.ci.store.records import Trigger
from quire.config import Config, RepositorySettings, Schedule
from quire.errors import ConfigError
from quire.service.queue import SCHEMA_VERSION, Owner, Push, Queue, queue_path
from quire.service.schedule import Scheduler, latest_due, next_due
from quire.service.worker import Worker, WorkerSettings, child_argv

GIT_DIR = "/srv/git/proj.git"
SHA = "c" * 40


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def config(*schedules: Schedule, path: str = GIT_DIR) -> Config:
    settings = RepositorySettings(path=Path(path), schedules=list(schedules))
    return Config(repositories={"proj": settings})


NIGHTLY = Schedule(cron="0 3 * * *", ref="main")


@pytest.fixture
def queue(tmp_path: Path) -> Queue:
    return Queue(queue_path(tmp_path / "state"))


def scheduler(cfg: Config, sha: str | None = SHA) -> Scheduler:
    return Scheduler(lambda: cfg, resolve=lambda git_dir, ref: sha)


def test_the_latest_due_time_is_at_or_before_now() -> None:
    assert latest_due("0 3 * * *", "UTC", at("2026-01-05T10:00:00")) == at("2026-01-05T03:00:00")
    assert latest_due("0 3 * * *", "UTC", at("2026-01-05T03:00:00")) == at("2026-01-05T03:00:00")
    assert latest_due("0 3 * * *", "UTC", at("2026-01-05T02:59:59")) == at("2026-01-04T03:00:00")
    assert next_due("0 3 * * *", "UTC", at("2026-01-05T03:00:00")) == at("2026-01-06T03:00:00")


def test_a_timezone_moves_the_times_and_follows_summer_time() -> None:
    winter = latest_due("0 3 * * *", "Europe/Paris", at("2026-01-05T10:00:00"))
    summer = latest_due("0 3 * * *", "Europe/Paris", at("2026-07-05T10:00:00"))
    assert winter == at("2026-01-05T02:00:00")
    assert summer == at("2026-07-05T01:00:00")


@pytest.mark.parametrize("cron", ["30 2 * * *", "0 * * * *", "*/20 * * * *", "0 2 * * *"])
@pytest.mark.parametrize(
    ("timezone", "night"),
    [
        ("Europe/Paris", "2026-10-24T22:00:00"),  # the clocks go back: 02:00-03:00 twice
        ("Europe/Paris", "2026-03-28T22:00:00"),  # and forward: no 02:00-03:00
        ("America/New_York", "2026-11-01T03:00:00"),
        ("America/New_York", "2026-03-08T03:00:00"),
    ],
)
def test_due_times_bracket_now_through_a_change_of_summer_time(
    cron: str, timezone: str, night: str
) -> None:
    # The worker sleeps until next_due: one in the past would wake it at once, every turn,
    # until the wall clock caught up (an hour of busy loop, loading the config each time).
    now = at(night)
    fired: list[datetime] = []
    for _ in range(6 * 60 // 5):
        latest, upcoming = latest_due(cron, timezone, now), next_due(cron, timezone, now)
        assert latest <= now < upcoming, (now, latest, upcoming)
        assert latest_due(cron, timezone, upcoming) == upcoming
        if not fired or latest > fired[-1]:
            fired.append(latest)
        assert latest >= fired[-1]  # never goes back to a time taken already
        now += timedelta(minutes=5)


def test_a_new_schedule_runs_from_its_next_time_not_at_once(queue: Queue) -> None:
    plan = scheduler(config(NIGHTLY))
    queued, upcoming = plan.tick(queue, at("2026-01-05T10:00:00"))
    assert queued == [] and queue.active() == []
    assert upcoming == at("2026-01-06T03:00:00")
    queued, _ = plan.tick(queue, at("2026-01-06T03:00:00"))
    assert [e.sha for e in queued] == [SHA]


def test_a_due_time_queues_the_refs_commit_with_a_schedule_trigger(queue: Queue) -> None:
    plan = scheduler(config(NIGHTLY))
    plan.tick(queue, at("2026-01-05T10:00:00"))
    (entry,) = plan.tick(queue, at("2026-01-06T03:00:05"))[0]
    assert (entry.git_dir, entry.ref, entry.sha) == (GIT_DIR, "refs/heads/main", SHA)
    assert entry.trigger_json is not None
    trigger = Trigger.model_validate_json(entry.trigger_json)
    assert trigger == Trigger(kind="schedule", schedule="0 3 * * *", due_at=at("2026-01-06T03:00"))
    # The child run is told, so its record says how it was started.
    argv = child_argv(entry, "host")
    assert argv[argv.index("--trigger") + 1] == entry.trigger_json
    # Later ticks before the next time queue nothing more.
    assert plan.tick(queue, at("2026-01-06T09:00:00"))[0] == []


def test_times_missed_while_no_worker_ran_give_one_run(queue: Queue) -> None:
    plan = scheduler(config(NIGHTLY))
    plan.tick(queue, at("2026-01-05T10:00:00"))
    # No worker for five nights: one run when one comes back, for the latest time.
    queued, _ = plan.tick(queue, at("2026-01-10T12:00:00"))
    assert len(queued) == 1
    trigger = Trigger.model_validate_json(queued[0].trigger_json or "")
    assert trigger.due_at == at("2026-01-10T03:00:00")
    assert plan.tick(queue, at("2026-01-10T12:00:01"))[0] == []
    assert len(queue.active()) == 1


def test_two_workers_never_queue_the_same_time_twice(tmp_path: Path) -> None:
    path = queue_path(tmp_path / "state")
    cfg = config(Schedule(cron="* * * * *", ref="main"))
    Queue(path).claim_schedule(GIT_DIR, "* * * * *", "refs/heads/main", "2026-01-05T09:59:00Z")
    barrier = threading.Barrier(8)
    made: list[int] = []

    def worker() -> None:
        with Queue(path) as mine:
            barrier.wait()
            made.append(len(scheduler(cfg).tick(mine, at("2026-01-05T10:00:30"))[0]))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(made) == [0] * 7 + [1]
    assert len(Queue(path).active()) == 1


def test_the_queue_refuses_a_time_taken_already(queue: Queue) -> None:
    push = Push(GIT_DIR, "refs/heads/main", SHA, "2026-01-05T10:00:00Z")
    trigger = Trigger(kind="schedule", schedule="0 3 * * *")
    key = (GIT_DIR, "0 3 * * *", "refs/heads/main", "2026-01-05T03:00:00.000000Z")
    taken, first = queue.claim_schedule(*key, push, trigger)
    assert taken and first is not None
    assert queue.claim_schedule(*key, push, trigger) == (False, None)
    assert [e.run_id for e in queue.active()] == [first.run_id]


def test_a_ref_without_a_commit_takes_the_time_without_a_run(queue: Queue) -> None:
    plan = scheduler(config(NIGHTLY), sha=None)
    plan.tick(queue, at("2026-01-05T10:00:00"))
    assert plan.tick(queue, at("2026-01-06T03:00:00"))[0] == []
    assert queue.active() == []
    last = queue.last_scheduled(GIT_DIR, "0 3 * * *", "refs/heads/main")
    assert last == "2026-01-06T03:00:00.000000Z"


def test_a_broken_config_queues_nothing_and_says_so_once(
    queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> Config:
        raise ConfigError("config file x is invalid: y")

    plan = Scheduler(broken)
    assert plan.tick(queue, at("2026-01-05T10:00:00")) == ([], None)
    assert plan.tick(queue, at("2026-01-05T10:00:05")) == ([], None)
    assert [r.message for r in caplog.records].count(
        "config file x is invalid: y (no scheduled runs until it is fixed)"
    ) == 1


def test_a_push_row_has_no_trigger_and_a_version_1_queue_is_upgraded(tmp_path: Path) -> None:
    path = queue_path(tmp_path)
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE queue (seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL UNIQUE,"
        " git_dir TEXT NOT NULL, ref TEXT NOT NULL, sha TEXT NOT NULL, pushed_at TEXT NOT NULL,"
        " state TEXT NOT NULL DEFAULT 'queued', attempt INTEGER NOT NULL DEFAULT 1,"
        " retry_of TEXT, executor TEXT, worker_pid INTEGER, worker_start INTEGER,"
        " worker_host TEXT, child_pid INTEGER, child_start INTEGER, claimed_at TEXT,"
        " finished_at TEXT, cancel INTEGER NOT NULL DEFAULT 0, outcome TEXT, reason TEXT,"
        " message TEXT)"
    )
    old.execute(
        "INSERT INTO queue (run_id, git_dir, ref, sha, pushed_at) VALUES"
        " ('20260101-000000-000000-abcdef', '/g', 'refs/heads/main', 'a', 't')"
    )
    old.execute("PRAGMA user_version = 1")
    old.commit()
    old.close()
    with Queue(path) as queue:
        (kept,) = queue.active()
        assert kept.trigger_json is None  # a push
        assert "--trigger" not in child_argv(kept, "host")
        (pushed,) = queue.enqueue([Push("/g", "refs/heads/x", "b", "t")])
        assert pushed.trigger_json is None
        manual = Trigger(kind="manual", by="alice")
        (asked,) = queue.enqueue([Push("/g", "refs/heads/y", "b", "t")], manual)
        assert Trigger.model_validate_json(asked.trigger_json or "") == manual
        assert queue.last_scheduled("/g", "* * * * *", "refs/heads/main") is None
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3


class Clock:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = at("2026-01-05T10:00:00")

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += timedelta(seconds=seconds)


class NoChild:
    """Starting a child is not what these tests are about: the row stays queued."""

    def __call__(self, argv: list[str], output: Path) -> object:
        raise OSError("not starting children here")


def test_the_worker_queues_at_the_due_time_and_wakes_for_it(tmp_path: Path) -> None:
    clock = Clock()
    state = tmp_path / "state"
    queue = Queue(queue_path(state))
    worker = Worker(
        WorkerSettings(state=state, poll_s=5.0, concurrency=0),
        queue=queue,
        clock=lambda: clock.mono,
        wall=lambda: clock.wall,
        scheduler=scheduler(config(Schedule(cron="0 11 * * *", ref="main"))),
        me=Owner(1, 1, "here"),
    )
    worker.tick()  # first sight: the schedule's latest time is taken, nothing runs
    assert queue.active() == []
    clock.advance(3599)
    # It sleeps no longer than the next poll, and never past the due time.
    assert worker.tick() <= 5.0
    clock.advance(1)  # 11:00:00 exactly, between two polls
    worker.next_poll = clock.mono + 5.0
    worker.tick()
    (entry,) = queue.active()
    assert Trigger.model_validate_json(entry.trigger_json or "").due_at == at("2026-01-05T11:00")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            'schedules = [{ cron = "0 3 * * *", ref = "main" }]',
            "schedules need the repository's path",
        ),
        ('path = "/g"\nschedules = [{ cron = "0 25 * * *", ref = "main" }]', "is not a cron line"),
        ('path = "/g"\nschedules = [{ cron = "@daily", ref = "main" }]', "is not a cron line"),
        (
            'path = "/g"\nschedules = [{ cron = "0 3 * * *", ref = "main", timezone = "Mars/X" }]',
            "unknown timezone",
        ),
        ('path = "/g"\nschedules = [{ cron = "0 3 * * *" }]', "ref"),
    ],
)
def test_bad_schedules_are_config_errors_naming_the_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    from quire.config import load_config

    path = tmp_path / "config.toml"
    path.write_text(f"[repositories.proj]\n{text}\n")
    with pytest.raises(ConfigError, match=problem) as caught:
        load_config(path)
    assert str(path) in str(caught.value)


def test_a_good_schedule_reads_with_its_full_ref(tmp_path: Path) -> None:
    from quire.config import load_config

    path = tmp_path / "config.toml"
    path.write_text(
        '[repositories.proj]\npath = "/g"\n'
        'schedules = [{ cron = "0 3 * * *", ref = "main" }, '
        '{ cron = "0 0 * * 0", ref = "refs/tags/nightly", timezone = "Europe/Paris" }]\n'
    )
    schedules = load_config(path).repositories["proj"].schedules
    assert [s.full_ref for s in schedules] == ["refs/heads/main", "refs/tags/nightly"]
    assert schedules[1].timezone == "Europe/Paris"
