"""The run's source: `quire/push` or `quire/schedule`, which jobs each runs, what rt.jobs gives."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from quire.ci.pipeline import PUSH_SOURCE, SCHEDULE_SOURCE, Pipeline, load_pipeline
from quire.ci.run.jobs import JobRunner
from quire.ci.run.orchestrator import RunRequest, outlet_for, source_outputs
from quire.ci.run.redact import Redactor
from quire.ci.store.records import ExecutorKind, RunMeta, Trigger
from quire.ci.store.runs import RunDir, RunStore
from quire.config import Secrets
from quire.errors import PipelineError
from tests.helpers import Collected, ThreadJobHost
from tests.unit.test_jobs import FakeExecutor

CI = """
from quire.ci import job

@job(inputs=["quire/push"])
def lint(rt):
    return {"saw": dict(rt.jobs("quire/push"))}

@job(inputs=["quire/schedule"])
def nightly(rt):
    return {"saw": dict(rt.jobs("quire/schedule"))}

@job(inputs=["nightly"])
def report(rt):
    return {}

@job(inputs=["quire/push", "quire/schedule"])
def both(rt):
    return {"push": dict(rt.jobs("quire/push")), "schedule": dict(rt.jobs("quire/schedule"))}

@job(inputs=["lint", "both"])
def after(rt):
    return {}
"""

DUE = datetime(2026, 1, 6, 3, 0, tzinfo=UTC)


def load(source: str) -> Pipeline:
    return load_pipeline(textwrap.dedent(source).lstrip("\n"))


def test_validate_knows_the_schedule_source_and_a_typo_of_it() -> None:
    load(CI)  # no problem: quire/schedule is a source
    with pytest.raises(PipelineError) as caught:
        load(
            """
            from quire.ci import job

            @job(inputs=["quire/schedul"])
            def nightly(rt):
                pass
            """
        )
    assert "unknown input 'quire/schedul' (did you mean 'quire/schedule'?)" in str(caught.value)


def test_each_source_runs_its_own_jobs_and_those_that_take_both() -> None:
    pipeline = load(CI)
    assert pipeline.for_source(PUSH_SOURCE).order == ["lint", "both", "after"]
    assert pipeline.for_source(SCHEDULE_SOURCE).order == ["nightly", "report", "both"]


def test_a_scheduled_request_offers_the_schedule_source() -> None:
    scheduled = Trigger(kind="schedule", schedule="0 3 * * *", due_at=DUE)
    assert RunRequest(Path(), trigger=scheduled).source == SCHEDULE_SOURCE
    for trigger in (None, Trigger(), Trigger(kind="rerun"), Trigger(kind="manual")):
        assert RunRequest(Path(), trigger=trigger).source == PUSH_SOURCE


def meta(trigger: Trigger) -> RunMeta:
    return RunMeta(
        run_id="r",
        repo="example",
        git_dir="/srv/git/example.git",
        revision="a" * 40,
        sha="a" * 40,
        ref="refs/heads/main",
        pushed_at=DUE,
        executor=ExecutorKind.host,
        trigger=trigger,
    )


def test_the_schedule_source_gives_the_cron_line_ref_sha_and_due_time() -> None:
    given = source_outputs(meta(Trigger(kind="schedule", schedule="0 3 * * *", due_at=DUE)))
    assert given["cron"] == "0 3 * * *"
    assert given["due_at"] == "2026-01-06T03:00:00Z"
    assert (given["ref"], given["sha"], given["branch"]) == ("refs/heads/main", "a" * 40, "main")
    assert "cron" not in source_outputs(meta(Trigger()))


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    store = RunStore("example", root=tmp_path / "state", cache=tmp_path / "cache")
    return store.create(lambda run_id: meta(Trigger()).model_copy(update={"run_id": run_id}))


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_scheduled_run_reads_its_source_and_not_the_push(run: RunDir, jobs: int) -> None:
    trigger = Trigger(kind="schedule", schedule="0 3 * * *", due_at=DUE)
    given = source_outputs(meta(trigger))
    pipeline = load(CI).for_source(SCHEDULE_SOURCE)
    outlet = outlet_for(run, Redactor(), [Collected()])
    try:
        outcome = JobRunner(
            pipeline=pipeline,
            executor=FakeExecutor(),
            outlet=outlet,
            secrets=Secrets(),
            capture_limit=1024,
            push_outputs=given,
            source=SCHEDULE_SOURCE,
            jobs=jobs,
            host=ThreadJobHost(pipeline),  # type: ignore[arg-type]
        ).run_all()
    finally:
        outlet.close()
    states = outcome.states
    assert {name: s.status.value for name, s in states.items()} == {
        "nightly": "success",
        "report": "success",
        "both": "success",
    }
    assert states["nightly"].outputs["saw"]["cron"] == "0 3 * * *"
    assert states["both"].outputs == {"push": {}, "schedule": given}


def test_a_push_runs_its_jobs_and_a_job_named_by_hand_runs_whatever_its_source(
    tmp_path: Path,
) -> None:
    from tests.helpers import make_repo
    from tests.unit.test_history import quire, runs_json

    repo = tmp_path / "proj"
    make_repo(repo, {".quire/ci.py": CI})
    done = quire("ci", "run", "--repo", str(repo))
    assert done.exit_code == 0, done.output
    named = quire("ci", "run", "nightly", "report", "--repo", str(repo))
    assert named.exit_code == 0, named.output
    by_hand, pushed = runs_json(repo)
    assert by_hand["trigger"]["kind"] == "push"
    shown = quire("ci", "show", pushed["id"], "--repo", str(repo), "--json").stdout
    assert [job["job_id"] for job in json.loads(shown)["jobs"]] == ["lint", "both", "after"]
    shown = quire("ci", "show", by_hand["id"], "--repo", str(repo), "--json").stdout
    assert [job["job_id"] for job in json.loads(shown)["jobs"]] == ["nightly", "report"]
