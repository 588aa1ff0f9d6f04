"""Scheduled runs and notifications, end to end, with a real `quire ci worker`.

Schedules: a cron line every minute; the nightly job (inputs quire/schedule) runs and
reads its source, the push job does not. Notifications: a webhook receiver (http.server
on 127.0.0.1, checking the signature), an SMTP server (aiosmtpd on 127.0.0.1), and a
receiver that is down at first, then up (the retry delivers once).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from quire.ci.store.deliveries import NOTIFICATIONS_FILE, RunNotifications
from quire.ci.store.records import read_record
from quire.ci.store.runs import RunState
from quire.paths import state_dir
from quire.service.queue import Queue, queue_path
from tests.helpers import commit, git, make_repo
from tests.integration.test_worker import (
    meta,
    pushable,
    quire,
    rows,
    runs_of,
    wait_for,
    worker,
)

pytestmark = pytest.mark.integration

SECRET = "webhook-signing-secret"
PIPELINE = """\
from quire.ci import job, Runtime


@job(inputs=["quire/push"])
def on_push(rt: Runtime):
    rt.sh("echo pushed", check=True)


@job(inputs=["quire/schedule"])
def nightly(rt: Runtime):
    return dict(rt.jobs("quire/schedule"))
"""
FAILING = """\
from quire.ci import job, Runtime


@job(inputs=["quire/push"])
def lint(rt: Runtime):
    rt.sh("exit 3", check=True)
"""
PASSING = """\
from quire.ci import job, Runtime


@job(inputs=["quire/push"])
def lint(rt: Runtime):
    rt.sh("true", check=True)
