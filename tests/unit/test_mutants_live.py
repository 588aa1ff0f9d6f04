"""The live follower never opens a job log that leads outside the state directory, even
one that appears between its look at the run's records and its reading of the logs
(issue 19: a single dropped check)."""

from __future__ import annotations

import os
from pathlib import Path

from quire.web.live import RunFollower
from quire.web.lookup import StoreView
from tests.unit.test_web_support import Store, line, out, run_id

SECRET = "TOPSECRET-outside-the-store"


def test_a_job_linked_outside_between_the_records_and_the_logs_is_not_read(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "state")
    outside = Store(tmp_path / "elsewhere").add(99, jobs={"x": out(SECRET + "\n")})
    path = store.add(1, state="active", jobs={"a": line("sh-start", cmd="make")})
    view = StoreView(store.state / "runs")
    follower = RunFollower(view, view.run("proj", run_id(1)), lambda run: {"html": ""})
    try:
        assert follower.poll()
        checked = follower._jobs_changed

        def then_linked() -> list[tuple[str, dict[str, object]]]:
            messages = checked()  # the records were checked: nothing leads outside yet
            os.symlink(outside / "jobs" / "x", path / "jobs" / "evil")
            return messages

        follower._jobs_changed = then_linked  # type: ignore[method-assign]
        messages = follower.poll()
        follower._jobs_changed = checked  # type: ignore[method-assign]
        messages += follower.poll()
    finally:
        follower.close()
    assert SECRET not in repr(messages)
    assert messages[-1] == ("end", {"state": "gone"}) and follower.finished
