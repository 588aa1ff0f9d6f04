"""What a queued run came to when a cancel was asked: cancelled only if the cancel is what
ended it (interrupted); a run that failed or passed on its own says so (issue 19)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from quire.ci.store.records import EndReason, ExecutorKind, RunMeta, RunResult, RunTimes
from quire.ci.store.runs import RunState, RunStore
from quire.service.outcome import from_record


@pytest.mark.parametrize(
    ("state", "reason", "exit_code", "expected"),
    [
        (RunState.failed, EndReason.jobs_failed, 1, ("failed", "jobs-failed")),
        (RunState.failed, EndReason.error, 3, ("failed", "error")),
        (RunState.complete, None, 0, ("complete", None)),
        (RunState.failed, EndReason.interrupted, 130, ("cancelled", "cancelled")),
    ],
)
def test_a_cancel_asked_makes_only_an_interrupted_run_cancelled(
    tmp_path: Path,
    state: RunState,
    reason: EndReason | None,
    exit_code: int,
    expected: tuple[str, str | None],
) -> None:
    store = RunStore("proj", root=tmp_path / "state", cache=tmp_path / "cache")
    now = datetime.now(UTC)

    def meta(run_id: str) -> RunMeta:
        return RunMeta(
            run_id=run_id,
            repo="proj",
            git_dir=str(tmp_path / "proj.git"),
            revision="HEAD",
            sha="a" * 40,
            pushed_at=now,
            executor=ExecutorKind.host,
        )

    run = store.create(meta)
    run.write_times(RunTimes(started_at=now, finished_at=now))
    run.write_result(RunResult(reason=reason, error="what happened", exit_code=exit_code))
    run.transition(RunState.active)
    run.transition(state)
    result = from_record(store.find(run.run_id), cancelled=True)
    assert (result.outcome, result.reason) == expected
