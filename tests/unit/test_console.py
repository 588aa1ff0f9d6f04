"""How a run looks: PlainReporter on byte streams, TerminalReporter on a (fake) terminal."""

from __future__ import annotations

import io
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from quire.ci.events import (
    CommandFinished,
    CommandStarted,
    JobFinished,
    JobStarted,
    Notice,
    Output,
    RunFinished,
    RunStarted,
    StreamName,
)
from quire.ci.store.records import EndReason, ExecutorKind, JobState, JobStatus, RunResult
from quire.ci.store.runs import RunState
from quire.cli.console import PlainReporter, TerminalReporter, make_reporter

T0 = datetime(2026, 5, 4, 16, 20, 1, tzinfo=UTC)


def state(
    job_id: str,
    status: JobStatus,
    duration_s: float | None = 1.5,
    *,
    error: str | None = None,
    skip_reason: str | None = None,
    started: bool = True,
) -> JobState:
    return JobState(
        job_id=job_id,
        status=status,
        started_at=T0 if started else None,
        finished_at=T0 if started else None,
        duration_s=duration_s if started else None,
        error=error,
        skip_reason=skip_reason,
    )


STATES = [
    state("build", JobStatus.success, 1.5),
    state("unit-tests", JobStatus.failed, 62.0, error="command `pytest` exited 1"),
    state("deploy", JobStatus.skipped, skip_reason="input 'unit-tests' failed", started=False),
]

SUMMARY = (
    b"\n"
    b"job         status    duration\n"
    b"build       success   1.50s   \n"
    b"unit-tests  failed    1m02s     command `pytest` exited 1\n"
    b"deploy      skipped   -         input 'unit-tests' failed\n"
    b"run failed (jobs-failed) in 1m05s: /state/runs/proj/failed/RUN\n"
)


@dataclass
class feed:
    """Hands a reporter the events the core emits during a run, by name."""

    reporter: PlainReporter | TerminalReporter

    def run_started(self) -> None:
        self.reporter.handle(RunStarted("RUN", "proj", "HEAD", "abc123", ExecutorKind.host))

    def notice(self, text: str) -> None:
        self.reporter.handle(Notice(text))

    def job_started(self, job: str) -> None:
        self.reporter.handle(JobStarted(job))

    def command_started(self, job: str, display: str) -> None:
        self.reporter.handle(CommandStarted(job, display))

    def output(self, job: str, stream: StreamName, data: bytes) -> None:
        self.reporter.handle(Output(job, stream, data))

    def command_finished(self, job: str, exit_code: int, duration_s: float) -> None:
        self.reporter.handle(CommandFinished(job, exit_code, duration_s))

    def job_finished(self, state: JobState) -> None:
        self.reporter.handle(JobFinished(state))

    def run_finished(self, states: list[JobState], status: str, location: str) -> None:
        """`status` as the summary shows it: `complete`, `failed (jobs-failed)`."""
        word, _, reason = status.rstrip(")").partition(" (")
        code = 0 if word == "complete" else 1
        result = RunResult(reason=EndReason(reason) if reason else None, exit_code=code)
        self.reporter.handle(
            RunFinished("RUN", RunState(word), result, tuple(states), 65.0, Path(location))
        )


