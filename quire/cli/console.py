"""How a run looks in the terminal: the reporters that turn a run's events into text.

The core hands over typed events (`quire.ci.events`), already masked; every
word on the screen is composed here.

Plain mode (not a terminal): quire's own lines and job stdout go to
stdout, job stderr to stderr, bytes exactly as they came, flushed per chunk.
A quire line never glues onto a job's unfinished line: that line is ended
first. Terminal mode adds colour (unless NO_COLOR is set) and a live area at
the bottom: the job's unfinished line as it grows (a `\\r` progress bar shows
as progress, not as one long line), then a spinner with the current job and
its elapsed time. `--quiet` shows only the closing summary.
"""

from __future__ import annotations

import codecs
import os
import sys
import time
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

from quire.ci.events import (
    CommandFinished,
    CommandStarted,
    ContainerStarted,
    Event,
    ImageBuildStarted,
    JobFinished,
    JobStarted,
    Level,
    Message,
    Notice,
    Output,
    RunFinished,
    RunStarted,
    StreamName,
)
from quire.ci.store.records import JobState, JobStatus
from quire.ci.store.runs import RunState

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

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


def line_for(event: Event) -> tuple[str, str | None] | None:
    """The line quire shows for `event` and its style, or None (output, silent events).

    The one place the words of a live run are chosen; both reporters use it.
    """
    match event:
        case RunStarted():
            text = (
                f"run {event.run_id}  {event.repo} at {event.revision} "
                f"({event.sha[:12]})  executor {event.executor.value}"
            )
            return text, "bold"
        case Notice(level=Level.warning):
            return f"warning: {event.text}", "yellow"
        case Notice():
            return event.text, "cyan"
        case Message():
            return event.text, "cyan"
        case ImageBuildStarted():
            return f"building image {event.image} from {event.dockerfile}", "cyan"
        case ContainerStarted():
            return f"container {event.container[:12]} from image {event.image}", "cyan"
        case JobStarted():
            return f"==> {event.job}", "bold blue"
        case CommandStarted():
            return f"$ {event.display}", "dim"
        case CommandFinished() if event.timed_out:
            return f"(timed out after {format_duration(event.duration_s)})", "yellow"
        case CommandFinished() if event.exit != 0:
            return f"(exit {event.exit} after {format_duration(event.duration_s)})", "yellow"
        case JobFinished():
            return _job_end_line(event.state), _STATUS_STYLE.get(event.state.status)
    return None


def _job_end_line(state: JobState) -> str:
    if state.status == JobStatus.skipped and state.started_at is None:
        return f"--- {state.job_id} skipped: {state.skip_reason}"
    detail = f": {state.error or state.skip_reason}" if state.status != JobStatus.success else ""
    return f"<== {state.job_id} {state.status.value} in {format_duration(state.duration_s)}{detail}"


def outcome_line(event: RunFinished) -> str:
    """`run failed (jobs-failed) in 1.20s: <where its records are>`."""
    reason = f" ({event.result.reason.value})" if event.result.reason else ""
    if event.result.cancelled_by:
        reason = f" by {event.result.cancelled_by}"
    return (
        f"run {event.state.value}{reason} in {format_duration(event.duration_s)}: {event.location}"
    )


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


def visible_line(line: str) -> str:
    """What a terminal shows of one line: the text after its last carriage return."""
    return line.rstrip("\r").rsplit("\r", 1)[-1]


class PlainReporter:
    """Line-oriented output for pipes, files and CI logs."""

    def __init__(
        self, *, quiet: bool = False, out: IO[bytes] | None = None, err: IO[bytes] | None = None
    ) -> None:
        self.quiet = quiet
        self._out = out or sys.stdout.buffer
        self._err = err or sys.stderr.buffer
        # Streams whose last byte written was not a newline.
        self._open: set[int] = set()

    def handle(self, event: Event) -> None:
        if isinstance(event, Output):
            if not self.quiet:
                self._output(event.stream, event.data)
        elif isinstance(event, RunFinished):
            self._summary(event)
        else:
            shown = line_for(event)
            if shown is not None and not self.quiet:
                self._line(shown[0])

    def _output(self, stream: StreamName, data: bytes) -> None:
        target = self._out if stream == "stdout" else self._err
        target.write(data)
        target.flush()
        if data.endswith(b"\n"):
            self._open.discard(id(target))
        else:
            self._open.add(id(target))

    def _line(self, text: str) -> None:
        for target in (self._err, self._out):
            if id(target) in self._open:  # end the job's unfinished line first
                target.write(b"\n")
                target.flush()
                self._open.discard(id(target))
        self._out.write(text.encode("utf-8", errors="replace") + b"\n")
        self._out.flush()

    def _summary(self, event: RunFinished) -> None:
        self._line("")
        for line in summary_lines(event.jobs):
            self._line(line)
        self._line(outcome_line(event))

    def close(self) -> None:
        pass


