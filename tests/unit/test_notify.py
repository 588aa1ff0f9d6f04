"""Notifications: the on= rules, the signature, retries with bounded backoff, the record.

Runs are real run directories (records written with write_record in tmp_path), the
senders and the clock are fakes; the worker hands finished runs over by `finished`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from quire.ci.store.deliveries import NOTIFICATIONS_FILE, RunNotifications
from quire.ci.store.records import (
    EndReason,
    ExecutorKind,
    JobState,
    JobStatus,
    RunMeta,
    RunResult,
    RunTimes,
    Trigger,
    read_record,
    write_record,
)
from quire.config import Config, NotifyTarget, SecretSpec, WebSettings
from quire.errors import ConfigError
from quire.service.notify import (
    RETRY_DELAYS_S,
    SIGNATURE_HEADER,
    NetSenders,
    Notifier,
    SendFailed,
    event_of,
    sign,
    target_name,
)
from quire.service.queue import ENTRY_FIELDS, Entry

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
SECRET = "s3cret-signing-key"
HOOK_URL = "https://hooks.example.com/services/T0KEN-in-the-path"


class FakeSenders:
    """Records what was sent; fails while `down` is above zero (counting down)."""

    def __init__(self, down: int = 0) -> None:
        self.down = down
        self.webhooks: list[tuple[str, bytes, dict[str, str]]] = []
        self.emails: list[EmailMessage] = []

    def webhook(self, url: str, body: bytes, headers: dict[str, str]) -> str:
        if self.down:
            self.down -= 1
            raise SendFailed("cannot reach it: connection refused")
        self.webhooks.append((url, body, headers))
        return "HTTP 204"

    def email(self, smtp: str, message: EmailMessage) -> str:
        if self.down:
            self.down -= 1
            raise SendFailed("SMTP: connection refused")
        self.emails.append(message)
        return "SMTP accepted"


def make_run(
    root: Path,
    run_id: str,
    state: str,
    ref: str = "refs/heads/main",
    failed: tuple[str, ...] = (),
    trigger: Trigger | None = None,
) -> Path:
    run = root / "runs" / "proj-1a2b3c4d" / state / run_id
    run.mkdir(parents=True)
    meta = RunMeta(
        run_id=run_id,
        repo="proj-1a2b3c4d",
        git_dir="/srv/git/proj.git",
        revision="b" * 40,
        sha="b" * 40,
        ref=ref,
        pushed_at=T0,
        executor=ExecutorKind.host,
        trigger=trigger or Trigger(kind="push"),
    )
    write_record(run / "meta.yml", meta)
    write_record(run / "times.yml", RunTimes(started_at=T0, finished_at=T0 + timedelta(seconds=4)))
    reason = EndReason.jobs_failed if state == "failed" else None
    write_record(run / "result.yml", RunResult(reason=reason, exit_code=1 if failed else 0))
    for job in ("build", *failed):
        (run / "jobs" / job).mkdir(parents=True, exist_ok=True)
        status = JobStatus.failed if job in failed else JobStatus.success
        write_record(run / "jobs" / job / "state.yml", JobState(job_id=job, status=status))
    return run


def entry_of(run_id: str) -> Entry:
    values: dict[str, object] = dict.fromkeys(ENTRY_FIELDS)
    values.update(run_id=run_id, git_dir="/srv/git/proj.git", cancel=0)
    return Entry(values)


def webhook(**changes: object) -> NotifyTarget:
    data: dict[str, object] = {"url": HOOK_URL, "secret": SECRET, **changes}
    return NotifyTarget.model_validate(data)


class Fixture:
    def __init__(self, tmp_path: Path, targets: list[NotifyTarget], down: int = 0) -> None:
        self.root = tmp_path
        self.now = T0
        self.senders = FakeSenders(down)
        self.config = Config(notify=targets, web=WebSettings(url="https://ci.example.com/"))
        self.runs: dict[str, Path] = {}
        self.published: list[str] = []
        self.notifier = Notifier(
            tmp_path / "state",
            lambda: self.config,
            senders=self.senders,
            find=lambda repo, run_id: self.runs.get(run_id),
            wall=lambda: self.now,
            published=lambda entry: self.published.append(entry.run_id),
        )

    def finish(self, run_id: str, state: str, **kw: object) -> Path:
        path = make_run(self.root, run_id, state, **kw)  # type: ignore[arg-type]
        self.runs[run_id] = path
        self.notifier.finished(entry_of(run_id))
        return path

    def step(self) -> float:
        return self.notifier.step(self.now)


def test_event_of_a_run_after_the_previous_one() -> None:
    assert event_of("failed", None) == "failed"
    assert event_of("failed", "failed") == "failed"
    assert event_of("complete", "failed") == "fixed"
    assert event_of("complete", "complete") == "complete"
    assert event_of("complete", None) == "complete"
    assert event_of("cancelled", "failed") == "cancelled"


def test_the_default_tells_a_failure_and_the_first_success_after_it(tmp_path: Path) -> None:
    f = Fixture(tmp_path, [webhook()])
    f.finish("20260105-100000-000000-aaaaaa", "complete")
    f.step()
    f.finish("20260105-100100-000000-aaaaaa", "failed", failed=("lint",))
    f.step()
    f.finish("20260105-100200-000000-aaaaaa", "failed", failed=("lint",))
    f.step()
    f.finish("20260105-100300-000000-aaaaaa", "complete")
    f.step()
    f.finish("20260105-100400-000000-aaaaaa", "complete")
    f.step()
    events = [json.loads(body)["event"] for _, body, _ in f.senders.webhooks]
    assert events == ["failed", "failed", "fixed"]


def test_fixed_is_per_ref(tmp_path: Path) -> None:
    f = Fixture(tmp_path, [webhook()])
    f.finish("20260105-100000-000000-aaaaaa", "failed", failed=("lint",))
    f.finish("20260105-100100-000000-aaaaaa", "complete", ref="refs/heads/other")
    f.step()
    events = [json.loads(body)["event"] for _, body, _ in f.senders.webhooks]
    assert events == ["failed"]  # the other branch's success fixed nothing


def test_fixed_compares_with_the_previous_run_of_the_ref_whatever_started_it(
    tmp_path: Path,
) -> None:
    # The README says so: a green push after a failed nightly is "fixed".
    f = Fixture(tmp_path, [webhook()])
    nightly = Trigger(kind="schedule", schedule="0 3 * * *", due_at=T0)
    f.finish("20260105-030000-000000-aaaaaa", "failed", failed=("slow",), trigger=nightly)
    f.step()
    f.finish("20260105-100000-000000-aaaaaa", "complete")
    f.step()
    told = [json.loads(body) for _, body, _ in f.senders.webhooks]
    assert [(d["trigger"], d["event"]) for d in told] == [("schedule", "failed"), ("push", "fixed")]


def test_all_tells_every_run_and_repos_choose_repositories(tmp_path: Path) -> None:
    f = Fixture(
        tmp_path,
        [webhook(on=["all"]), webhook(url="https://elsewhere.example.com/", repos=["other"])],
    )
    f.finish("20260105-100000-000000-aaaaaa", "complete")
    f.step()
    assert [url for url, _, _ in f.senders.webhooks] == [HOOK_URL]


def test_the_body_is_signed_and_tells_the_run(tmp_path: Path) -> None:
    f = Fixture(tmp_path, [webhook()])
    run = f.finish("20260105-100000-000000-aaaaaa", "failed", failed=("lint",))
    f.step()
    ((url, body, headers),) = f.senders.webhooks
    assert url == HOOK_URL
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == f"sha256={expected}" == sign(SECRET, body)
    document = json.loads(body)
    assert document == {
        "repository": "proj-1a2b3c4d",
        "run_id": "20260105-100000-000000-aaaaaa",
        "ref": "refs/heads/main",
        "sha": "b" * 40,
        "state": "failed",
        "event": "failed",
        "reason": "jobs-failed",
        "failed_jobs": ["lint"],
        "duration_s": 4.0,
        "trigger": "push",
        "url": "https://ci.example.com/runs/proj-1a2b3c4d/20260105-100000-000000-aaaaaa",
    }
    # Neither the secret nor the URL's token is in the body or the record.
    record = (run / NOTIFICATIONS_FILE).read_text()
    for text in (body.decode(), record):
        assert SECRET not in text and "T0KEN" not in text
    assert target_name(webhook()) in record


def test_a_secret_from_the_environment_signs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", "from-env")
    f = Fixture(tmp_path, [webhook(secret=SecretSpec(env="HOOK_SECRET"))])
    f.finish("20260105-100000-000000-aaaaaa", "failed", failed=("lint",))
    f.step()
    ((_, body, headers),) = f.senders.webhooks
    assert headers[SIGNATURE_HEADER] == sign("from-env", body)


def test_an_email_tells_the_failure(tmp_path: Path) -> None:
    target = NotifyTarget.model_validate(
        {"email": ["team@example.com"], "smtp": "smtp://127.0.0.1:2525", "from": "ci@example.com"}
    )
    f = Fixture(tmp_path, [target])
    f.finish("20260105-100000-000000-aaaaaa", "failed", failed=("lint",))
    f.step()
    (mail,) = f.senders.emails
    assert mail["To"] == "team@example.com" and mail["From"] == "ci@example.com"
    assert mail["Subject"] == "[quire] proj-1a2b3c4d main: failed (lint)"
    assert "failed    lint" in mail.get_content()


def test_a_receiver_down_is_retried_with_backoff_and_delivered_once(tmp_path: Path) -> None:
    f = Fixture(tmp_path, [webhook()], down=2)
    run = f.finish("20260105-100000-000000-aaaaaa", "failed", failed=("lint",))
    assert f.step() == RETRY_DELAYS_S[0]
    f.now += timedelta(seconds=RETRY_DELAYS_S[0] - 1)
    assert f.step() == 1  # not yet
    f.now += timedelta(seconds=1)
    assert f.step() == RETRY_DELAYS_S[1]
    f.now += timedelta(seconds=RETRY_DELAYS_S[1])
    f.step()
    assert len(f.senders.webhooks) == 1
    (delivery,) = read_record(run / NOTIFICATIONS_FILE, RunNotifications).deliveries
    assert delivery.state == "delivered"
    assert [a.ok for a in delivery.attempts] == [False, False, True]
    assert "connection refused" in delivery.attempts[0].detail
    # Each change of the record is shipped to the run index (with a database).
    assert f.published == ["20260105-100000-000000-aaaaaa"] * 4
    # Settled: the marker is gone and nothing is sent again.
    assert not list((tmp_path / "state" / "notify.pending").iterdir())
    f.now += timedelta(hours=2)
    f.step()
    assert len(f.senders.webhooks) == 1


def test_retries_are_bounded_then_given_up(tmp_path: Path) -> None:
    f = Fixture(tmp_path, [webhook()], down=1000)
    run = f.finish("20260105-100000-000000-aaaaaa", "failed", failed=("lint",))
    waits = []
    for _ in range(20):
        wait = f.step()
        waits.append(wait)
        f.now += timedelta(seconds=wait)
    (delivery,) = read_record(run / NOTIFICATIONS_FILE, RunNotifications).deliveries
    assert delivery.state == "gave-up"
    assert len(delivery.attempts) == len(RETRY_DELAYS_S) + 1
    assert waits[: len(RETRY_DELAYS_S)] == list(RETRY_DELAYS_S)  # growing waits
    assert f.notifier.pending == {}


def test_a_new_worker_takes_up_what_an_earlier_one_left(tmp_path: Path) -> None:
    f = Fixture(tmp_path, [webhook()], down=1)
    run = f.finish("20260105-100000-000000-aaaaaa", "failed", failed=("lint",))
    f.step()  # the first attempt fails; then the worker stops
    republished: list[str] = []
    later = Notifier(
        tmp_path / "state",
        lambda: f.config,
        senders=f.senders,
        find=lambda repo, run_id: run,
        wall=lambda: f.now,
        published=lambda entry: republished.append(entry.run_id),
    )
    later.take_up()
    f.now += timedelta(seconds=RETRY_DELAYS_S[0])
    later.step(f.now)
    # The record changed: shipped again to the run index (its queue row came in the marker).
    assert republished == ["20260105-100000-000000-aaaaaa"]
    assert len(f.senders.webhooks) == 1
    (delivery,) = read_record(run / NOTIFICATIONS_FILE, RunNotifications).deliveries
    assert [a.ok for a in delivery.attempts] == [False, True]  # not planned afresh


def test_a_run_nobody_wants_told_leaves_no_record(tmp_path: Path) -> None:
    f = Fixture(tmp_path, [webhook()])
    run = f.finish("20260105-100000-000000-aaaaaa", "complete")
    f.step()
    assert not (run / NOTIFICATIONS_FILE).exists() and f.notifier.pending == {}


def test_a_target_removed_from_the_config_is_given_up(tmp_path: Path) -> None:
    f = Fixture(tmp_path, [webhook()], down=1)
    run = f.finish("20260105-100000-000000-aaaaaa", "failed", failed=("lint",))
    f.step()
    f.config = Config()
    f.now += timedelta(seconds=RETRY_DELAYS_S[0])
    f.step()
    (delivery,) = read_record(run / NOTIFICATIONS_FILE, RunNotifications).deliveries
    assert delivery.state == "gave-up" and delivery.attempts[-1].detail == "no longer in the config"


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({}, "give either url"),
        ({"url": "https://a", "email": ["x@y"]}, "give either url"),
        ({"url": "ftp://a"}, "http:// or https://"),
        ({"email": ["x@y"], "smtp": "mail:25"}, "smtp://host:port"),
        ({"url": "https://a", "on": ["sometimes"]}, "on"),
        ({"url": "https://a", "repos": []}, "non-empty list"),
        # A line break would end the header: the mail could not be built, at every attempt.
        ({"email": ["team@example.com\r\nBcc: all@example.com"]}, "one address"),
        ({"email": ["team@example.com"], "from": "ci@example.com\nBcc: x@y"}, "one address"),
        ({"email": ["not an address"]}, "one address"),
    ],
)
def test_bad_notify_entries_are_refused(entry: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        NotifyTarget.model_validate(entry)


def test_a_secret_that_cannot_be_read_keeps_the_url_token_out_of_the_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOOK_SECRET_MISSING", raising=False)
    f = Fixture(tmp_path, [webhook(secret=SecretSpec(env="HOOK_SECRET_MISSING"))])
    run = f.finish("20260105-100000-000000-aaaaaa", "failed", failed=("lint",))
    f.step()
    (delivery,) = read_record(run / NOTIFICATIONS_FILE, RunNotifications).deliveries
    assert not delivery.attempts[0].ok
    assert "HOOK_SECRET_MISSING" in delivery.attempts[0].detail
    assert "T0KEN" not in (run / NOTIFICATIONS_FILE).read_text()


def _answering(reply: bytes) -> tuple[str, threading.Thread]:
    """A one-connection TCP server on 127.0.0.1 that reads a request and answers `reply`."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.getsockname()[1]}/hook?token=T0KEN", thread