class FlushRecorder(io.BytesIO):
    """A byte stream that remembers how much had been written at each flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed_at: list[int] = []

    def flush(self) -> None:
        super().flush()
        self.flushed_at.append(len(self.getvalue()))


def plain(*, quiet: bool = False) -> tuple[PlainReporter, FlushRecorder, FlushRecorder]:
    out, err = FlushRecorder(), FlushRecorder()
    return PlainReporter(quiet=quiet, out=out, err=err), out, err


def play_a_run(reporter: PlainReporter | TerminalReporter) -> None:
    """What the orchestrator tells a reporter during a small run."""
    feed(reporter).run_started()
    feed(reporter).notice("building image")
    feed(reporter).job_started("build")
    feed(reporter).command_started("build", "make all")
    feed(reporter).output("build", "stdout", b"compiling \xff\n")
    feed(reporter).output("build", "stderr", b"warning: w1\n")
    feed(reporter).output("build", "stdout", b"linking")
    feed(reporter).output("build", "stdout", b" done\n")
    feed(reporter).command_finished("build", 0, 0.25)
    feed(reporter).job_finished(STATES[0])
    feed(reporter).job_started("unit-tests")
    feed(reporter).command_started("unit-tests", "pytest -q")
    feed(reporter).output("unit-tests", "stderr", b"E   boom\n")
    feed(reporter).command_finished("unit-tests", 1, 62.0)
    feed(reporter).job_finished(STATES[1])
    feed(reporter).job_finished(STATES[2])
    feed(reporter).run_finished(STATES, "failed (jobs-failed)", "/state/runs/proj/failed/RUN")


# --- PlainReporter --------------------------------------------------------------------------------


def test_plain_reporter_keeps_job_stdout_on_stdout_and_job_stderr_on_stderr() -> None:
    reporter, out, err = plain()
    play_a_run(reporter)
    assert out.getvalue() == (
        b"run RUN  proj at HEAD (abc123)  executor host\n"
        b"building image\n"
        b"==> build\n"
        b"$ make all\n"
        b"compiling \xff\n"
        b"linking done\n"
        b"<== build success in 1.50s\n"
        b"==> unit-tests\n"
        b"$ pytest -q\n"
        b"(exit 1 after 1m02s)\n"
        b"<== unit-tests failed in 1m02s: command `pytest` exited 1\n"
        b"--- deploy skipped: input 'unit-tests' failed\n" + SUMMARY
    )
    assert err.getvalue() == b"warning: w1\nE   boom\n"


def test_plain_reporter_writes_output_bytes_exactly_as_given() -> None:
    reporter, out, err = plain()
    data = bytes(range(256)) + b"\r\n\r no newline"
    feed(reporter).output("job", "stdout", data)
    feed(reporter).output("job", "stderr", data[::-1])
    assert out.getvalue() == data
    assert err.getvalue() == data[::-1]


def test_plain_reporter_flushes_every_chunk_as_it_arrives() -> None:
    reporter, out, err = plain()
    feed(reporter).job_started("build")
    assert out.flushed_at[-1] == len(out.getvalue())
    for chunk in (b"a", b"bc\n", b"partial"):
        feed(reporter).output("build", "stdout", chunk)
        assert out.flushed_at[-1] == len(out.getvalue())
        feed(reporter).output("build", "stderr", chunk)
        assert err.flushed_at[-1] == len(err.getvalue())


@pytest.mark.parametrize(
    ("exit_code", "expected"),
    [(0, b""), (2, b"(exit 2 after 1.50s)\n"), (-9, b"(exit -9 after 1.50s)\n")],
)
def test_plain_reporter_shows_only_a_non_zero_exit(exit_code: int, expected: bytes) -> None:
    reporter, out, _ = plain()
    feed(reporter).command_finished("job", exit_code, 1.5)
    assert out.getvalue() == expected


def test_plain_reporter_shows_a_job_skipped_while_running_with_its_reason() -> None:
    reporter, out, _ = plain()
    feed(reporter).job_finished(
        state("docs", JobStatus.skipped, 0.1, skip_reason="no docs changed")
    )
    assert out.getvalue() == b"<== docs skipped in 0.10s: no docs changed\n"


def test_plain_reporter_quiet_prints_only_the_summary() -> None:
    reporter, out, err = plain(quiet=True)
    play_a_run(reporter)
    assert out.getvalue() == SUMMARY
    assert err.getvalue() == b""


def test_plain_reporter_without_jobs_prints_just_the_closing_line() -> None:
    reporter, out, _ = plain()
    feed(reporter).run_finished([], "failed (error)", "/state/x")
    assert out.getvalue() == b"\nrun failed (error) in 1m05s: /state/x\n"


# --- TerminalReporter on a fake terminal ----------------------------------------------------------


class FakeStream(io.TextIOWrapper):
    """sys.stdout/sys.stderr stand-in over bytes: a terminal or not, as told."""

    def __init__(self, *, tty: bool) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8", errors="replace", write_through=True)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty

    def raw_bytes(self) -> bytes:
        self.flush()
        data: bytes = self.buffer.getvalue()  # type: ignore[attr-defined]
        return data

    def text(self) -> str:
        return self.raw_bytes().decode("utf-8", errors="replace")


SGR = re.compile(r"\x1b\[([0-9;]*)m")


def colour_codes(text: str) -> list[str]:
    """The SGR sequences in `text` that set a foreground or background colour."""
    found = []
    for params in SGR.findall(text):
        codes = [int(p) for p in params.split(";") if p]
        if any(c in (38, 48) or 30 <= c <= 37 or 40 <= c <= 47 or 90 <= c <= 107 for c in codes):
            found.append(params)
    return found


def visible(text: str) -> str:
    """`text` without escape sequences (colours, cursor moves of the live status)."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def fake_terminal(monkeypatch: pytest.MonkeyPatch, *, no_color: bool) -> dict[str, FakeStream]:
    """A colour terminal on stdout and stderr, with no colour-forcing variables around.

    Called from the test body: pytest puts its own capture back on sys.stdout
    between the setup and call phases, so a fixture could not do this.
    """
    for name in ("COLORTERM", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "200")
    fakes = {"out": FakeStream(tty=True), "err": FakeStream(tty=True)}
    monkeypatch.setattr(sys, "stdout", fakes["out"])
    monkeypatch.setattr(sys, "stderr", fakes["err"])
    return fakes