class TerminalReporter:
    """Colour and a live area (unfinished line, current job, elapsed), for a person."""

    def __init__(self, *, quiet: bool = False, merged: bool = False) -> None:
        from rich.console import Console

        self.quiet = quiet
        no_color = "NO_COLOR" in os.environ
        # The real streams, bound now: while a job runs, sys.stdout is the job's own.
        # emoji=False: a job printing `:smile:` must see `:smile:`, not a picture.
        self.console: Console = Console(
            file=sys.stdout, highlight=False, emoji=False, no_color=no_color
        )
        self.err_console = Console(
            file=sys.stderr, stderr=True, highlight=False, emoji=False, no_color=no_color
        )
        if merged:  # the jobs' stderr shares stdout's console, wherever stderr points
            self.err_console = self.console
        self._live: Live | None = None
        self._job: str | None = None
        self._t0 = time.monotonic()
        self._decoders = {
            s: codecs.getincrementaldecoder("utf-8")("replace") for s in ("stdout", "stderr")
        }
        self._partial: dict[StreamName, str] = {"stdout": "", "stderr": ""}

    # --- events ---------------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        if isinstance(event, Output):
            if not self.quiet:
                self._output(event.stream, event.data)
            return
        if isinstance(event, RunFinished):
            self._summary(event)
            return
        if isinstance(event, RunStarted | JobStarted):
            self._start_live()
            if isinstance(event, JobStarted):
                self._job, self._t0 = event.job, time.monotonic()
        elif isinstance(event, CommandFinished):
            self._end_partials()
        shown = line_for(event)
        if shown is not None:
            self._print(*shown)

    def status_text(self) -> str:
        """The live status: current job (or the run) and its elapsed time."""
        return f"{self._job or 'run'}  {format_duration(time.monotonic() - self._t0)}"

    # --- output ---------------------------------------------------------------------------------

    def _output(self, stream: StreamName, data: bytes) -> None:
        if stream == "stderr" and not self.err_console.is_terminal:
            self._write_redirected_stderr(data)
            return
        text = self._partial[stream] + self._decoders[stream].decode(data)
        *lines, self._partial[stream] = text.split("\n")
        for line in lines:
            self._emit(stream, line)
        if self._live is not None:
            self._live.refresh()  # the unfinished line shows as it grows

    def _write_redirected_stderr(self, data: bytes) -> None:
        """stderr is a file or pipe (`2> err.txt`) while stdout is the terminal: the
        job's stderr goes there, bytes exactly as they came, apart from stdout."""
        target = self.err_console.file
        target.flush()
        raw: IO[bytes] | None = getattr(target, "buffer", None)
        if raw is None:
            target.write(data.decode("utf-8", errors="replace"))
            target.flush()
        else:
            raw.write(data)
            raw.flush()

    def _emit(self, stream: StreamName, line: str) -> None:
        # stderr on the terminal shares the screen: print it through the same console,
        # so the live area stays intact.
        style = None if stream == "stdout" else "red"
        self.console.print(
            visible_line(line), style=style, markup=False, soft_wrap=True, highlight=False
        )

    def _end_partials(self) -> None:
        for stream in ("stdout", "stderr"):
            rest = self._partial[stream] + self._decoders[stream].decode(b"", final=True)
            self._partial[stream] = ""
            if rest and not self.quiet:
                self._emit(stream, rest)

    def partial_lines(self) -> list[tuple[str, str | None]]:
        """The unfinished lines of job output, as the live area shows them."""
        shown = []
        for stream, style in (("stdout", None), ("stderr", "red")):
            text = visible_line(self._partial[stream])  # type: ignore[index]
            if text:
                shown.append((text, style))
        return shown

    # --- quire's own lines ----------------------------------------------------------------------

    def _print(self, text: str, style: str | None) -> None:
        if self.quiet:
            return
        self._end_partials()  # never glue a header onto a job's unfinished line
        self.console.print(text, style=style, markup=False, soft_wrap=True, highlight=False)

    def _start_live(self) -> None:
        if self._live is not None:
            return
        from rich.live import Live

        self._live = Live(
            _LiveArea(self),
            console=self.console,
            transient=True,
            refresh_per_second=8,
            # Job code's print() already reaches us as events; leave sys.stdout alone.
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start()

    def _summary(self, event: RunFinished) -> None:
        from rich.table import Table
        from rich.text import Text

        self._end_partials()
        self.close()
        table = Table(show_edge=False, box=None, pad_edge=False)
        for column in ("job", "status", "duration", ""):
            table.add_column(column)
        for state in event.jobs:
            extra = state.error or state.skip_reason or ""
            table.add_row(
                Text(state.job_id),
                Text(state.status.value, style=_STATUS_STYLE.get(state.status, "")),
                format_duration(state.duration_s),
                Text("" if state.status == JobStatus.success else extra),
            )
        self.console.print()
        if event.jobs:
            self.console.print(table)
        style = "bold green" if event.state == RunState.complete else "bold red"
        self.console.print(outcome_line(event), style=style, markup=False)

    def close(self) -> None:
        """Clear the live area (on every way out: the end, an error, Ctrl-C)."""
        if self._live is not None:
            live, self._live = self._live, None
            live.stop()


class _LiveArea:
    """Re-rendered by rich at every refresh: the unfinished lines, then the spinner."""

    def __init__(self, reporter: TerminalReporter) -> None:
        self.reporter = reporter
        self._spinner: Any = None

    def __rich__(self) -> RenderableType:
        from rich.console import Group
        from rich.spinner import Spinner
        from rich.text import Text

        if self._spinner is None:
            self._spinner = Spinner("dots")
        self._spinner.update(text=Text(self.reporter.status_text()))
        partial = [Text(text, style=style or "") for text, style in self.reporter.partial_lines()]
        return Group(*partial, self._spinner)


class JobTagged:
    """For jobs running side by side: each line of output carries its job, `[lint] ...`,
    so that interleaved lines stay readable; the logs keep every job's bytes apart."""

    def __init__(self, inner: PlainReporter | TerminalReporter) -> None:
        self.inner = inner
        self._partial: dict[tuple[str | None, StreamName], bytes] = {}

    def handle(self, event: Event) -> None:
        if isinstance(event, Output) and event.job is not None:
            key = (event.job, event.stream)
            data = self._partial.pop(key, b"") + event.data
            *lines, rest = data.split(b"\n")
            if rest:
                self._partial[key] = rest
            if lines:
                tag = f"[{event.job}] ".encode()
                tagged = b"".join(tag + line + b"\n" for line in lines)
                self.inner.handle(Output(event.job, event.stream, tagged))
            return
        job = getattr(event, "job", None)
        if isinstance(event, CommandFinished | JobFinished | RunFinished):
            self._flush(None if isinstance(event, RunFinished) else job)
        self.inner.handle(event)

    def _flush(self, job: str | None) -> None:
        for key in [key for key in self._partial if job is None or key[0] == job]:
            tag = f"[{key[0]}] ".encode()
            self.inner.handle(Output(key[0], key[1], tag + self._partial.pop(key) + b"\n"))

    def close(self) -> None:
        self._flush(None)
        self.inner.close()


class PipeSafe:
    """A reporter whose terminal may go away (`quire ci run | head -1`, quitting `less`):
    from then on it shows nothing, and the run goes on, logged and recorded."""

    def __init__(self, inner: PlainReporter | TerminalReporter | JobTagged) -> None:
        self.inner = inner
        self.gone = False

    def handle(self, event: Event) -> None:
        if self.gone:
            return
        try:
            self.inner.handle(event)
        except BrokenPipeError:
            self._gone()

    def close(self) -> None:
        try:
            self.inner.close()
        except BrokenPipeError:
            self._gone()

    def _gone(self) -> None:
        self.gone = True
        silence_closed_streams()


def silence_closed_streams() -> None:
    """Point a closed stdout (and stderr) at /dev/null, so that nothing written later
    (or flushed at exit) fails again."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, stream.fileno())
            except (OSError, ValueError):
                pass
            finally:
                os.close(null)


def make_reporter(*, quiet: bool, merged: bool = False) -> PlainReporter | TerminalReporter:
    """A TerminalReporter when stdout is a terminal, else a PlainReporter.

    `merged`: the jobs' stderr goes to stdout too, in the order it came (a log read back,
    so that `| grep` sees what the terminal showed)."""
    if sys.stdout.isatty():
        return TerminalReporter(quiet=quiet, merged=merged)
    if merged:
        return PlainReporter(quiet=quiet, err=sys.stdout.buffer)
    return PlainReporter(quiet=quiet)
