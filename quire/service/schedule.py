"""Scheduled runs: the worker queues a run of a ref's commit at the times of a cron line.

    [repositories.proj]
    path = "/srv/git/proj.git"
    schedules = [{ cron = "0 3 * * *", ref = "main", timezone = "Europe/Paris" }]

At each poll the worker asks, for every schedule, for its latest due time (the
last time the cron line names at or before now, read in its timezone). If that
time has not been taken yet, the worker takes it and queues the ref's current
commit, with `Trigger(kind="schedule")`, in one transaction of the queue
(`claim_schedule`): the primary key (repository, cron, ref, due time) of
`schedule_claims` lets two workers never queue the same time twice.

Only the latest due time is ever looked at, so the times missed while no worker
ran give one run when a worker comes back, not one per missed time. A schedule
seen for the first time (just added) takes its latest due time without running
it: it runs from its next time on. A ref that does not exist takes the time
without a run, and says so in the worker's log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from cronsim import CronSim

from quire.ci.store.records import Trigger
from quire.errors import ConfigError, QuireError
from quire.service.queue import Push, utc_text
from quire.tools import git

if TYPE_CHECKING:
    from quire.config import Config, Schedule
    from quire.service.queue import Entry
    from quire.service.queues import RunQueue

log = logging.getLogger("quire.worker")


# Wall time a summer-time change moves the clocks by, with room: CronSim walks local time,
# so around a change it is started this far off `now` and its answers are checked in UTC.
_DST_SLACK = timedelta(hours=3)


def latest_due(cron: str, timezone: str, now: datetime) -> datetime:
    """The last time `cron` names at or before `now`, read in `timezone`, in UTC."""
    # Started later than now and walked back: in the hour the clocks go back, local time
    # read from `now` lies before times already past (and skipped them).
    start = (now + _DST_SLACK).astimezone(ZoneInfo(timezone))
    for found in CronSim(cron, start, reverse=True):
        if found.astimezone(UTC) <= now:
            return found.astimezone(UTC)
    raise AssertionError("unreachable: a cron line names times without end")  # pragma: no cover


def next_due(cron: str, timezone: str, now: datetime) -> datetime:
    """The first time `cron` names after `now`, in UTC (never at or before it: the worker
    sleeps until then)."""
    start = (now - _DST_SLACK).astimezone(ZoneInfo(timezone))
    for found in CronSim(cron, start):
        if found.astimezone(UTC) > now:
            return found.astimezone(UTC)
    raise AssertionError("unreachable: a cron line names times without end")  # pragma: no cover


@dataclass(frozen=True)
class Planned:
    """One schedule of one repository, as the config gives it."""

    repo: str  # its name in the config
    git_dir: Path
    schedule: Schedule


def planned(config: Config) -> Iterator[Planned]:
    """Every schedule of the config."""
    for name, settings in config.repositories.items():
        if settings.path is None:
            continue
        for schedule in settings.schedules:
            yield Planned(name, settings.path, schedule)


Resolve = Callable[[Path, str], str | None]


def resolve_ref(git_dir: Path, ref: str) -> str | None:
    """The commit `ref` points at in `git_dir` now, or None if it has none."""
    return git.commit_of(git_dir, ref)


class Scheduler:
    """Queues the runs schedules make; `tick(now)` at each poll of the worker.

    `load` reads the config (a broken one is logged and skipped: nothing is queued,
    and the next tick tries again); `resolve` finds a ref's commit.
    """

    def __init__(
        self,
        load: Callable[[], Config],
        *,
        resolve: Resolve = resolve_ref,
    ) -> None:
        self.load = load
        self.resolve = resolve
        self._broken: str | None = None  # the config error last logged: once, not per tick

    def tick(self, queue: RunQueue, now: datetime) -> tuple[list[Entry], datetime | None]:
        """Queue what is due at `now`; returns the runs queued and the next due time
        of any schedule (None: no schedules). Raises `QueueUnavailable`."""
        try:
            config = self.load()
        except ConfigError as exc:
            if str(exc) != self._broken:
                log.error("%s (no scheduled runs until it is fixed)", exc)
                self._broken = str(exc)
            return [], None
        self._broken = None
        queued: list[Entry] = []
        upcoming: list[datetime] = []
        for plan in planned(config):
            entry = self._one(queue, plan, now)
            if entry is not None:
                queued.append(entry)
            upcoming.append(next_due(plan.schedule.cron, plan.schedule.timezone, now))
        return queued, min(upcoming, default=None)

    def _one(self, queue: RunQueue, plan: Planned, now: datetime) -> Entry | None:
        schedule = plan.schedule
        git_dir = str(plan.git_dir)
        ref = schedule.full_ref
        due = latest_due(schedule.cron, schedule.timezone, now)
        due_text = utc_text(due)
        last = queue.last_scheduled(git_dir, schedule.cron, ref)
        if last is not None and last >= due_text:
            return None  # taken already, by this worker or another one
        if last is None:
            # A schedule seen for the first time runs from its next time on, not at once.
            queue.claim_schedule(git_dir, schedule.cron, ref, due_text)
            return None
        try:
            sha = self.resolve(plan.git_dir, ref)
        except QuireError as exc:
            log.error("schedule %r of %s: cannot read %s: %s", schedule.cron, plan.repo, ref, exc)
            sha = None
        if sha is None:
            taken, _ = queue.claim_schedule(git_dir, schedule.cron, ref, due_text)
            if taken:
                log.warning(
                    "schedule %r of %s: %s has no commit in %s; no run for %s",
                    schedule.cron,
                    plan.repo,
                    ref,
                    git_dir,
                    due_text,
                )
            return None
        trigger = Trigger(kind="schedule", schedule=schedule.cron, due_at=due)
        push = Push(git_dir, ref, sha, utc_text(now))
        _, entry = queue.claim_schedule(git_dir, schedule.cron, ref, due_text, push, trigger)
        if entry is not None:
            log.info(
                "scheduled %s: %s %s %s (%s, due %s)",
                entry.run_id,
                plan.repo,
                ref,
                sha[:12],
                schedule.cron,
                due_text,
            )
        return entry
