"""notifications.yml: the notifications of a finished run, each attempt and its result.

Written by the worker's sender (quire.service.notify) into the run's directory, beside
its other records, so that `quire ci show` (and `--json`) and the web page show them and
whatever carries a run's directory carries them too. Never a secret: a webhook is
named by its URL without user, password or query, an email by its addresses.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from quire.ci.vocabulary import Record

NOTIFICATIONS_FILE = "notifications.yml"

# What a run was, as the `on` rules of `[[notify]]` see it.
Event = Literal["failed", "fixed", "complete", "cancelled"]


class Attempt(Record):
    """One try to deliver: when, and what came of it (an HTTP status, an SMTP reply)."""

    at: datetime
    ok: bool
    detail: str


class Delivery(Record):
    """One notification of the run to one `[[notify]]` entry."""

    target: str  # `webhook https://host/path` or `email a@example.com, b@example.com`
    event: Event
    state: Literal["pending", "delivered", "gave-up"] = "pending"
    attempts: list[Attempt] = Field(default_factory=list)
    next_at: datetime | None = None  # pending: not tried again before

    @property
    def settled(self) -> bool:
        return self.state != "pending"


class RunNotifications(Record):
    """notifications.yml."""

    deliveries: list[Delivery] = Field(default_factory=list)

    @property
    def settled(self) -> bool:
        return all(delivery.settled for delivery in self.deliveries)
