"""Notifications of finished runs: signed webhooks and emails, sent by a thread of the worker.

    [[notify]]
    url = "https://chat.example.com/hooks/quire"     # a webhook: POST of a JSON document
    secret = { env = "QUIRE_HOOK_SECRET" }            # X-Quire-Signature-256: sha256=<HMAC>
    on = ["failed", "fixed"]                          # the default; or ["all"]
    repos = ["proj"]

Where it lives: `Notifier`, one thread of `quire ci worker`. When the worker has
recorded a run's outcome (queue row and note), it writes a marker
`$QUIRE_STATE_DIR/notify.pending/<run id>.json` (a few bytes: the run's
repository and id) and wakes the thread; that is all a run or the worker's loop
ever waits for. The thread decides what to send (`plan`: the run's state, and
the previous finished run of the same repository and ref for "fixed"), writes
the deliveries to the run's `notifications.yml`, and sends them, each attempt
and its result recorded there. A failed attempt is tried again after
`RETRY_DELAYS_S` (10 s, 30 s, 1 min, 5 min, 15 min, 30 min: seven attempts over
about 50 minutes), then given up. The marker goes once every delivery of the
run is delivered or given up; a worker that stops (or dies) leaves the markers
of unsettled runs, and the next worker started on the same state directory
takes them up where notifications.yml says they stand.

A secret never leaves: the signing secret is only the HMAC key; a webhook is
recorded by its scheme, host and a short hash of its whole URL (a URL may carry
a token), never the URL itself; the document carries no secret values (job
errors are masked when the run records them).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import os
import smtplib
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlsplit

from pydantic import BaseModel

from quire.ci.store.deliveries import (
    NOTIFICATIONS_FILE,
    Attempt,
    Delivery,
    Event,
    RunNotifications,
)
from quire.ci.store.records import (
    JobState,
    JobStatus,
    RecordUnreadable,
    RunMeta,
    RunResult,
    RunTimes,
    read_record,
    write_record,
    write_text_atomically,
)
from quire.config import Config, NotifyTarget
from quire.errors import ConfigError, QuireError
from quire.service.queue import Entry

log = logging.getLogger("quire.worker")

PENDING_DIR = "notify.pending"
SIGNATURE_HEADER = "X-Quire-Signature-256"
RETRY_DELAYS_S = (10.0, 30.0, 60.0, 300.0, 900.0, 1800.0)  # then it is given up
SEND_TIMEOUT_S = 10.0
FINISHED_STATES = ("complete", "failed", "cancelled")


class SendFailed(Exception):
    """One attempt did not deliver; the message says what the other side answered."""


class Senders(Protocol):
    """How notifications leave (the real ones: `NetSenders`; fakes in unit tests)."""

    def webhook(self, url: str, body: bytes, headers: dict[str, str]) -> str: ...
    def email(self, smtp: str, message: EmailMessage) -> str: ...


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is the answer, not followed: urllib would repeat a POST as a GET without
    its body (the receiver never has the document, the attempt reads as delivered), and
    send the signed request wherever the Location says."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class NetSenders:
    """HTTP POST with urllib, mail with smtplib; each returns what the other side said."""

    def webhook(self, url: str, body: bytes, headers: dict[str, str]) -> str:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with _OPENER.open(request, timeout=SEND_TIMEOUT_S) as answer:
                return f"HTTP {answer.status}"
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                raise SendFailed(
                    f"HTTP {exc.code}, a redirect: not followed (set the url to where it points)"
                ) from None
            raise SendFailed(f"HTTP {exc.code}") from None
        except http.client.HTTPException as exc:
            # An answer that is not HTTP (BadStatusLine, a cut-off body ...): a failed attempt
            # like any other. Its class only: InvalidURL's message holds the URL and its token.
            raise SendFailed(f"not an HTTP answer ({type(exc).__name__})") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise SendFailed(f"cannot reach it: {reason}") from None

    def email(self, smtp: str, message: EmailMessage) -> str:
        parts = urlsplit(smtp)
        try:
            with smtplib.SMTP(
                parts.hostname or "localhost", parts.port or 25, timeout=SEND_TIMEOUT_S
            ) as mail:
                refused = mail.send_message(message)
        except (smtplib.SMTPException, OSError) as exc:
            raise SendFailed(f"SMTP: {exc}") from None
        if refused:
            raise SendFailed(f"SMTP refused {', '.join(sorted(refused))}")
        return "SMTP accepted"


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: `sha256=` and the HMAC-SHA256 of `body`, in hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def target_name(target: NotifyTarget) -> str:
    """How a `[[notify]]` entry is named in records and logs: never a secret or a token."""
    if target.url is not None:
        parts = urlsplit(target.url)
        port = f":{parts.port}" if parts.port else ""
        digest = hashlib.sha256(target.url.encode()).hexdigest()[:8]
        return f"webhook {parts.scheme}://{parts.hostname}{port} #{digest}"
    return f"email {', '.join(target.email or [])}"


class RunFacts(BaseModel):
    """A finished run, as notifications tell it (the webhook's JSON document)."""

    repository: str
    run_id: str
    ref: str | None
    sha: str
    state: str
    event: str
    reason: str | None = None
    failed_jobs: list[str]
    duration_s: float | None
    trigger: str
    url: str | None = None  # the run's page, when `[web] url` is configured


def _run_state(run: Path) -> str:
    return run.parent.name


def read_facts(run: Path) -> tuple[RunMeta, str, RunResult | None, list[str], float | None]:
    """meta, state, result, failed jobs and duration of the run at `run`."""
    meta = read_record(run / "meta.yml", RunMeta)
    result = None
    with contextlib.suppress(RecordUnreadable):
        result = read_record(run / "result.yml", RunResult)
    failed: list[str] = []
    jobs = run / "jobs"
    if jobs.is_dir():
        for job in sorted(jobs.iterdir()):
            with contextlib.suppress(RecordUnreadable):
                if read_record(job / "state.yml", JobState).status == JobStatus.failed:
                    failed.append(job.name)
    duration = None
    with contextlib.suppress(RecordUnreadable):
        times = read_record(run / "times.yml", RunTimes)
        if times.finished_at is not None:
            duration = round((times.finished_at - times.started_at).total_seconds(), 3)
    return meta, _run_state(run), result, failed, duration


def previous_state(run: Path, ref: str | None) -> str | None:
    """The state of the newest finished run of the same repository and ref before `run`
    (cancelled runs left out: a cancel says nothing of the code), or None."""
    store = run.parent.parent
    older: list[tuple[str, str]] = []
    for state in ("complete", "failed"):
        with contextlib.suppress(OSError):
            older += [(p.name, state) for p in (store / state).iterdir() if p.name < run.name]
    # Run ids sort by time: newest first, and the first of the same ref is the answer.
    for name, state in sorted(older, reverse=True):
        try:
            if read_record(store / state / name / "meta.yml", RunMeta).ref == ref:
                return state
        except RecordUnreadable:
            continue
    return None


def event_of(state: str, previous: str | None) -> Event:
    """What a run with `state` is, after a run in state `previous`, for the `on` rules."""
    if state == "failed":
        return "failed"
    if state == "cancelled":
        return "cancelled"
    return "fixed" if previous == "failed" else "complete"


def wanted(target: NotifyTarget, event: Event) -> bool:
    """Whether `target` is told of a run that is `event`: `on = ["failed", "fixed"]`
    (the default) or `["all"]`."""
    return "all" in target.on or event in target.on


def run_link(config: Config, repo: str, run_id: str) -> str | None:
    base = config.web.url
    if not base:
        return None
    return f"{base.rstrip('/')}/runs/{quote(repo, safe='')}/{quote(run_id, safe='')}"


def plan(config: Config, run: Path, now: datetime) -> tuple[RunFacts, RunNotifications]:
    """What to send about the finished run at `run`: the facts, and one pending delivery
    per `[[notify]]` entry that wants it. Raises `RecordUnreadable`."""
    repo = run.parent.parent.name
    targets = [target for target in config.notify if target.wants(repo)]
    meta, state, result, failed, duration = read_facts(run)
    # The previous run is looked for only when someone may be told (it reads older runs).
    previous = previous_state(run, meta.ref) if targets and state == "complete" else None
    event = event_of(state, previous)
    facts = facts_of(config, repo, meta, state, event, result, failed, duration)
    deliveries = [
        Delivery(target=target_name(target), event=event, next_at=now)
        for target in targets
        if wanted(target, event)
    ]
    return facts, RunNotifications(deliveries=deliveries)


def facts_of(
    config: Config,
    repo: str,
    meta: RunMeta,
    state: str,
    event: str,
    result: RunResult | None,
    failed: list[str],
    duration: float | None,
) -> RunFacts:
    return RunFacts(
        repository=repo,
        run_id=meta.run_id,
        ref=meta.ref,
        sha=meta.sha,
        state=state,
        event=event,
        reason=None if result is None or result.reason is None else result.reason.value,
        failed_jobs=failed,
        duration_s=duration,
        trigger=meta.trigger.kind,
        url=run_link(config, repo, meta.run_id),
    )


def email_of(target: NotifyTarget, facts: RunFacts) -> EmailMessage:
    """The mail telling `facts`."""
    message = EmailMessage()
    ref = (facts.ref or "").removeprefix("refs/heads/")
    failed = f" ({', '.join(facts.failed_jobs)})" if facts.failed_jobs else ""
    message["Subject"] = f"[quire] {facts.repository} {ref}: {facts.event}{failed}"
    message["From"] = target.sender
    message["To"] = ", ".join(target.email or [])
    lines = [
        f"run       {facts.run_id}",
        f"repo      {facts.repository}",
        f"ref       {facts.ref}",
        f"commit    {facts.sha}",
        f"state     {facts.state}" + (f" ({facts.reason})" if facts.reason else ""),
        f"trigger   {facts.trigger}",
    ]
    if facts.failed_jobs:
        lines.append(f"failed    {', '.join(facts.failed_jobs)}")
    if facts.duration_s is not None:
        lines.append(f"duration  {facts.duration_s:.1f}s")
    if facts.url:
        lines.append(f"\n{facts.url}")
    message.set_content("\n".join(lines) + "\n")
    return message


def deliver(target: NotifyTarget, facts: RunFacts, senders: Senders) -> str:
    """Send `facts` to `target` once; returns what the other side said. Raises
    `SendFailed`, and `ConfigError` for a secret that cannot be read."""
    if target.url is not None:
        body = facts.model_dump_json().encode()
        headers = {"Content-Type": "application/json", "User-Agent": "quire"}
        secret = target.secret_value()
        if secret is not None:
            headers[SIGNATURE_HEADER] = sign(secret, body)
        return senders.webhook(target.url, body, headers)
    return senders.email(target.smtp, email_of(target, facts))


@dataclass
class Pending:
    """A run whose notifications are not settled."""

    repo: str
    run_id: str
    entry: Entry | None = None  # its queue row (None from a marker of an older quire)
    path: Path | None = None  # its directory, once found
    facts: RunFacts | None = None
    record: RunNotifications | None = None


FindRun = Callable[[str, str], Path | None]


def find_run(repo: str, run_id: str) -> Path | None:
    """The directory of run `run_id` of repository `repo` in the run store."""
    from quire.ci.store.runs import RunStore

    try:
        return RunStore(repo).find(run_id).path
    except (QuireError, OSError):
        return None


@dataclass
class Notifier:
    """Sends finished runs' notifications in the background (module docstring).

    `step(now)` does whatever is due and returns when to come back; the thread
    (`start`/`stop`) only calls it. Unit tests call `step` with a fake clock and
    fake senders."""

    state: Path
    load: Callable[[], Config]
    senders: Senders = field(default_factory=NetSenders)
    find: FindRun = find_run
    wall: Callable[[], datetime] = lambda: datetime.now(UTC)
    delays: Sequence[float] = RETRY_DELAYS_S
    # Called after notifications.yml changed: with a database, the worker ships the run's
    # directory to the run index again, so every machine's `show` and web page see it.
    published: Callable[[Entry], None] | None = None
    pending: dict[str, Pending] = field(default_factory=dict)
    _wake: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    @property
    def folder(self) -> Path:
        return self.state / PENDING_DIR

    # --- the worker's side (its own thread) ------------------------------------------------

    def finished(self, entry: Entry) -> None:
        """A run's outcome is recorded: remember it (a marker file, so a restart still
        sends), and wake the thread. Never raises: a notification never stops a worker."""
        repo, run_id = entry.repo, entry.run_id
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            marker = self.folder / f"{run_id}.json"
            data = {"repo": repo, "run_id": run_id, "entry": entry.as_json()}
            write_text_atomically(marker, json.dumps(data))  # never a half marker after a crash
        except OSError as exc:
            log.error("run %s: cannot remember its notifications: %s", run_id, exc)
        with self._lock:
            self.pending.setdefault(run_id, Pending(repo, run_id, entry))
        self._wake.set()

    def start(self) -> None:
        """Take up the runs earlier workers left unsettled, then send in a thread."""
        self.take_up()
        self._thread = threading.Thread(target=self._loop, name="quire-notify", daemon=True)
        self._thread.start()

    def stop(self, wait_s: float = 5.0) -> None:
        """Stop the thread (an attempt in flight ends within its timeout); what is not
        settled stays in the markers for the next worker."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(wait_s)

    def take_up(self) -> None:
        """The markers left by an earlier worker on this state directory."""
        if not self.folder.is_dir():
            return
        for marker in sorted(self.folder.glob("*.json")):
            try:
                data = json.loads(marker.read_text(encoding="utf-8"))
                repo, run_id = str(data["repo"]), str(data["run_id"])
                entry = Entry(data["entry"]) if isinstance(data.get("entry"), dict) else None
            except (OSError, ValueError, KeyError, TypeError):
                log.error("notification marker %s is unreadable; removing it", marker)
                marker.unlink(missing_ok=True)
                continue
            with self._lock:
                self.pending.setdefault(run_id, Pending(repo, run_id, entry))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.step(self.wall())
            except Exception:  # a bug of ours must not end the sending for good
                log.exception("notifications: unexpected error; trying again in 60s")
                wait = 60.0
            self._wake.wait(wait)
            self._wake.clear()

    # --- the thread's work ---------------------------------------------------------------------

    def step(self, now: datetime) -> float:
        """Plan new runs, send what is due at `now`; returns seconds until the next is due."""
        with self._lock:
            runs = list(self.pending.values())
        if not runs:
            return 3600.0
        try:
            config = self.load()
        except ConfigError as exc:
            # Nothing can be planned or sent: come back later, not at once (a retry due
            # now would turn the thread's loop without pause until the config is fixed).
            log.error("notifications: %s (trying again in 60s)", exc)
            return 60.0
        later: list[datetime] = []
        for pending in runs:
            if self._stop.is_set():
                break
            if not self._advance(pending, config, now):
                self._settle(pending)
                continue
            assert pending.record is not None  # planned, or read back, by _advance
            later.extend(
                d.next_at for d in pending.record.deliveries if d.next_at and not d.settled
            )
        if not later:
            return 3600.0
        return max(0.0, (min(later) - now).total_seconds())

    def _advance(self, pending: Pending, config: Config, now: datetime) -> bool:
        """Plan or read `pending`'s deliveries and send those due; False once settled."""
        if pending.record is None and not self._open(pending, config, now):
            return False
        assert pending.path is not None and pending.record is not None
        assert pending.facts is not None
        targets = {target_name(t): t for t in config.notify}
        changed = False
        for delivery in pending.record.deliveries:
            if delivery.settled or (delivery.next_at is not None and delivery.next_at > now):
                continue
            self._attempt(delivery, targets.get(delivery.target), pending, now)
            changed = True
        if changed:
            self._write(pending)
        return not pending.record.settled

    def _open(self, pending: Pending, config: Config, now: datetime) -> bool:
        """Find the run, and read its notifications.yml or plan it; False: nothing to do."""
        path = self.find(pending.repo, pending.run_id)
        if path is None or _run_state(path) not in FINISHED_STATES:
            log.debug("run %s: no finished record; no notifications", pending.run_id)
            return False
        pending.path = path
        existing = path / NOTIFICATIONS_FILE
        try:
            facts, planned = plan(config, path, now)
            known = existing.exists()
            if known:  # an earlier worker planned it: go on from there
                planned = read_record(existing, RunNotifications)
        except RecordUnreadable as exc:
            log.error("run %s: cannot read its records for notifications: %s", pending.run_id, exc)
            return False
        pending.facts, pending.record = facts, planned
        if not planned.deliveries:
            return False
        if not known:
            self._write(pending)
        return True

    def _attempt(
        self, delivery: Delivery, target: NotifyTarget | None, pending: Pending, now: datetime
    ) -> None:
        assert pending.facts is not None
        if target is None:
            delivery.attempts.append(Attempt(at=now, ok=False, detail="no longer in the config"))
            delivery.state, delivery.next_at = "gave-up", None
            return
        try:
            detail = deliver(target, pending.facts, self.senders)
        except (SendFailed, ConfigError) as exc:
            self._failed(delivery, pending, now, str(exc))
            return
        except Exception:  # a bug of ours: counted as an attempt, so it is bounded too
            log.exception("run %s: %s: unexpected error", pending.run_id, delivery.target)
            self._failed(delivery, pending, now, "quire's own error (see the worker's log)")
            return
        delivery.attempts.append(Attempt(at=now, ok=True, detail=detail))
        delivery.state, delivery.next_at = "delivered", None
        log.info("run %s: notified %s (%s)", pending.run_id, delivery.target, delivery.event)

    def _failed(self, delivery: Delivery, pending: Pending, now: datetime, detail: str) -> None:
        """Record a failed attempt; try again after the next delay, or give up."""
        delivery.attempts.append(Attempt(at=now, ok=False, detail=detail))
        tries = len(delivery.attempts)
        if tries > len(self.delays):
            delivery.state, delivery.next_at = "gave-up", None
            log.error(
                "run %s: %s: gave up after %d attempts: %s",
                pending.run_id,
                delivery.target,
                tries,
                detail,
            )
        else:
            delivery.next_at = now + timedelta(seconds=self.delays[tries - 1])

    def _write(self, pending: Pending) -> None:
        assert pending.path is not None and pending.record is not None
        try:
            write_record(pending.path / NOTIFICATIONS_FILE, pending.record)
        except OSError as exc:
            log.error("run %s: cannot write %s: %s", pending.run_id, NOTIFICATIONS_FILE, exc)
            return
        if self.published is not None and pending.entry is not None:
            try:
                self.published(pending.entry)
            except (QuireError, OSError) as exc:
                log.error("run %s: cannot publish its notifications: %s", pending.run_id, exc)

    def _settle(self, pending: Pending) -> None:
        with self._lock:
            self.pending.pop(pending.run_id, None)
        with contextlib.suppress(OSError):
            os.unlink(self.folder / f"{pending.run_id}.json")
