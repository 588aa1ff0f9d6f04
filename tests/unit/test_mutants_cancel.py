"""A cancel request that no signal followed (the run ended first) changes nothing: only
an interrupted run becomes cancelled (issue 19: a dropped condition in `_cancelled`)."""

from __future__ import annotations

from pathlib import Path

from quire.ci.run.executors.base import Command
from quire.ci.store.runs import RunState
from quire.errors import ExitCode
from tests.helpers import make_repo
from tests.unit.test_orchestrator import TWO_JOBS, FakeExecutor, Harness


def test_a_run_that_ends_before_the_cancel_signal_stays_complete(tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    make_repo(repo, {".quire/ci.py": TWO_JOBS})
    rig = Harness(repo)

    def asked(executor: FakeExecutor, command: Command) -> None:
        # `quire ci cancel` has written its request; its signal has not come (yet).
        rig.store.request_cancel(executor.setup.workspace.parent.name, "alice")

    rig.hooks["execute"] = asked
    assert rig.run() == ExitCode.ok
    state, _ = rig.only_run()
    assert state == RunState.complete
    result = rig.result()
    assert result.cancelled_by is None
    assert result.exit_code == ExitCode.ok
