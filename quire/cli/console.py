"""How a run looks in the terminal: the Reporter the CLI hands the orchestrator.

Plain mode (not a terminal, or `--plain`): quire's own lines and job stdout
go to stdout, job stderr to stderr, bytes exactly as redacted, flushed per
chunk. Terminal mode adds colour (unless NO_COLOR is set) and a live status
line with the current job and its elapsed time, drawn by rich.
`--quiet` shows only the closing summary.
"""

from __future__ import annotations

import codecs
import os
import sys
import time
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

from quire.ci.run.report import StreamName
from quire.ci.store.records import JobState, JobStatus

if TYPE_CHECKING:
    from rich.console import Console

_STATUS_STYLE = {
    JobStatus.success: "green",
    JobStatus.failed: "bold red",
    JobStatus.skipped: "yellow",
}


def format_duration(seconds: float | None) -> str:
    """1.23s, 2m05s: short and readable."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def summary_lines(states: Sequence[JobState]) -> list[str]:
    """The closing table as plain aligned lines."""
    if not states:
        return []
    width = max(len("job"), *(len(s.job_id) for s in states))
    lines = [f"{'job':<{width}}  {'status':<8}  {'duration':<8}"]
    for state in states:
        extra = state.error or state.skip_reason
        tail = f"  {extra}" if extra and state.status != JobStatus.success else ""
        lines.append(
            f"{state.job_id:<{width}}  {state.status.value:<8}  "
            f"{format_duration(state.duration_s):<8}{tail}"
        )
    return lines


class PlainReporter:
    """Line-oriented output for pipes, files and CI logs."""

    def __init__(
        self, *, quiet: bool = False, out: IO[bytes] | None = None, err: IO[bytes] | None = None
    ) -> None:
        self.quiet = quiet
        self._out = out or sys.stdout.buffer
        self._err = err or sys.stderr.buffer

    def _line(self, text: str, *, always: bool = False) -> None:
        if always or not self.quiet:
            self._out.write(text.encode("utf-8", errors="replace") + b"\n")
            self._out.flush()

    def run_started(self, header: str) -> None:
        self._line(header)

    def notice(self, text: str) -> None:
        self._line(text)

    def job_started(self, job_id: str) -> None:
        self._line(f"==> {job_id}")

    def command_started(self, job_id: str, display: str) -> None:
        self._line(f"$ {display}")

    def output(self, job_id: str, stream: StreamName, data: bytes) -> None:
        if self.quiet:
            return
        target = self._out if stream == "stdout" else self._err
        target.write(data)
        target.flush()

    def command_finished(self, job_id: str, exit_code: int, duration_s: float) -> None:
        if exit_code != 0:
            self._line(f"(exit {exit_code} after {format_duration(duration_s)})")

    def job_finished(self, state: JobState) -> None:
        if state.status == JobStatus.skipped and state.started_at is None:
            self._line(f"--- {state.job_id} skipped: {state.skip_reason}")
            return
        detail = (
            f": {state.error or state.skip_reason}" if state.status != JobStatus.success else ""
        )
        self._line(
            f"<== {state.job_id} {state.status.value} in "
            f"{format_duration(state.duration_s)}{detail}"
        )

    def run_finished(self, states: Sequence[JobState], status: str, location: str) -> None:
        self._line("", always=True)
        for line in summary_lines(states):
            self._line(line, always=True)
        self._line(f"run {status}: {location}", always=True)


class TerminalReporter:
    """Colour and a live status line (current job, elapsed), for a person at a terminal."""

    def __init__(self, *, quiet: bool = False) -> None:
        from rich.console import Console

        self.quiet = quiet
        no_color = "NO_COLOR" in os.environ
        # emoji=False: a job printing `:smile:` must see `:smile:`, not a picture.
        self.console: Console = Console(highlight=False, emoji=False, no_color=no_color)
        self.err_console = Console(stderr=True, highlight=False, emoji=False, no_color=no_color)
        self._status: Any = None
        self._job: str | None = None
        self._job_t0 = 0.0
        self._decoders = {
            s: codecs.getincrementaldecoder("utf-8")("replace") for s in ("stdout", "stderr")
        }
        self._partial = {"stdout": "", "stderr": ""}

    def _print(self, text: str, style: str | None = None, *, always: bool = False) -> None:
        if always or not self.quiet:
            self.console.print(text, style=style, markup=False, soft_wrap=True)

    def run_started(self, header: str) -> None:
        self._print(header, "bold")

    def notice(self, text: str) -> None:
        self._print(text, "cyan")

    def job_started(self, job_id: str) -> None:
        self._print(f"==> {job_id}", "bold blue")
        self._job, self._job_t0 = job_id, time.monotonic()
        if self._status is None:
            self._status = self.console.status(_Elapsed(self))
            self._status.start()

    def status_text(self) -> str:
        """The live status line: current job and its elapsed time."""
        return f"{self._job}  {format_duration(time.monotonic() - self._job_t0)}"

    def command_started(self, job_id: str, display: str) -> None:
        self._print(f"$ {display}", "dim")

    def output(self, job_id: str, stream: StreamName, data: bytes) -> None:
        if self.quiet:
            return
        if stream == "stderr" and not self.err_console.is_terminal:
            self._write_redirected_stderr(data)
            return
        text = self._partial[stream] + self._decoders[stream].decode(data)
        *lines, self._partial[stream] = text.split("\n")
        for line in lines:
            self._emit(stream, line)

    def _write_redirected_stderr(self, data: bytes) -> None:
        """stderr is a file or pipe (`2> err.txt`) while stdout is the terminal: the
        job's stderr goes there, bytes exactly as they came, apart from stdout."""
        target = self.err_console.file  # the real stderr, also while the status redirects it
        target.flush()
        raw: IO[bytes] | None = getattr(target, "buffer", None)
        if raw is None:
            target.write(data.decode("utf-8", errors="replace"))
            target.flush()
        else:
            raw.write(data)
            raw.flush()

    def _emit(self, stream: StreamName, line: str) -> None:
        if stream == "stdout":
            self.console.print(line, markup=False, soft_wrap=True, highlight=False)
        else:
            # stderr is a terminal too (else output() wrote it there as bytes): the same
            # screen, so print through the status line's console to keep that intact.
            self.console.print(line, style="red", markup=False, soft_wrap=True)

    def command_finished(self, job_id: str, exit_code: int, duration_s: float) -> None:
        for stream in ("stdout", "stderr"):
            rest = self._partial[stream] + self._decoders[stream].decode(b"", final=True)
            self._partial[stream] = ""
            if rest and not self.quiet:
                self._emit(stream, rest)
        if exit_code != 0:
            self._print(f"(exit {exit_code} after {format_duration(duration_s)})", "yellow")

    def job_finished(self, state: JobState) -> None:
        style = _STATUS_STYLE.get(state.status)
        if state.status == JobStatus.skipped and state.started_at is None:
            self._print(f"--- {state.job_id} skipped: {state.skip_reason}", style)
            return
        detail = (
            f": {state.error or state.skip_reason}" if state.status != JobStatus.success else ""
        )
        self._print(
            f"<== {state.job_id} {state.status.value} in "
            f"{format_duration(state.duration_s)}{detail}",
            style,
        )

    def run_finished(self, states: Sequence[JobState], status: str, location: str) -> None:
        from rich.table import Table
        from rich.text import Text

        if self._status is not None:
            self._status.stop()
            self._status = None
        table = Table(show_edge=False, box=None, pad_edge=False)
        for column in ("job", "status", "duration", ""):
            table.add_column(column)
        for state in states:
            extra = state.error or state.skip_reason or ""
            table.add_row(
                Text(state.job_id),
                Text(state.status.value, style=_STATUS_STYLE.get(state.status, "")),
                format_duration(state.duration_s),
                Text("" if state.status == JobStatus.success else extra),
            )
        self.console.print()
        if states:
            self.console.print(table)
        style = "bold green" if status == "complete" else "bold red"
        self.console.print(f"run {status}: {location}", style=style, markup=False)


class _Elapsed:
    """Re-rendered by rich at every refresh, so the elapsed time ticks without output."""

    def __init__(self, reporter: TerminalReporter) -> None:
        self.reporter = reporter

    def __rich__(self) -> str:
        return self.reporter.status_text()


def make_reporter(*, quiet: bool) -> PlainReporter | TerminalReporter:
    """A TerminalReporter when stdout is a terminal, else a PlainReporter."""
    if sys.stdout.isatty():
        return TerminalReporter(quiet=quiet)
    return PlainReporter(quiet=quiet)
