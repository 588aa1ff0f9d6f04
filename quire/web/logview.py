"""A job's log.jsonl read by byte offset, a window at a time, and rendered as HTML.

A log can be gigabytes: nothing here reads more than one window (about
`PAGE_BYTES`, stretched only to finish a line that crosses its edge, up to
`MAX_LINE_BYTES`). Offsets always fall on line boundaries, so a page's
`start` is where the page before it ends and its `end` is where a live
stream picks up. A torn last line (a crash mid-write, or a line being
written right now) is left for later, never shown half.

Rendering follows what `quire ci run` printed: `$ cmd` before each command,
its output (stderr marked), `exit N` after it; output bytes are decoded as
UTF-8 with invalid bytes replaced, ANSI colours become classes, everything
is HTML-escaped. Events of kinds this version does not know are skipped.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import orjson

from quire.ci.store.logs import event_bytes
from quire.web.ansi import AnsiRenderer

PAGE_BYTES = 256 * 1024
# A line longer than this is cut (quire writes output in chunks of at most 256 KiB).
MAX_LINE_BYTES = 8 * 1024 * 1024
_BLOCK = 64 * 1024


@dataclass
class LogWindow:
    """Complete lines of a log between two byte offsets, parsed."""

    start: int
    end: int
    size: int
    events: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: int = 0

    @property
    def at_start(self) -> bool:
        return self.start == 0


def parse_lines(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """The events of complete JSON lines in `data`, and how many lines did not parse."""
    events: list[dict[str, Any]] = []
    bad = 0
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            bad += 1
            continue
        if isinstance(event, dict):
            events.append(event)
        else:
            bad += 1
    return events, bad


def line_end_before(handle: BinaryIO, offset: int) -> int | None:
    """The offset just past the last newline before `offset` (0 at the start of the
    file), or None when there is none within `MAX_LINE_BYTES`."""
    position = offset
    while position > 0:
        if offset - position >= MAX_LINE_BYTES:
            return None
        low = max(0, position - _BLOCK)
        handle.seek(low)
        block = handle.read(position - low)
        newline = block.rfind(b"\n")
        if newline >= 0:
            return low + newline + 1
        position = low
    return 0


def read_before(handle: BinaryIO, before: int | None, page_bytes: int = PAGE_BYTES) -> LogWindow:
    """The window of whole lines ending at `before` (the log's last complete line if None).

    The window reaches back about `page_bytes`, to the start of the line crossing
    that edge.
    """
    size = handle.seek(0, 2)
    limit = size if before is None else min(max(0, before), size)
    end = line_end_before(handle, limit)
    if end is None:  # the tail is one endless line: show it cut rather than nothing
        end = limit
    low = max(0, end - page_bytes)
    start = line_end_before(handle, low)
    if start is None:
        start = low
    handle.seek(start)
    events, bad = parse_lines(handle.read(end - start))
    return LogWindow(start=start, end=end, size=size, events=events, bad_lines=bad)


def read_after(handle: BinaryIO, after: int, limit: int = PAGE_BYTES) -> LogWindow:
    """The window of whole lines from `after` (a line boundary), about `limit` bytes."""
    size = handle.seek(0, 2)
    start = min(max(0, after), size)
    handle.seek(start)
    data = handle.read(min(limit, size - start))
    cut = data.rfind(b"\n") + 1
    while cut == 0 and data and len(data) < MAX_LINE_BYTES and start + len(data) < size:
        more = handle.read(min(_BLOCK, size - start - len(data)))
        data += more
        cut = data.rfind(b"\n") + 1
    if cut == 0 and len(data) >= MAX_LINE_BYTES:
        cut = len(data)  # an endless line: skip it rather than stall forever
    events, bad = parse_lines(data[:cut])
    return LogWindow(start=start, end=start + cut, size=size, events=events, bad_lines=bad)


# A line's time travels through the ANSI renderer as one private-use character of
# plane 15 (an index into the batch's times), turned into a span afterwards; output
# that holds such characters itself has them replaced first.
_MARK_BASE = 0xF0000
_MARK_LAST = 0xFFFFD
_MARKS = re.compile("[\U000f0000-\U000ffffd]")
_PLANE_15 = re.compile(rb"\xf3[\xb0-\xbf][\x80-\xbf][\x80-\xbf]")
_CLOCK = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T([0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?)")


def time_span(clock: str) -> str:
    """The mark a line starts with: its time of day (UTC), shown only when the page
    shows times (CSS draws it from the attribute, so copying the log leaves it out)."""
    return f'<i data-t="{html.escape(clock)}"></i>'


class LogRenderer:
    """Turns a job's events into HTML, keeping terminal state between calls.

    Every line starts with `time_span()` of the event its first byte came in.
    """

    def __init__(self) -> None:
        self.ansi = AnsiRenderer()
        self.at_line_start = True

    def render(self, events: list[dict[str, Any]]) -> str:
        """HTML for `events`; consecutive output of one stream is rendered as one piece."""
        out: list[str] = []
        stream: str | None = None
        pending = bytearray()
        times: list[str] = []
        for event in events:
            kind = event.get("event")
            clock = _clock_of(event)
            if kind in ("stdout", "stderr"):
                if kind != stream:
                    self._output(out, stream, pending, times)
                    stream = kind
                pending += self._marked(event_bytes(event), clock, times)
                continue
            self._output(out, stream, pending, times)
            stream = None
            marker = _marker(event)
            if marker is not None:
                mark = time_span(clock) if clock else ""
                out.append(("" if self.at_line_start else "\n") + mark + marker + "\n")
                self.at_line_start = True
        self._output(out, stream, pending, times)
        return "".join(out)

    def _marked(self, data: bytes, clock: str | None, times: list[str]) -> bytes:
        """`data` with the mark of `clock` at the start of each line that starts in it."""
        if not data:
            return data
        if b"\xf3" in data:
            data = _PLANE_15.sub("\ufffd".encode(), data)
        ends_line = data.endswith(b"\n")
        if clock is not None:
            if not times or times[-1] != clock:
                times.append(clock)
            mark = chr(_MARK_BASE + min(len(times) - 1, _MARK_LAST - _MARK_BASE)).encode()
            data = data.replace(b"\n", b"\n" + mark)
            if ends_line:
                data = data[: -len(mark)]  # the next line starts in a later event
            if self.at_line_start:
                data = mark + data
        self.at_line_start = ends_line
        return data

    def _output(
        self, out: list[str], stream: str | None, data: bytearray, times: list[str]
    ) -> None:
        if stream is None or not data:
            return
        text = bytes(data).decode("utf-8", errors="replace")
        data.clear()
        rendered = self.ansi.render(text)
        if times:
            rendered = _MARKS.sub(lambda m: _span_of(m.group(), times), rendered)
        if rendered:
            out.append(f'<span class="err">{rendered}</span>' if stream == "stderr" else rendered)


def _span_of(mark: str, times: list[str]) -> str:
    index = ord(mark) - _MARK_BASE
    return time_span(times[index]) if index < len(times) else ""


def _clock_of(event: dict[str, Any]) -> str | None:
    found = _CLOCK.match(str(event.get("t", "")))
    return found.group(1) if found else None


def _marker(event: dict[str, Any]) -> str | None:
    """The line shown for a non-output event, or None for kinds not shown."""
    kind = event.get("event")
    if kind == "sh-start":
        return f'<span class="cmd">$ {html.escape(str(event.get("cmd", "")))}</span>'
    if kind == "sh-exit":
        code = event.get("exit")
        took = event.get("duration_s")
        text = f"exit {code}"
        if isinstance(took, int | float):
            text += f" in {took:.2f} s"
        if event.get("timed_out"):
            text += " (timed out)"
        status = "ok" if code == 0 else "bad"
        return f'<span class="exit {status}">{html.escape(text)}</span>'
    if kind == "message":
        return f'<span class="note">{html.escape(str(event.get("text", "")))}</span>'
    return None


def render_window(window: LogWindow) -> str:
    """HTML for one window read on its own (a page of the job log)."""
    return LogRenderer().render(window.events)
