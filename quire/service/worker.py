"""`quire ci worker`: run queued pushes, each as a child `quire ci run`, in the foreground.

The loop: reap children that ended (outcome into the queue row and the
commit's note), recover dead workers' runs, claim the oldest runnable rows
up to `--concurrency`, then sleep in one `select` over the wake-up socket
(the hook), the signal fd (SIGCHLD, SIGTERM/SIGINT/SIGHUP) and a fallback
poll. Each run is started as

    python -m quire ci run --rev SHA --repo GIT_DIR --executor E --ref REF
        --pushed-at TIME --run-id ID --url URL [--trigger JSON] --quiet

so it leaves exactly the records a `quire ci run` leaves. The child
fetches the pushed object from URL (the row's `url`, else GIT_DIR as a
file:// URL) into this machine's mirror and reads it there
(`quire.ci.run.mirror`): GIT_DIR only names the repository. Children get
SIGTERM if the worker dies (PR_SET_PDEATHSIG): they record `interrupted`
and tear down rather than run on unsupervised.

On SIGTERM/SIGINT/SIGHUP the worker stops claiming, sends SIGTERM to its
children (recorded `interrupted`; not queued again: a stop is deliberate),
waits up to `stop_grace_s` (a second signal: at once) and exits 0. When the
queue file is replaced, truncated or damaged under it, it stops the same way
and raises (`quire ci worker` exits 3): its connection would never see the
runs queued since.

With a queue that keeps leases (PostgreSQL: `quire.service.pgqueue`) the
worker claims under `--name`, renews its runs' leases at each poll (every
`min(poll_s, lease_s / 3)`), stops a run whose lease another worker took
over or whose cancel was asked elsewhere, takes over other workers'
expired leases instead of checking pids, and also wakes on the database's
NOTIFY.

Every worker keeps its row in the worker registry (`quire.service.registry`,
`quire ci workers`): refreshed at each poll and whenever what it runs
changes, deleted when it stops cleanly; at most once a minute it also
deletes the rows of workers long dead.

Failures that pass (the queue cannot be written now, a run's record cannot
be reconciled: a full disk) are logged and tried again later; nothing is
lost or skipped. The world outside (queue, clock, children, run store,
notes) comes in through `Worker`'s keyword arguments, so unit tests drive
`tick()` with fakes.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from quire.ci.store.runs import RunState
from quire.errors import ConfigError, QuireError
from quire.service import outcome as outcomes
from quire.service import recovery
from quire.service.errors import QueueCorrupt, QueueReplaced, QueueUnavailable
from quire.service.notes import CiNote, append_note
from quire.service.outcome import Outcome
from quire.service.pgindex.publisher import NoPublisher, RunPublisher
from quire.service.queue import Entry, Owner, open_queue
from quire.service.queues import DEFAULT_LEASE_S
from quire.service.registry import Registration, WorkerInfo, new_worker_id
from quire.service.schedule import Scheduler
from quire.service.signals import SignalWatch
from quire.service.wake import Listener
from quire.tools import process

if TYPE_CHECKING:
    from quire.config import Config
    from quire.service.notify import Notifier
    from quire.service.queue import WorkQueue
    from quire.service.queues import Notifications, RunQueue

log = logging.getLogger("quire.worker")

OUTPUT_DIR = "queue.out"
# The queue cannot be used any more: the worker stops rather than retry.
FATAL = (QueueCorrupt, QueueReplaced)


class ChildProcess(Protocol):
    """A started run, as the worker handles it (`process.Child`; fakes in tests)."""

    @property
    def pid(self) -> int: ...
    def poll(self) -> int | None: ...
    def signal(self, signum: int) -> None: ...
    def kill_group(self) -> None: ...
    def wait(self, timeout: float | None = None) -> int | None: ...


class Stops(Protocol):
    """Stop signals received so far (`SignalWatch`): a second one means "now"."""

    stops: int
    last: str | None


StartChild = Callable[[list[str], Path], ChildProcess]


def start_child(argv: list[str], output: Path) -> ChildProcess:
    """Start a run's `quire ci run`, its output appended to `output`; it gets SIGTERM
    if the worker dies. Raises `OSError` or `ProgramNotFound`."""
    return process.start(argv, output=output)


@dataclass(frozen=True)
class WorkerSettings:
    """How a worker runs (the `quire ci worker` flags)."""

    state: Path
    concurrency: int = 1
    executor: str = "host"  # the default; `[repositories.<name>] executor` overrides it
    poll_s: float = 5.0  # fallback when a wake-up is lost, and for dead workers' runs
    retry_s: float = 5.0  # after the queue could not be written (disk full)
    stop_grace_s: float = 10.0
    # With a lease-keeping queue (PostgreSQL): how long a claim lasts unless renewed, and
    # the name this worker claims under (None: the host name).
    lease_s: float = DEFAULT_LEASE_S
    name: str | None = None


@dataclass
class Running:
    """A run this worker started."""

    entry: Entry
    child: ChildProcess
    output: Path
    started: float  # on the worker's clock
    cancel: bool = False
    lost: bool = False  # its lease ran out and another worker took the run over


class Worker:
    """One worker process; `serve()` until a stop signal.

    The keyword arguments are the world outside, real by default: the queue
    (opened by `serve` when None), a monotonic clock, how a child starts,
    the run store, how a commit's note is written, and who claims rows.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        queue: WorkQueue | None = None,
        clock: Callable[[], float] = time.monotonic,
        start_child: StartChild = start_child,
        records: recovery.Records = recovery.RECORDS,
        note: recovery.Recorder | None = None,
        me: Owner | None = None,
        publisher: RunPublisher | None = None,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        scheduler: Scheduler | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.clock = clock
        self.start_child = start_child
        self.records = records
        self.note = note or write_note
        self.me = me or recovery.owner()
        self.running: dict[str, Running] = {}
        self.ended: list[tuple[Running, int]] = []  # children gone, outcome not worked out yet
        self.unrecorded: list[tuple[Entry, Outcome]] = []  # the queue could not take them yet
        self.next_poll = 0.0
        self.retry_at = 0.0  # no claims before (the queue or a child start failed)
        self.finish_at = 0.0  # no outcomes worked out before (a record could not be reconciled)
        self.queue_lost = False  # the queue file was replaced or damaged: never write it again
        self.notifications: Notifications | None = None
        # With a database: ships this worker's runs to the run index (quire.service.pgindex).
        self.publisher: RunPublisher = publisher or NoPublisher()
        self.wall = wall  # the time of day, for schedules (`clock` only measures waits)
        self.scheduler = scheduler or Scheduler(_load_config)
        self.next_due: datetime | None = None  # the next time a schedule is due
        self.notifier = notifier
        self.started_at = wall()
        self.registration: Registration | None = None  # made at the first beat (name known)

    def serve(self) -> int:
        """Run until stopped; returns the exit code (0). Raises `QueueCorrupt` and
        `QueueReplaced`."""
        state = self.settings.state
        with SignalWatch() as signals, contextlib.ExitStack() as stack:
            if self.queue is None:
                opened = self._open(signals)
                if opened is None:
                    return 0  # asked to stop before the queue could be opened
                self.queue = stack.enter_context(opened)
            queue = self.queue
            if self._leases():
                # Claims are made under the worker's name: `quire ci queue` shows it.
                self.me = Owner(self.me.pid, self.me.start, self.settings.name or self.me.host)
                self._step(self._listen)
                stack.callback(self._unlisten)
                self._publish(queue, stack)
            # The SQLite queue creates it; with a database queue nothing else has yet.
            state.mkdir(parents=True, exist_ok=True)
            listener = stack.enter_context(Listener(state))
            if self.notifier is None:
                from quire.service.notify import Notifier

                self.notifier = Notifier(state, _load_config, published=self._republish)
                self.notifier.start()  # the runs an earlier worker left unsent first
                stack.callback(self.notifier.stop)
            self._step(lambda: log.debug("pruned %d finished rows", queue.prune()))
            waiting = len([e for e in queue.active() if e.state == "queued"])
            lease = (
                f", name {self.me.host}, lease {self.settings.lease_s:g}s" if self._leases() else ""
            )
            log.info(
                "worker %d started: concurrency %d, executor %s, queue %s (%d queued)%s",
                self.me.pid,
                self.settings.concurrency,
                self.settings.executor,
                queue.path,
                waiting,
                lease,
            )
            try:
                self._loop(listener, signals)
            finally:
                self.stop(signals)
        log.info("worker %d stopped", self.me.pid)
        return 0

    def _open(self, signals: SignalWatch) -> RunQueue | None:
        """The queue, checked; while it cannot be opened (disk full), report and retry."""
        while not signals.stops:
            try:
                queue = open_queue(self.settings.state, lease_s=self.settings.lease_s)
            except QueueUnavailable as exc:
                log.error("%s; retrying in %.0fs", exc, self.settings.retry_s)
                with selectors.DefaultSelector() as selector:
                    selector.register(signals, selectors.EVENT_READ)
                    selector.select(self.settings.retry_s)
                signals.drain()
                continue
            try:
                queue.check()
            except BaseException:
                queue.close()
                raise
            return queue
        return None

    def _loop(self, listener: Listener, signals: SignalWatch) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(signals, selectors.EVENT_READ)
            listening: list[Notifications] = []  # the database's, while its connection holds

            def wait(timeout: float) -> None:
                notes = self.notifications
                if listening and listening[0] is not notes:
                    selector.unregister(listening.pop())
                if notes is not None and not listening:
                    selector.register(notes, selectors.EVENT_READ)
                    listening.append(notes)
                selector.select(timeout)
                listener.drain()
                signals.drain()
                if notes is not None:
                    notes.drain()
                    if notes.broken:  # the poll takes over until `_listen` reconnects
                        selector.unregister(listening.pop())
                        notes.close()
                        self.notifications = None

            self.run(wait, signals)

    # --- leases (a queue on PostgreSQL) --------------------------------------------------------

    def _leases(self) -> bool:
        # The in-memory fake of the worker's unit tests predates leases: no attribute, none.
        return bool(getattr(self.queue, "leases", False))

    def _poll_s(self) -> float:
        # A lease is renewed at each poll: three chances before it runs out.
        if self._leases():
            return min(self.settings.poll_s, self.settings.lease_s / 3)
        return self.settings.poll_s

    def _listen(self) -> None:
        """LISTEN for new runs on a connection of its own (again, after it broke)."""
        assert self.queue is not None
        if self.notifications is None:
            self.notifications = self.queue.notifications()

    def _publish(self, queue: WorkQueue, stack: contextlib.ExitStack) -> None:
        """Ship this worker's runs to the run index on the queue's database (unless the
        caller gave a publisher of its own)."""
        url = getattr(queue, "url", None)
        if not isinstance(self.publisher, NoPublisher) or not isinstance(url, str):
            return
        from quire.service.pgindex.publisher import Publisher
        from quire.service.pgindex.writer import IndexWriter

        publisher = Publisher(IndexWriter(url), self.me.host, self.settings.state)
        publisher.start()
        self.publisher = publisher
        stack.callback(publisher.close)

    def _unlisten(self) -> None:
        if self.notifications is not None:
            self.notifications.close()
            self.notifications = None

    def _renew(self) -> None:
        """Extend the leases of this worker's runs; stop a run whose lease was lost (another
        worker has queued it again) or whose cancel was asked on another machine."""
        assert self.queue is not None
        for run_id, running in list(self.running.items()):
            row = self.queue.renew(run_id, self.settings.lease_s)
            if row is None and not running.lost:
                log.error(
                    "run %s: its lease ran out and another worker took it over; stopping it", run_id
                )
                running.lost = True
                running.child.signal(signal.SIGTERM)
            elif row is not None and row.cancel and not running.cancel:
                log.info("run %s: cancel asked; stopping it", run_id)
                self._stop_cancelled(running, row.cancel_by)

    def run(self, wait: Callable[[float], None], signals: Stops) -> None:
        """`tick()` until a stop signal; `wait(seconds)` returns sooner on a wake-up (the
        hook) or a signal (SIGCHLD, a stop). Raises `QueueCorrupt` and `QueueReplaced`."""
        try:
            while not signals.stops:
                wait(self.tick())
        except FATAL as exc:
            self.queue_lost = True
            log.error("%s; stopping (%d runs to interrupt)", exc, len(self.running))
            raise
        log.info("%s received: stopping (%d runs to interrupt)", signals.last, len(self.running))

    def tick(self) -> float:
        """One turn of the loop: check the queue file is still ours, recover dead workers'
        runs (every poll), reap children that ended, start runs up to the concurrency.

        Returns how long to wait before the next turn, in seconds. Raises
        `QueueCorrupt` and `QueueReplaced`.
        """
        assert self.queue is not None
        now = self.clock()
        self._step(self.queue.verify)
        due = self.next_due is not None and self.wall() >= self.next_due
        if now >= self.next_poll or due:
            self._step(self._schedule)
        if now >= self.next_poll:
            if self._leases():
                self._step(self._renew)  # before recovery: never take over our own runs
                self._step(self._listen)
            self._step(self._beat)
            self._step(self._recover)
            self.next_poll = now + self._poll_s()
        self._step(self._reap)
        if now >= self.retry_at:
            self._step(self._fill)
        if self._registered().stale(self.running) and now >= self.retry_at:
            self._step(self._beat)  # `quire ci workers` shows what it runs now
        later = [t for t in (self.retry_at, self.finish_at) if t > now]
        if self.next_due is not None:  # wake at the next scheduled time, not a poll later
            later.append(now + max(0.0, (self.next_due - self.wall()).total_seconds()))
        return max(0.0, min([self.next_poll, *later]) - self.clock())

    # --- the worker registry (quire.service.registry) ----------------------------------------

    def _registered(self) -> Registration:
        if self.registration is None:
            # A lease-keeping queue (PostgreSQL) judges workers by their heartbeat: the same
            # lease as their runs. The SQLite queue by pid; ttl_s only for another host's rows.
            ttl_s = self.settings.lease_s if self._leases() else 3 * self.settings.poll_s
            info = WorkerInfo(
                id=new_worker_id(),
                name=self.settings.name or socket.gethostname(),
                host=socket.gethostname(),
                pid=self.me.pid,
                start=self.me.start,
                started_at=self.started_at,
                concurrency=self.settings.concurrency,
                ttl_s=ttl_s,
            )
            self.registration = Registration(info, self.clock)
        return self.registration

    def _beat(self) -> None:
        assert self.queue is not None
        forgotten = self._registered().beat(self.queue, self.running)
        if forgotten:
            log.info("forgot %d dead workers in the worker registry", forgotten)

    def _leave(self) -> None:
        if self.registration is None or self.queue is None:
            return
        try:
            self.registration.leave(self.queue)
        except QueueUnavailable as exc:
            log.error("%s: this worker's row stays in the registry until it expires", exc)

    def _republish(self, entry: Entry) -> None:
        """Ship a finished run's directory to the run index again (its notifications.yml
        changed); nothing without a database."""
        self.publisher.track(entry)
        self.publisher.finish(entry.run_id)

    def _schedule(self) -> None:
        """Queue the scheduled runs that are due (quire.service.schedule)."""
        if not hasattr(self.queue, "claim_schedule"):  # the worker's in-memory unit-test fake
            return
        assert self.queue is not None
        _, self.next_due = self.scheduler.tick(cast("RunQueue", self.queue), self.wall())

    def _step(self, action: Callable[[], None]) -> None:
        """Run one part of the loop; a queue that cannot be written now is retried later."""
        try:
            action()
        except QueueUnavailable as exc:
            log.error("%s; retrying in %.0fs", exc, self.settings.retry_s)
            self.retry_at = self.clock() + self.settings.retry_s

    # --- claiming and starting -----------------------------------------------------------------

    def _fill(self) -> None:
        assert self.queue is not None
        while len(self.running) < self.settings.concurrency:
            entry = self.queue.claim(self.me)
            if entry is None:
                return
            if not self._start(entry):
                return

    def _start(self, entry: Entry) -> bool:
        assert self.queue is not None
        # A re-run keeps the original run's executor; a push gets the worker's choice.
        executor = entry.executor or self._executor_for(entry.repo)
        out_dir = self.settings.state / OUTPUT_DIR
        output = out_dir / f"{entry.run_id}.log"
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            child = self.start_child(child_argv(entry, executor), output)
        except (OSError, QuireError) as exc:
            log.error(
                "cannot start run %s: %s; retrying in %.0fs",
                entry.run_id,
                exc,
                self.settings.retry_s,
            )
            self.queue.release(entry.run_id)
            self.retry_at = self.clock() + self.settings.retry_s
            return False
        from quire.ci.store.liveness import process_start_ticks

        start = process_start_ticks(child.pid)
        entry = entry.replaced(executor=executor, child_pid=child.pid, child_start=start)
        running = Running(entry, child, output, self.clock())
        self.running[entry.run_id] = running
        self.publisher.track(entry)
        cancelled = self.queue.started(entry.run_id, executor, child.pid, start)
        log.info(
            "start %s: %s %s %s (executor %s, attempt %d, pid %d)",
            entry.run_id,
            entry.repo,
            entry.ref,
            entry.sha[:12],
            executor,
            entry.attempt,
            child.pid,
        )
        if cancelled:  # asked between its claim and now
            self._stop_cancelled(running, self.queue.get(entry.run_id).cancel_by)
        return True

    def _stop_cancelled(self, running: Running, by: str | None) -> None:
        """Stop a run whose cancel was asked, recorded as cancelled by `by`: on another
        machine (a database), who asked is written into this machine's store first, where the
        run's `quire ci run` looks when it stops; on this one `quire ci cancel` did already."""
        running.cancel = True
        store = outcomes.store_of(running.entry)
        try:
            if store.cancel_request(running.entry.run_id) is None:
                store.request_cancel(running.entry.run_id, by or "quire ci cancel")
        except OSError as exc:  # recorded as interrupted, which it also is
            log.error("run %s: cannot record who cancelled it: %s", running.entry.run_id, exc)
        running.child.signal(signal.SIGTERM)

    def _executor_for(self, repo: str) -> str:
        from quire.config import load_config

        try:
            chosen = load_config().executor_for(repo)
        except ConfigError as exc:
            log.error("%s (using --executor %s)", exc, self.settings.executor)
            return self.settings.executor
        return chosen or self.settings.executor

    # --- finishing -----------------------------------------------------------------------------

    def _reap(self) -> None:
        for run_id, running in list(self.running.items()):
            code = running.child.poll()
            if code is None:
                continue
            del self.running[run_id]
            self.ended.append((running, code))
        self._finish_ended()
        self._record_pending()

    def _finish_ended(self) -> None:
        """Work out the outcomes of ended children, in the order they ended.

        One whose record cannot be reconciled now (a full disk) is tried again
        at the next poll, and those after it wait: outcomes keep their order.
        """
        while self.ended and self.clock() >= self.finish_at:
            running, code = self.ended[0]
            try:
                self._finish(running, code)
            except FATAL:
                raise
            except (OSError, QuireError) as exc:
                log.error(
                    "run %s ended (exit %d) but its record cannot be reconciled: %s; "
                    "trying again in %.0fs",
                    running.entry.run_id,
                    code,
                    exc,
                    self.settings.poll_s,
                )
                self.finish_at = self.clock() + self.settings.poll_s
                return
            self.ended.pop(0)

    def _finish(self, running: Running, code: int) -> None:
        entry = running.entry
        cancelled = running.cancel or self._cancel_asked(entry)
        run = self.records.find(entry)
        if run is not None and run.state in (RunState.pending, RunState.active):
            self.records.reconcile(entry)  # the child died without finishing its record
            run = self.records.find(entry)
        if run is not None:
            result = outcomes.from_record(run, cancelled=cancelled)
        else:
            text = outcomes.read_output(running.output)
            elapsed = self.clock() - running.started
            result = outcomes.without_record(
                entry, code, text, cancelled=cancelled, duration_s=elapsed
            )
            if cancelled:  # stopped before its run existed: recorded as cancelled all the same
                result = self.records.record_cancelled(entry, result)
        with contextlib.suppress(OSError):
            running.output.unlink()
        # The run index has the run's last records before the queue says it is done.
        self.publisher.finish(entry.run_id)
        self.unrecorded.append((entry, result))

    def _cancel_asked(self, entry: Entry) -> bool:
        assert self.queue is not None
        try:
            return self.queue.get(entry.run_id).cancel
        except QuireError:
            return False

    def _record_pending(self) -> None:
        assert self.queue is not None
        while self.unrecorded:
            entry, result = self.unrecorded[0]
            if self.queue.finish(entry.run_id, result.outcome, result.reason, result.message):
                log.info(
                    "done %s: %s %s: %s", entry.run_id, entry.repo, entry.ref, result.describe()
                )
                self.note(entry, result)
                if self.notifier is not None:  # sent by its thread, never waited for here
                    self.notifier.finished(entry)
            self.unrecorded.pop(0)

    def _recover(self) -> None:
        assert self.queue is not None
        recovery.recover(self.queue, self.me, self.note, self.records, self.publisher.lost)

    # --- stopping ------------------------------------------------------------------------------

    def stop(self, signals: Stops) -> None:
        """Interrupt the children, wait for them (bounded), record what they left."""
        for running in self.running.values():
            running.child.signal(signal.SIGTERM)
        deadline = self.clock() + self.settings.stop_grace_s
        stops = signals.stops
        while self.running and self.clock() < deadline and signals.stops == stops:
            for run_id, running in list(self.running.items()):
                code = running.child.wait(0.05)
                if code is not None:
                    del self.running[run_id]
                    self.ended.append((running, code))
        for running in self.running.values():
            log.warning("run %s did not stop in time: killing it", running.entry.run_id)
            running.child.kill_group()
            code = running.child.wait()
            self.ended.append((running, -signal.SIGKILL if code is None else code))
        self.running.clear()
        self.finish_at = 0.0  # no next poll to wait for
        self._finish_ended()
        if self.ended:
            unknown = ", ".join(running.entry.run_id for running, _ in self.ended)
            log.error(
                "outcomes of %s not worked out: their rows stay running for a later worker "
                "to recover",
                unknown,
            )
        if self.queue_lost:
            if self.unrecorded:
                lost = ", ".join(entry.run_id for entry, _ in self.unrecorded)
                log.error("outcomes of %s not recorded: the queue file is not ours any more", lost)
            return
        try:
            self._record_pending()
        except QueueUnavailable as exc:
            lost = ", ".join(entry.run_id for entry, _ in self.unrecorded)
            log.error("%s: outcomes of %s not recorded in the queue", exc, lost)
        self._leave()