@pytest.fixture
def made() -> Iterator[list[TerminalReporter]]:
    """Reporters made by a test; a live status still going is stopped before sys.stdout
    is put back (monkeypatch is undone after this)."""
    reporters: list[TerminalReporter] = []
    yield reporters
    for reporter in reporters:
        reporter.close()


def terminal_reporter(made: list[TerminalReporter], *, quiet: bool = False) -> TerminalReporter:
    reporter = TerminalReporter(quiet=quiet)
    made.append(reporter)
    return reporter


def test_terminal_reporter_colours_job_stderr_red_and_leaves_stdout_uncoloured(
    monkeypatch: pytest.MonkeyPatch, made: list[TerminalReporter]
) -> None:
    streams = fake_terminal(monkeypatch, no_color=False)
    reporter = terminal_reporter(made)
    feed(reporter).job_started("build")
    feed(reporter).output("build", "stdout", b"plain words\n")
    feed(reporter).output("build", "stderr", b"angry words\n")
    feed(reporter).command_finished("build", 0, 0.1)
    feed(reporter).run_finished(STATES[:1], "complete", "/state/x")
    shown = streams["out"].text() + streams["err"].text()
    assert "\x1b[31mangry words" in shown
    line = next(line for line in shown.splitlines() if "plain words" in line)
    assert colour_codes(line) == []
    assert "run complete in 1m05s: /state/x" in visible(shown)


def test_terminal_reporter_with_no_color_set_emits_no_colour_codes(
    monkeypatch: pytest.MonkeyPatch, made: list[TerminalReporter]
) -> None:
    streams = fake_terminal(monkeypatch, no_color=True)
    play_a_run(terminal_reporter(made))
    shown = streams["out"].text() + streams["err"].text()
    assert colour_codes(shown) == []
    text = visible(shown)
    for expected in ("==> build", "$ make all", "compiling", "warning: w1", "E   boom"):
        assert expected in text
    assert "unit-tests  failed" in text
    assert "run failed (jobs-failed) in 1m05s: /state/runs/proj/failed/RUN" in text


def test_terminal_reporter_uses_colour_on_a_terminal_without_no_color(
    monkeypatch: pytest.MonkeyPatch, made: list[TerminalReporter]
) -> None:
    streams = fake_terminal(monkeypatch, no_color=False)
    play_a_run(terminal_reporter(made))
    assert colour_codes(streams["out"].text() + streams["err"].text())


def test_terminal_reporter_assembles_lines_across_chunks_and_ends_a_partial_one(
    monkeypatch: pytest.MonkeyPatch, made: list[TerminalReporter]
) -> None:
    streams = fake_terminal(monkeypatch, no_color=True)
    reporter = terminal_reporter(made)
    feed(reporter).job_started("build")
    data = "one\ntwo café\nno newline".encode()
    cut = data.index("é".encode()) + 1  # inside the two bytes of é
    feed(reporter).output("build", "stdout", data[:cut])
    feed(reporter).output("build", "stdout", data[cut:])
    feed(reporter).command_finished("build", 0, 0.1)
    feed(reporter).job_finished(STATES[0])
    lines = visible(streams["out"].text()).splitlines()
    assert "one" in lines
    assert "two café" in lines
    assert "no newline" in lines
    finished = next(i for i, line in enumerate(lines) if line.startswith("<== build"))
    assert lines.index("no newline") < finished


