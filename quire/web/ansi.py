"""Terminal output as HTML: ANSI SGR colours become classes, every byte is escaped.

Colours are CSS classes (`f1`, `b4`, `f208`, ...), never inline styles, so
the page's Content-Security-Policy can forbid inline styles. 24-bit colours
are mapped to the nearest of the 256-colour palette. Escape sequences other
than SGR (cursor movement, titles, ...) are dropped: a log is not a screen.

A carriage return that is not part of `\\r\\n` overwrites the line, as on a
terminal; within one rendered batch only the last text written over a line
is kept (a progress bar shows its final state). `AnsiRenderer` keeps the
colour state and any escape sequence cut in half between calls, so a live
stream renders chunk by chunk exactly as it would in one piece.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, replace

# CSI (ESC [ params final), OSC (ESC ] ... BEL or ESC \), and two-byte escapes (ESC 7, ESC c).
_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[0-~]")
# An escape sequence that may still be completed by the next chunk.
_PARTIAL = re.compile(r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?)?\Z")
_SGR = re.compile(r"\x1b\[([0-9;:]*)m")
# C0 controls a browser would show as boxes; tab and newline stay.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

_HOLD_LIMIT = 256

_CUBE = (0, 95, 135, 175, 215, 255)


@dataclass(frozen=True)
class Style:
    """The SGR state: colours as palette indexes (None is the default colour)."""

    fg: int | None = None
    bg: int | None = None
    bold: bool = False
    dim: bool = False
    italic: bool = False
    underline: bool = False
    strike: bool = False
    inverse: bool = False

    def classes(self) -> str:
        fg, bg = (self.bg, self.fg) if self.inverse else (self.fg, self.bg)
        names = []
        if fg is not None:
            names.append(f"f{fg}")
        elif self.inverse:
            names.append("fi")  # the default background as foreground
        if bg is not None:
            names.append(f"b{bg}")
        elif self.inverse:
            names.append("bi")
        for flag, name in (
            (self.bold, "bo"),
            (self.dim, "di"),
            (self.italic, "it"),
            (self.underline, "un"),
            (self.strike, "st"),
        ):
            if flag:
                names.append(name)
        return " ".join(names)


def nearest_256(red: int, green: int, blue: int) -> int:
    """The 256-colour palette index closest to an RGB colour (cube or grey ramp)."""

    def cube_index(value: int) -> int:
        return min(range(6), key=lambda i: abs(_CUBE[i] - value))

    r, g, b = cube_index(red), cube_index(green), cube_index(blue)
    cube = 16 + 36 * r + 6 * g + b
    cube_rgb = (_CUBE[r], _CUBE[g], _CUBE[b])
    grey_level = max(0, min(23, round(((red + green + blue) / 3 - 8) / 10)))
    grey = 8 + 10 * grey_level
    target = (red, green, blue)

    def distance(rgb: tuple[int, int, int]) -> int:
        return sum((x - y) ** 2 for x, y in zip(rgb, target, strict=True))

    return cube if distance(cube_rgb) <= distance((grey, grey, grey)) else 232 + grey_level


def apply_sgr(style: Style, params: str) -> Style:
    """The style after one `ESC [ params m`."""
    codes = [int(p) if p.isdigit() else 0 for p in params.replace(":", ";").split(";")]
    i = 0
    while i < len(codes):
        code = codes[i]
        if code in (38, 48):
            color, i = _extended_color(codes, i)
            if color is not None:
                style = replace(style, fg=color) if code == 38 else replace(style, bg=color)
            continue
        style = _simple_sgr(style, code)
        i += 1
    return style


def _extended_color(codes: list[int], i: int) -> tuple[int | None, int]:
    """`38;5;n` or `38;2;r;g;b` starting at codes[i]; returns (colour, next index)."""
    kind = codes[i + 1] if i + 1 < len(codes) else None
    if kind == 5 and i + 2 < len(codes):
        return max(0, min(255, codes[i + 2])), i + 3
    if kind == 2 and i + 4 < len(codes):
        r, g, b = (max(0, min(255, c)) for c in codes[i + 2 : i + 5])
        return nearest_256(r, g, b), i + 5
    return None, len(codes)


_FLAGS_ON = {1: "bold", 2: "dim", 3: "italic", 4: "underline", 7: "inverse", 9: "strike"}
_FLAGS_OFF = {22: ("bold", "dim"), 23: ("italic",), 24: ("underline",), 27: ("inverse",)}


def _simple_sgr(style: Style, code: int) -> Style:
    if code == 0:
        return Style()
    if code in _FLAGS_ON:
        return replace(style, **{_FLAGS_ON[code]: True})
    if code in _FLAGS_OFF:
        return replace(style, **dict.fromkeys(_FLAGS_OFF[code], False))
    if code == 29:
        return replace(style, strike=False)
    if 30 <= code <= 37:
        return replace(style, fg=code - 30)
    if 90 <= code <= 97:
        return replace(style, fg=code - 90 + 8)
    if code == 39:
        return replace(style, fg=None)
    if 40 <= code <= 47:
        return replace(style, bg=code - 40)
    if 100 <= code <= 107:
        return replace(style, bg=code - 100 + 8)
    if code == 49:
        return replace(style, bg=None)
    return style


class AnsiRenderer:
    """Renders a stream of terminal text as HTML, carrying state between calls."""

    def __init__(self) -> None:
        self.style = Style()
        self._held = ""  # the start of an escape sequence the next chunk completes

    def render(self, text: str) -> str:
        """HTML for `text`; an escape sequence cut at the end waits for the next call."""
        text = self._held + text
        self._held = ""
        partial = _PARTIAL.search(text)
        # A long "partial" is a stray ESC, not a sequence in flight: render it.
        if partial and len(partial.group()) <= _HOLD_LIMIT:
            self._held = partial.group()
            text = text[: partial.start()]
        return self._html(_overwrite_lines(text))

    def _html(self, text: str) -> str:
        out: list[str] = []
        position = 0
        for match in _ESCAPE.finditer(text):
            self._text(out, text[position : match.start()])
            sgr = _SGR.fullmatch(match.group())
            if sgr:
                self.style = apply_sgr(self.style, sgr.group(1))
            position = match.end()
        self._text(out, text[position:])
        return "".join(out)

    def _text(self, out: list[str], text: str) -> None:
        text = _CONTROLS.sub("", text)
        if not text:
            return
        escaped = html.escape(text)
        classes = self.style.classes()
        out.append(f'<span class="{classes}">{escaped}</span>' if classes else escaped)


def _overwrite_lines(text: str) -> str:
    r"""Apply bare carriage returns: keep the last visible text written over each line.

    Colour changes in the overwritten parts still count, so they are kept.
    """
    if "\r" not in text:
        return text
    lines = text.replace("\r\n", "\n").split("\n")
    for index, line in enumerate(lines):
        if "\r" in line:
            pieces = line.split("\r")
            visible = [i for i, piece in enumerate(pieces) if _ESCAPE.sub("", piece)]
            kept = visible[-1] if visible else len(pieces) - 1
            lines[index] = (
                _sgr_sequences(pieces[:kept]) + pieces[kept] + _sgr_sequences(pieces[kept + 1 :])
            )
    return "\n".join(lines)


def _sgr_sequences(pieces: list[str]) -> str:
    return "".join(m.group() for piece in pieces for m in _SGR.finditer(piece))


def palette_css() -> str:
    """CSS classes for the 256-colour palette (foreground `fN`, background `bN`)."""
    rules = []
    for index in range(256):
        color = _palette_rgb(index)
        rules.append(f".f{index}{{color:{color}}}.b{index}{{background:{color}}}")
    return "\n".join(rules) + "\n"


# The 16 basic colours (a VS Code-like dark terminal theme).
_BASE16 = (
    *("#1e1e1e", "#cd3131", "#0dbc79", "#c8a600", "#2472c8", "#bc3fbc", "#11a8cd", "#c8c8c8"),
    *("#767676", "#f14c4c", "#23d18b", "#e5e510", "#3b8eea", "#d670d6", "#29b8db", "#ffffff"),
)


def _palette_rgb(index: int) -> str:
    if index < 16:
        return _BASE16[index]
    if index < 232:
        n = index - 16
        r, g, b = _CUBE[n // 36], _CUBE[(n // 6) % 6], _CUBE[n % 6]
        return f"#{r:02x}{g:02x}{b:02x}"
    grey = 8 + 10 * (index - 232)
    return f"#{grey:02x}{grey:02x}{grey:02x}"
