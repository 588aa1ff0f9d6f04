"""RunOutlet: secrets masked once, in order, across chunk boundaries; every subscriber served."""

from __future__ import annotations

import pytest

from quire.ci.events import (
    CommandFinished,
    CommandStarted,
    ImageBuildFinished,
    JobFinished,
    JobStarted,
    Level,
    Message,
    Notice,
    Output,
    RunFinished,
)
from quire.ci.run.outlet import RunOutlet
from quire.ci.run.redact import Redactor
from quire.ci.store.records import JobState, JobStatus, RunResult
from quire.ci.store.runs import RunState
from tests.helpers import Collected

SECRET = "hunter2-value"


def outlet_with(*subscribers: Collected, secrets: tuple[str, ...] = (SECRET,)) -> RunOutlet:
    return RunOutlet(Redactor(secrets), list(subscribers))


def test_every_subscriber_gets_every_event_in_the_order_given() -> None:
    first, second = Collected(), Collected()
    outlet = outlet_with(first, second)
    outlet.emit(JobStarted("a"))
    outlet.output("a", "stdout", b"x\n")
    outlet.emit(CommandFinished("a", 0, 0.1))
    assert [type(e) for e in first.events] == [JobStarted, Output, CommandFinished]
    assert first.events == second.events


def test_a_secret_split_across_chunks_is_masked_and_nothing_is_lost() -> None:
    seen = Collected()
    outlet = outlet_with(seen)
    data = f"before {SECRET} after\n".encode()
    for i in range(len(data)):  # one byte at a time: every possible split
        outlet.output("a", "stdout", data[i : i + 1])
    outlet.emit(CommandFinished("a", 0, 0.1))
    assert seen.output("a") == b"before *** after\n"


def test_held_back_bytes_come_out_before_the_jobs_next_event() -> None:
    seen = Collected()
    outlet = outlet_with(seen)
    outlet.output("a", "stdout", b"ends with hun")  # could be the start of the secret
    assert seen.output("a") == b"ends with "
    outlet.emit(CommandFinished("a", 0, 0.1))
    assert [type(e) for e in seen.events] == [Output, Output, CommandFinished]
    assert seen.output("a") == b"ends with hun"


def test_another_jobs_event_does_not_release_a_jobs_held_bytes() -> None:
    seen = Collected()
    outlet = outlet_with(seen)
    outlet.output("a", "stdout", b"x hunter2-")
    outlet.emit(CommandStarted("b", "true"))  # a parallel job's event
    outlet.output("a", "stdout", b"value y\n")
    outlet.emit(CommandFinished("a", 0, 0.1))
    assert seen.output("a") == b"x *** y\n"


def test_streams_are_masked_separately() -> None:
    seen = Collected()
    outlet = outlet_with(seen)
    outlet.output("a", "stdout", b"hunter2-")
    outlet.output("a", "stderr", b"value\n")
    outlet.emit(CommandFinished("a", 0, 0.1))
    assert seen.output("a", "stdout") == b"hunter2-"
    assert seen.output("a", "stderr") == b"value\n"


def test_text_events_are_masked_and_returned_as_delivered() -> None:
    seen = Collected()
    outlet = outlet_with(seen)
    started = outlet.emit(CommandStarted("a", ("curl", "-u", f"me:{SECRET}")))
    assert started.display == "curl -u 'me:***'"
    outlet.emit(Message("a", f"token {SECRET}"))
    outlet.emit(Notice(f"warned about {SECRET}", Level.warning))
    outlet.emit(ImageBuildFinished("img", ok=False, error=f"build said {SECRET}"))
    state = JobState(
        job_id="a", status=JobStatus.failed, error=f"e {SECRET}", outputs={"k": SECRET}
    )
    outlet.emit(JobFinished(state))
    assert SECRET not in repr(seen.events)
    assert seen.events[0] == started


def test_a_secret_holding_a_quote_is_masked_before_the_argv_is_quoted() -> None:
    outlet = outlet_with(secrets=("it's secret",))
    started = outlet.emit(CommandStarted("a", ("echo", "it's secret")))
    assert "secret" not in started.display
    assert started.display == "echo '***'"


def test_a_value_hidden_later_is_masked_from_then_on() -> None:
    seen = Collected()
    outlet = outlet_with(seen, secrets=())
    outlet.hide("late-secret")
    outlet.emit(Message("a", "the late-secret"))
    assert seen.of(Message)[0].text == "the ***"


def test_the_run_finished_event_masks_the_error_and_the_jobs() -> None:
    seen = Collected()
    outlet = outlet_with(seen)
    from pathlib import Path

    outlet.output("a", "stdout", b"tail hunter")
    outlet.emit(
        RunFinished(
            run_id="r",
            state=RunState.failed,
            result=RunResult(error=f"x {SECRET}", exit_code=3),
            jobs=(JobState(job_id="a", status=JobStatus.failed, error=SECRET),),
            duration_s=1.0,
            location=Path("/x"),
        )
    )
    finished = seen.of(RunFinished)[0]
    assert finished.result.error == "x ***"
    assert finished.jobs[0].error == "***"
    # Held bytes of every job come out before the end.
    assert seen.output("a") == b"tail hunter"
    assert isinstance(seen.events[-1], RunFinished)


def test_close_releases_held_bytes_and_closes_every_subscriber_once() -> None:
    first, second = Collected(), Collected()
    outlet = outlet_with(first, second)
    outlet.output(None, "stderr", b"build hunt")
    outlet.close()
    outlet.close()
    assert first.output(None, "stderr") == b"build hunt"
    assert first.closed and second.closed
    assert len(first.of(Output)) == 2


def test_close_closes_every_subscriber_even_when_one_fails() -> None:
    class Broken(Collected):
        def close(self) -> None:
            raise OSError("disk gone")

    after = Collected()
    outlet = outlet_with(Broken(), after)
    with pytest.raises(OSError, match="disk gone"):
        outlet.close()
    assert after.closed


def test_a_subscriber_may_report_through_the_outlet_while_handling_an_event() -> None:
    seen = Collected()

    class Warner(Collected):
        def handle(self, event: object) -> None:
            if isinstance(event, JobStarted):
                outlet.warning(f"could not write a record with {SECRET}")

    outlet = outlet_with(Warner(), seen)
    outlet.emit(JobStarted("a"))
    notices = seen.of(Notice)
    assert [n.text for n in notices] == ["could not write a record with ***"]