def test_terminal_reporter_shows_job_output_text_unchanged(
    monkeypatch: pytest.MonkeyPatch, made: list[TerminalReporter]
) -> None:
    streams = fake_terminal(monkeypatch, no_color=True)
    reporter = terminal_reporter(made)
    feed(reporter).job_started("build")
    line = "at 12:30 :thumbs_up: [bold]not markup[/bold] :smile: 100%"
    feed(reporter).output("build", "stdout", line.encode() + b"\n")
    feed(reporter).output("build", "stderr", line.encode() + b"\n")
    feed(reporter).command_finished("build", 0, 0.1)
    feed(reporter).run_finished(STATES[:1], "complete", "/state/x")
    shown = visible(streams["out"].text() + streams["err"].text())
    assert shown.count(line) == 2, shown


def test_terminal_reporter_sends_job_stderr_to_a_redirected_stderr_byte_for_byte(
    monkeypatch: pytest.MonkeyPatch, made: list[TerminalReporter]
) -> None:
    # `quire ci run 2> err.txt` at a terminal: the job's stderr belongs in err.txt.
    streams = fake_terminal(monkeypatch, no_color=False)
    redirected = FakeStream(tty=False)
    monkeypatch.setattr(sys, "stderr", redirected)
    reporter = terminal_reporter(made)
    feed(reporter).job_started("build")
    feed(reporter).output("build", "stdout", b"to the screen\n")
    feed(reporter).output("build", "stderr", b"to the file \xff\n")
    feed(reporter).output("build", "stderr", b"no newline")
    feed(reporter).command_finished("build", 1, 0.1)
    feed(reporter).run_finished(STATES[:1], "complete", "/state/x")
    assert redirected.raw_bytes() == b"to the file \xff\nno newline"
    screen = visible(streams["out"].text())
    assert "to the screen" in screen
    assert "to the file" not in screen


def test_terminal_reporter_quiet_prints_only_the_summary(
    monkeypatch: pytest.MonkeyPatch, made: list[TerminalReporter]
) -> None:
    streams = fake_terminal(monkeypatch, no_color=True)
    play_a_run(terminal_reporter(made, quiet=True))
    shown = visible(streams["out"].text() + streams["err"].text())
    for hidden in ("run RUN", "building image", "==> ", "$ make", "compiling", "warning", "boom"):
        assert hidden not in shown
    assert "unit-tests  failed" in shown
    assert "run failed (jobs-failed) in 1m05s: /state/runs/proj/failed/RUN" in shown


def test_terminal_reporter_live_status_names_the_job_and_ticks_without_output(
    monkeypatch: pytest.MonkeyPatch, made: list[TerminalReporter]
) -> None:
    streams = fake_terminal(monkeypatch, no_color=True)
    reporter = terminal_reporter(made)
    feed(reporter).job_started("slow-job")
    assert reporter.status_text().startswith("slow-job  0.")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if re.search(r"slow-job  0\.[1-9]\ds", visible(streams["out"].text())):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"no ticking status line in {streams['out'].text()!r}")
    feed(reporter).run_finished([], "complete", "/state/x")
    assert reporter._live is None


# --- make_reporter --------------------------------------------------------------------------------


@pytest.mark.parametrize("quiet", [False, True])
def test_make_reporter_is_plain_when_stdout_is_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch, quiet: bool
) -> None:
    monkeypatch.setattr(sys, "stdout", FakeStream(tty=False))
    reporter = make_reporter(quiet=quiet)
    assert isinstance(reporter, PlainReporter)
    assert reporter.quiet is quiet


def test_make_reporter_is_the_terminal_one_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, made: list[TerminalReporter]
) -> None:
    fake_terminal(monkeypatch, no_color=False)
    reporter = make_reporter(quiet=True)
    assert isinstance(reporter, TerminalReporter)
    made.append(reporter)
    assert reporter.quiet is True