"""


def write_config(text: str) -> None:
    import os

    path = Path(os.environ["QUIRE_CONFIG"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scheduled_repo(tmp_path: Path, cron: str) -> Path:
    """A bare repository with PIPELINE on main (no hook: only the schedule queues runs)."""
    work = tmp_path / "proj"
    make_repo(work, {".quire/ci.py": PIPELINE}, bare_clone=True)
    bare = Path(f"{work}.git")
    write_config(
        f'[repositories.proj]\npath = "{bare}"\nschedules = [{{ cron = "{cron}", ref = "main" }}]\n'
    )
    return bare


def scheduled_rows() -> list[Any]:
    return [r for r in rows() if r.trigger_json]


def check_scheduled_run(bare: Path, cron: str) -> None:
    """The first scheduled run ran the nightly job only, which read its source."""
    row = scheduled_rows()[0]
    assert row.outcome == "complete", row.message
    (run,) = [r for r in runs_of(bare) if r.run_id == row.run_id]
    assert run.state == RunState.complete
    recorded = meta(run)
    assert recorded.trigger.kind == "schedule" and recorded.trigger.schedule == cron
    assert recorded.trigger.due_at is not None
    jobs = {state.job_id: state for state in run.job_states()}
    assert list(jobs) == ["nightly"]  # the push job is not part of a scheduled run
    given = jobs["nightly"].outputs
    assert given["cron"] == cron and given["ref"] == "refs/heads/main"
    assert given["sha"] == git(bare, "rev-parse", "main")
    assert given["due_at"] == recorded.trigger.due_at.isoformat().replace("+00:00", "Z")
    shown = quire("ci", "show", run.run_id, "--repo", str(bare))
    assert f"trigger   schedule {cron} (due " in shown.stdout


def test_a_time_missed_while_no_worker_ran_runs_once_when_one_starts(tmp_path: Path) -> None:
    bare = scheduled_repo(tmp_path, "* * * * *")
    # The schedule was last taken long ago: every minute since is a missed time.
    with Queue(queue_path(state_dir())) as queue:
        queue.claim_schedule(str(bare), "* * * * *", "refs/heads/main", "2026-01-01T00:00:00Z")
    with worker(tmp_path) as proc:
        wait_for(lambda: [r.state for r in scheduled_rows()] == ["done"], "the run", proc=proc)
        assert len(scheduled_rows()) == 1  # once, not once per missed minute
    check_scheduled_run(bare, "* * * * *")


def test_a_schedule_every_minute_runs_its_jobs_at_the_next_minute(tmp_path: Path) -> None:
    # The real clock: a new schedule's first run is at its next time, within a minute.
    bare = scheduled_repo(tmp_path, "* * * * *")
    with worker(tmp_path) as proc:
        wait_for(
            lambda: [r.state for r in scheduled_rows()][:1] == ["done"],
            "the scheduled run",
            timeout=150,
            proc=proc,
        )
    check_scheduled_run(bare, "* * * * *")


def test_a_push_of_a_pipeline_with_nightly_jobs_only_is_complete_with_nothing_run(
    tmp_path: Path,
) -> None:
    nightly_only = PIPELINE.split('@job(inputs=["quire/schedule"])')[1]
    source = 'from quire.ci import job, Runtime\n\n\n@job(inputs=["quire/schedule"])' + nightly_only
    bare, work = pushable(tmp_path, "nightly-only", {".quire/ci.py": source})
    with worker(tmp_path) as proc:
        from tests.integration.test_worker import push

        push(work, "HEAD:main")
        wait_for(lambda: [r.state for r in rows()] == ["done"], "the push's row", proc=proc)
    (row,) = rows()
    assert (row.outcome, row.reason) == ("complete", "no-jobs"), row.message
    assert "nothing to run for the source quire/push" in (row.message or "")
    assert runs_of(bare) == []


# --- notifications ------------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on 127.0.0.1: keeps each POST's headers and body, and answers
    once `answer` is set (at once by default)."""

    def __init__(self, port: int) -> None:
        received: list[tuple[dict[str, str], bytes]] = []
        self.received = received
        self.answer = answer = threading.Event()
        answer.set()
        self.status = 204
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers), body))
                answer.wait(120)
                self.send_response(server.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.answer.set()
        self.server.shutdown()
        self.server.server_close()

    def documents(self) -> list[dict[str, Any]]:
        found = []
        for headers, body in self.received:
            expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            assert headers["X-Quire-Signature-256"] == expected
            found.append(json.loads(body))
        return found


@contextmanager
def receiver(port: int) -> Iterator[Receiver]:
    started = Receiver(port)
    try:
        yield started
    finally:
        started.close()


@contextmanager
def smtp_server(port: int) -> Iterator[list[bytes]]:
    from aiosmtpd.controller import Controller

    mails: list[bytes] = []

    class Keep:
        async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
            mails.append(envelope.original_content)
            return "250 OK"

    controller = Controller(Keep(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mails
    finally:
        controller.stop()


def notify_config(hook_port: int, smtp_port: int | None = None) -> str:
    text = (
        '[web]\nurl = "http://ci.example.test"\n\n'
        f'[[notify]]\nurl = "http://127.0.0.1:{hook_port}/hook"\nsecret = "{SECRET}"\n'
    )
    if smtp_port is not None:
        text += (
            f'\n[[notify]]\nemail = ["team@example.test"]\nsmtp = "smtp://127.0.0.1:{smtp_port}"\n'
            'from = "quire@example.test"\n'
        )
    return text


def test_a_failing_push_sends_a_signed_webhook_and_a_mail_and_the_fix_says_fixed(
    tmp_path: Path,
) -> None:
    hook_port, smtp_port = free_port(), free_port()
    bare, work = pushable(tmp_path, "notified", {".quire/ci.py": FAILING})
    write_config(notify_config(hook_port, smtp_port))
    with receiver(hook_port) as hooks, smtp_server(smtp_port) as mails, worker(tmp_path) as proc:
        from tests.integration.test_worker import push

        push(work, "HEAD:main")
        wait_for(lambda: len(hooks.received) == 1 and len(mails) == 1, "the failure", proc=proc)
        commit(work, {".quire/ci.py": PASSING})
        push(work, "HEAD:main")
        wait_for(lambda: len(hooks.received) == 2 and len(mails) == 2, "the fix", proc=proc)
        failed, fixed = hooks.documents()
        failure_mail, fixed_mail = (message_from_bytes(m) for m in mails)
    runs = sorted(runs_of(bare), key=lambda r: r.run_id)
    assert failed["event"] == "failed" and failed["state"] == "failed"
    assert failed["failed_jobs"] == ["lint"] and failed["run_id"] == runs[0].run_id
    assert failed["ref"] == "refs/heads/main" and failed["repository"] == runs[0].store.repo
    assert failed["url"] == f"http://ci.example.test/runs/{runs[0].store.repo}/{runs[0].run_id}"
    assert fixed["event"] == "fixed" and fixed["state"] == "complete"
    assert failure_mail["To"] == "team@example.test"
    assert failure_mail["Subject"] == f"[quire] {runs[0].store.repo} main: failed (lint)"
    assert fixed_mail["Subject"] == f"[quire] {runs[0].store.repo} main: fixed"
    # Each attempt is in the run's record, and `show` tells it; the secret is nowhere.
    record = read_record(runs[0].path / NOTIFICATIONS_FILE, RunNotifications)
    assert [d.state for d in record.deliveries] == ["delivered", "delivered"]
    shown = quire("ci", "show", runs[0].run_id, "--repo", str(bare))
    assert "notify    webhook http://127.0.0.1" in shown.stdout and "delivered" in shown.stdout
    as_json = json.loads(quire("ci", "show", runs[0].run_id, "--repo", str(bare), "--json").stdout)
    assert len(as_json["notifications"]["deliveries"]) == 2
    assert SECRET not in (runs[0].path / NOTIFICATIONS_FILE).read_text()


def test_a_receiver_down_then_up_gets_the_notification_once(tmp_path: Path) -> None:
    hook_port = free_port()
    bare, work = pushable(tmp_path, "retried", {".quire/ci.py": FAILING})
    write_config(notify_config(hook_port))
    with worker(tmp_path) as proc:
        from tests.integration.test_worker import push

        push(work, "HEAD:main")

        def attempts() -> list[bool]:
            runs = runs_of(bare)
            path = runs[0].path / NOTIFICATIONS_FILE if runs else None
            if path is None or not path.exists():
                return []
            (delivery,) = read_record(path, RunNotifications).deliveries
            return [a.ok for a in delivery.attempts]

        wait_for(lambda: attempts() == [False], "the first attempt to fail", proc=proc)
        with receiver(hook_port) as hooks:
            wait_for(lambda: attempts() == [False, True], "the retry", proc=proc)
            assert len(hooks.received) == 1
            (document,) = hooks.documents()
    assert document["event"] == "failed"


def test_a_receiver_that_does_not_answer_holds_up_no_run(tmp_path: Path) -> None:
    hook_port = free_port()
    _, work = pushable(tmp_path, "slow", {".quire/ci.py": FAILING})
    write_config(notify_config(hook_port))
    with receiver(hook_port) as hooks, worker(tmp_path) as proc:
        from tests.integration.test_worker import push

        hooks.answer.clear()  # the receiver takes the request and does not answer
        push(work, "HEAD:main")
        wait_for(lambda: len(hooks.received) == 1, "the webhook", proc=proc)
        commit(work, {".quire/ci.py": PASSING})
        push(work, "HEAD:main")
        # The next push runs to its end while the first notification is still unanswered.
        wait_for(lambda: [r.state for r in rows()] == ["done", "done"], "the second run", proc=proc)
        assert not hooks.answer.is_set() and len(hooks.received) == 1
        hooks.answer.set()
    assert sorted(r.outcome or "" for r in rows()) == ["complete", "failed"]


def test_the_webhook_sender_counts_2xx_only_and_gives_up_on_silence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from quire.service import notify

    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    with receiver(port) as hooks:
        assert notify.NetSenders().webhook(url, b"{}", {}) == "HTTP 204"
        hooks.status = 500
        with pytest.raises(notify.SendFailed, match="HTTP 500"):
            notify.NetSenders().webhook(url, b"{}", {})
        hooks.status = 302
        with pytest.raises(notify.SendFailed, match="HTTP 302"):
            notify.NetSenders().webhook(url, b"{}", {})
        hooks.status = 204
        hooks.answer.clear()  # no answer within the timeout: a failed attempt
        monkeypatch.setattr(notify, "SEND_TIMEOUT_S", 0.5)
        with pytest.raises(notify.SendFailed, match="timed out"):
            notify.NetSenders().webhook(url, b"{}", {})