def test_a_receiver_answering_no_http_is_a_failed_attempt() -> None:
    url, thread = _answering(b"SSH-2.0-OpenSSH_9.6\r\n")
    with pytest.raises(SendFailed, match="HTTP") as caught:
        NetSenders().webhook(url, b"{}", {"Content-Type": "application/json"})
    assert "T0KEN" not in str(caught.value)
    thread.join()


def test_an_unexpected_error_of_one_run_does_not_hold_up_the_others(tmp_path: Path) -> None:
    f = Fixture(tmp_path, [webhook()])
    calls: list[str] = []
    real = f.senders.webhook

    def flaky(url: str, body: bytes, headers: dict[str, str]) -> str:
        calls.append(json.loads(body)["run_id"])
        if len(calls) == 1:
            raise RuntimeError("a bug of ours")
        return real(url, body, headers)

    f.senders.webhook = flaky  # type: ignore[method-assign]
    first = f.finish("20260105-100000-000000-aaaaaa", "failed", failed=("lint",))
    f.finish("20260105-100001-000000-bbbbbb", "failed", failed=("lint",))
    # A failed attempt like any other: counted (so retries stay bounded) and tried again later.
    assert f.step() == RETRY_DELAYS_S[0]
    assert len(calls) == 2  # the second run was still sent
    assert len(f.senders.webhooks) == 1
    (delivery,) = read_record(first / NOTIFICATIONS_FILE, RunNotifications).deliveries
    assert [a.ok for a in delivery.attempts] == [False]
    assert "worker's log" in delivery.attempts[0].detail


def test_a_redirect_is_a_failed_attempt_not_a_delivery() -> None:
    # urllib follows a 301/302/303 to a POST with a GET without the body: the receiver
    # would never have had the document, yet the attempt would read as delivered.
    url, thread = _answering(
        b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://elsewhere.example/hook\r\n"
        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    with pytest.raises(SendFailed, match=r"HTTP 301.*redirect"):
        NetSenders().webhook(url, b"{}", {"Content-Type": "application/json"})
    thread.join()


def test_a_config_broken_while_a_retry_is_due_waits_instead_of_spinning(tmp_path: Path) -> None:
    f = Fixture(tmp_path, [webhook()], down=1)
    f.finish("20260105-100000-000000-aaaaaa", "failed", failed=("lint",))
    assert f.step() == RETRY_DELAYS_S[0]
    f.now += timedelta(seconds=RETRY_DELAYS_S[0])

    def broken() -> Config:
        raise ConfigError("config.toml: line 3: broken")

    f.notifier.load = broken
    # 0 would turn the thread's loop without pause (and log the error each turn).
    assert f.step() == 60
    f.notifier.load = lambda: f.config
    f.now += timedelta(seconds=60)
    f.step()
    assert len(f.senders.webhooks) == 1