# --- unfinished lines, progress bars, the live area --------------------------------------------


def test_plain_reporter_ends_a_jobs_unfinished_line_before_its_own_next_line() -> None:
    reporter, out, err = plain()
    feed(reporter).job_started("build")
    feed(reporter).output("build", "stdout", b"no newline")
    feed(reporter).output("build", "stderr", b"half an error")
    feed(reporter).command_finished("build", 2, 0.5)
    assert out.getvalue() == b"==> build\nno newline\n(exit 2 after 0.50s)\n"
    assert err.getvalue() == b"half an error\n"


def test_plain_reporter_adds_no_newline_after_a_finished_line() -> None:
    reporter, out, _ = plain()
    feed(reporter).output("build", "stdout", b"whole line\n")
    feed(reporter).command_finished("build", 2, 0.5)
    assert out.getvalue() == b"whole line\n(exit 2 after 0.50s)\n"


def test_terminal_reporter_shows_an_unfinished_line_as_it_arrives(
    monkeypatch: pytest.MonkeyPatch, made: list[TerminalReporter]
) -> None:
    streams = fake_terminal(monkeypatch, no_color=True)
    reporter = terminal_reporter(made)
    feed(reporter).job_started("build")
    feed(reporter).output("build", "stdout", b"downloading")
    assert reporter.partial_lines() == [("downloading", None)]
    assert "downloading" in visible(streams["out"].text())  # drawn in the live area
    feed(reporter).command_started("build", "next")  # never glued onto the header
    lines = visible(streams["out"].text()).splitlines()
    assert "downloading" in lines
    assert "$ next" in lines
    assert reporter.partial_lines() == []


def test_terminal_reporter_shows_carriage_return_progress_as_progress(
    monkeypatch: pytest.MonkeyPatch, made: list[TerminalReporter]
) -> None:
    streams = fake_terminal(monkeypatch, no_color=True)
    reporter = terminal_reporter(made)
    feed(reporter).job_started("build")
    feed(reporter).output("build", "stdout", b"\r 10%\r 50%")
    assert reporter.partial_lines() == [(" 50%", None)]
    feed(reporter).output("build", "stdout", b"\r100%\n")
    feed(reporter).command_finished("build", 0, 0.1)
    shown = streams["out"].text()
    assert " 10%\r 50%" not in shown
    assert "100%" in visible(shown).splitlines()


def test_visible_line_is_what_a_terminal_leaves_of_a_line() -> None:
    from quire.cli.console import visible_line

    assert visible_line("a\rb\rc") == "c"
    assert visible_line("windows line\r") == "windows line"
    assert visible_line("plain") == "plain"


def test_terminal_reporter_close_clears_the_live_area_and_can_repeat(
    monkeypatch: pytest.MonkeyPatch, made: list[TerminalReporter]
) -> None:
    fake_terminal(monkeypatch, no_color=True)
    reporter = terminal_reporter(made)
    feed(reporter).job_started("build")
    assert reporter._live is not None and reporter._live.is_started
    live = reporter._live
    reporter.close()
    assert reporter._live is None and not live.is_started
    reporter.close()


def test_the_summary_lists_every_job_and_the_runs_time() -> None:
    reporter, out, _ = plain(quiet=True)
    feed(reporter).run_finished(STATES, "failed (interrupted)", "/state/x")
    text = out.getvalue().decode()
    assert "deploy      skipped" in text
    assert text.endswith("run failed (interrupted) in 1m05s: /state/x\n")


def test_side_by_side_output_is_tagged_line_by_line_with_its_job() -> None:
    from quire.cli.console import JobTagged

    inner, out, err = plain()
    tagged = JobTagged(inner)
    tagged.handle(Output("lint", "stdout", b"one\ntw"))
    tagged.handle(Output("tests", "stdout", b"x\n"))
    tagged.handle(Output("lint", "stdout", b"o\npartial"))
    tagged.handle(Output("tests", "stderr", b"oops\n"))
    tagged.handle(CommandFinished("lint", 0, 0.1))
    assert out.getvalue() == b"[lint] one\n[tests] x\n[lint] two\n[lint] partial\n"
    assert err.getvalue() == b"[tests] oops\n"
