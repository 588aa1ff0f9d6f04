"""Notifications with the run index on PostgreSQL: a run's notifications.yml, written by the
worker's sender after the run ended, reaches a reader on another machine (its own state
directory, sharing only the database), so `quire ci show` there lists the deliveries.

The server, the workers and the reader are those of test_workers_postgres.py and
test_run_index_postgres.py; without PostgreSQL skipped, unless QUIRE_REQUIRE_POSTGRES=1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration import test_workers_postgres as workers
from tests.integration.test_run_index_postgres import read
from tests.integration.test_schedules_notify import (
    FAILING,
    free_port,
    notify_config,
    receiver,
    write_config,
)
from tests.integration.test_worker import push, pushable, wait_for
from tests.integration.test_workers_postgres import all_done, machine_worker, rows

pytestmark = pytest.mark.integration

server = workers.server
database = workers.database
no_container_left_behind = workers.no_container_left_behind


def test_a_runs_notifications_reach_a_reader_through_the_run_index(
    tmp_path: Path, database: str
) -> None:
    port = free_port()
    _, work = pushable(tmp_path, "told", {".quire/ci.py": FAILING})
    write_config(notify_config(port))
    with receiver(port) as hooks, machine_worker(tmp_path, "w1") as proc:
        push(work, "HEAD:main")
        wait_for(all_done(database, 1), "the run", proc=proc)
        wait_for(lambda: len(hooks.received) == 1, "the webhook", proc=proc)
        (row,) = rows(database)

        def shown() -> list[str]:
            done = read(tmp_path, "ci", "show", row.run_id, "--json")
            if done.returncode != 0:
                return []
            found = json.loads(done.stdout).get("notifications") or {"deliveries": []}
            return [delivery["state"] for delivery in found["deliveries"]]

        wait_for(lambda: shown() == ["delivered"], "the delivery on the reader", proc=proc)
    (document,) = hooks.documents()
    assert document["run_id"] == row.run_id and document["event"] == "failed"