def _load_config() -> Config:
    from quire.config import load_config

    return load_config()


def child_argv(entry: Entry, executor: str) -> list[str]:
    """The `quire ci run` that runs a queued push (the same records as a manual run)."""
    return [
        sys.executable,
        "-m",
        "quire",
        "ci",
        "run",
        "--rev",
        entry.sha,
        "--repo",
        entry.git_dir,
        "--executor",
        executor,
        "--ref",
        entry.ref,
        "--pushed-at",
        entry.pushed_at,
        "--run-id",
        entry.run_id,
        "--url",
        entry.fetch_url,
        *(["--trigger", entry.trigger_json] if entry.trigger_json else []),
        "--quiet",
    ]


def write_note(entry: Entry, result: Outcome) -> None:
    """Append the run's outcome to its commit's note; a failure is logged, never raised."""
    if result.commit is None:
        log.warning("run %s: %s is not a commit; no note written", entry.run_id, entry.sha)
        return
    note = CiNote(
        run_id=entry.run_id,
        state=result.outcome,
        reason=result.reason,
        ref=entry.ref,
        executor=entry.executor,
        attempt=entry.attempt,
        duration_s=None if result.duration_s is None else round(result.duration_s, 3),
        failed_jobs=result.failed_jobs,
        finished_at=datetime.now(UTC),
        message=result.message,
        cancelled_by=result.cancelled_by,
    )
    try:
        append_note(Path(entry.git_dir), result.commit, note)
    except QuireError as exc:
        log.error("run %s: cannot write its git note: %s", entry.run_id, exc)
