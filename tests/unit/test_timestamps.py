"""`quire ci logs --timestamps`: every line stamped with the time it was written."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from quire.ci.events import CommandStarted, JobStarted, Message, Output
from quire.cli.app import app
from quire.cli.console import PlainReporter
from quire.cli.timestamps import Timestamped, stamp
from tests.helpers import make_repo

T1 = datetime(2026, 12, 4, 15, 0, 1, 120000, tzinfo=UTC)
T2 = datetime(2026, 12, 4, 15, 0, 2, 5000, tzinfo=UTC)


def rendered(*events: object) -> str:
    buffer = io.BytesIO()
    reporter = Timestamped(PlainReporter(out=buffer, err=buffer))
    for event in events:
        reporter.handle(event)  # type: ignore[arg-type]
    reporter.close()
    return buffer.getvalue().decode()


def test_stamp_is_the_logs_own_format() -> None:
    assert stamp(T1) == "2026-12-04T15:00:01.120Z"
    assert stamp(None) == "-"


def test_a_line_gets_the_time_of_the_chunk_it_began_in() -> None:
    text = rendered(
        Output("a", "stdout", b"one\ntw", T1),
        Output("a", "stdout", b"o\nthree\nfou", T2),
        Output("a", "stdout", b"r", T2),
    )
    assert text.splitlines() == [
        "2026-12-04T15:00:01.120Z one",
        "2026-12-04T15:00:01.120Z two",
        "2026-12-04T15:00:02.005Z three",
        "2026-12-04T15:00:02.005Z four",
    ]


def test_commands_and_messages_carry_their_events_time_and_end_a_partial_line_first() -> None:
    text = rendered(
        JobStarted("a"),
        Output("a", "stdout", b"no newline", T1),
        CommandStarted("a", "make", (), at=T2),
        Message("a", "hello", at=T2),
    )
    assert text.splitlines() == [
        "==> a",
        "2026-12-04T15:00:01.120Z no newline",
        "2026-12-04T15:00:02.005Z $ make",
        "2026-12-04T15:00:02.005Z hello",
    ]


PIPELINE = """
from quire.ci import job

@job(inputs=["quire/push"])
def a(rt):
    rt.sh("echo first; echo second >&2")
"""


def test_logs_timestamps_stamps_every_line_of_a_real_run(tmp_path: Path) -> None:
    make_repo(tmp_path / "proj", {".quire/ci.py": PIPELINE})
    runner = CliRunner()
    assert runner.invoke(app, ["ci", "run", "--repo", str(tmp_path / "proj")]).exit_code == 0
    result = runner.invoke(app, ["ci", "logs", "--timestamps", "--repo", str(tmp_path / "proj")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "==> a"
    stamped = [line.split(" ", 1) for line in lines[1:]]
    assert [text for _, text in stamped] == ["$ echo first; echo second >&2", "first", "second"]
    for when, _ in stamped:
        assert datetime.fromisoformat(when.replace("Z", "+00:00")).tzinfo is not None


def test_follow_with_timestamps_stamps_too_and_ends_like_the_run(tmp_path: Path) -> None:
    make_repo(tmp_path / "proj", {".quire/ci.py": PIPELINE})
    runner = CliRunner()
    assert runner.invoke(app, ["ci", "run", "--repo", str(tmp_path / "proj")]).exit_code == 0
    args = ["ci", "logs", "--follow", "--timestamps", "--repo", str(tmp_path / "proj")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [line.split(" ", 1)[1] for line in result.stdout.splitlines()[1:4]] == [
        "$ echo first; echo second >&2",
        "first",
        "second",
    ]
