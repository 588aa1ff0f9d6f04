"""Reading a job log by byte offset: windows on line boundaries, torn lines, giant lines."""

from __future__ import annotations

import base64
import io

import pytest

from quire.web import logview
from quire.web.logview import LogRenderer, read_after, read_before
from tests.unit.test_web_support import out


def log_of(count: int, width: int = 100) -> bytes:
    return b"".join(out(f"{i:05d} " + "y" * width + "\n") for i in range(count))


def numbers(window: logview.LogWindow) -> list[int]:
    return [int(str(e["data"])[:5]) for e in window.events]


def test_tail_window_ends_at_the_last_complete_line_and_starts_on_a_line() -> None:
    data = log_of(1000)
    handle = io.BytesIO(data + b'{"t": "torn')
    window = read_before(handle, None, page_bytes=4096)
    assert window.end == len(data)
    assert data[window.start - 1 : window.start] == b"\n"
    assert numbers(window)[-1] == 999
    assert window.size == len(data) + len(b'{"t": "torn')
    assert window.bad_lines == 0


def test_windows_paged_back_cover_every_line_once() -> None:
    handle = io.BytesIO(log_of(500))
    seen: list[int] = []
    before = None
    while True:
        window = read_before(handle, before, page_bytes=3000)
        seen = numbers(window) + seen
        if window.at_start:
            break
        before = window.start
    assert seen == list(range(500))


def test_windows_paged_forward_cover_every_line_once() -> None:
    data = log_of(500)
    handle = io.BytesIO(data)
    seen: list[int] = []
    offset = 0
    while offset < len(data):
        window = read_after(handle, offset, limit=2500)
        assert window.end > offset
        seen += numbers(window)
        offset = window.end
    assert seen == list(range(500))


def test_a_line_longer_than_the_window_is_read_whole() -> None:
    big = out("z" * 50_000 + "\n")
    handle = io.BytesIO(out("before\n") + big + out("after\n"))
    window = read_before(handle, len(out("before\n")) + len(big), page_bytes=1000)
    assert [e["data"][:3] for e in window.events] == ["zzz"]
    forward = read_after(handle, len(out("before\n")), limit=1000)
    assert forward.events[0]["data"] == "z" * 50_000 + "\n"  # whole, not cut at the limit


def test_a_line_that_never_ends_is_cut_rather_than_read_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logview, "MAX_LINE_BYTES", 10_000)
    handle = io.BytesIO(b"x" * 500_000)
    window = read_after(handle, 0, limit=1000)
    # It moves on (a follower is never stuck) after at most the cap and one block.
    assert 0 < window.end <= 10_000 + 64 * 1024 and window.bad_lines == 1
    tail = read_before(handle, None, page_bytes=1000)
    assert tail.end - tail.start <= 10_000 + 64 * 1024 + 1000


def test_unreadable_lines_are_counted_not_fatal() -> None:
    handle = io.BytesIO(out("a\n") + b"not json\n" + b"[1]\n" + out("b\n"))
    window = read_before(handle, None)
    assert [e["data"] for e in window.events] == ["a\n", "b\n"]
    assert window.bad_lines == 2


def test_renderer_shows_commands_output_and_exit_like_the_terminal() -> None:
    events = [
        {"event": "sh-start", "cmd": "make <all>"},
        {"event": "stdout", "data": "no newline"},
        {"event": "stderr", "data": "warn\n"},
        {"event": "sh-exit", "exit": 2, "duration_s": 1.5},
        {"event": "message", "text": "job says hi"},
        {"event": "some-future-kind", "whatever": 1},
    ]
    html = LogRenderer().render(events)
    assert html == (
        '<span class="cmd">$ make &lt;all&gt;</span>\n'
        'no newline<span class="err">warn\n</span>'
        '<span class="exit bad">exit 2 in 1.50 s</span>\n'
        '<span class="note">job says hi</span>\n'
    )


def test_renderer_decodes_base64_chunks_and_joins_characters_split_between_them() -> None:
    snowman = "☃".encode()
    events = [
        {
            "event": "stdout",
            "data": base64.b64encode(b"bad \xff " + snowman[:1]).decode(),
            "encoding": "base64",
        },
        {"event": "stdout", "data": base64.b64encode(snowman[1:]).decode(), "encoding": "base64"},
    ]
    assert LogRenderer().render(events) == "bad \ufffd ☃"
