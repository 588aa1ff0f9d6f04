"""Terminal output to HTML: colours as classes, everything escaped, state across chunks."""

from __future__ import annotations

import pytest

from quire.web.ansi import AnsiRenderer, Style, apply_sgr, nearest_256, palette_css


def render(*chunks: str) -> str:
    renderer = AnsiRenderer()
    return "".join(renderer.render(chunk) for chunk in chunks)


def test_plain_text_is_escaped() -> None:
    assert render("<script>alert('x')</script> & \"q\"\n") == (
        "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;q&quot;\n"
    )


def test_basic_bright_and_background_colours_become_classes() -> None:
    html = render("\x1b[31mred\x1b[0m \x1b[92;44mbright on blue\x1b[39;49m plain")
    assert html == '<span class="f1">red</span> <span class="f10 b4">bright on blue</span> plain'


def test_attributes_combine_and_reset_one_by_one() -> None:
    html = render("\x1b[1;3;4mall\x1b[22mno bold\x1b[0mnone")
    assert html == '<span class="bo it un">all</span><span class="it un">no bold</span>none'


def test_256_and_24_bit_colours_map_to_the_palette() -> None:
    assert render("\x1b[38;5;208mo") == '<span class="f208">o</span>'
    assert render("\x1b[48;2;255;0;0mr") == '<span class="b196">r</span>'
    assert nearest_256(128, 128, 128) == 244
    assert nearest_256(0, 0, 0) == 16


def test_inverse_swaps_colours() -> None:
    assert render("\x1b[31;7mx") == '<span class="fi b1">x</span>'


def test_an_escape_sequence_split_between_chunks_is_completed_by_the_next() -> None:
    assert render("a\x1b[3", "2mgreen") == 'a<span class="f2">green</span>'
    assert render("a\x1b", "[1mb") == 'a<span class="bo">b</span>'


def test_colour_state_carries_over_between_chunks() -> None:
    html = render("\x1b[34mone ", "two")
    assert html == '<span class="f4">one </span><span class="f4">two</span>'


def test_other_escape_sequences_and_controls_are_dropped() -> None:
    html = render("\x1b]0;title\x07a\x1b[2Kb\x1b[1Ac\x00d\x07e\tf\x1bcg")
    assert html == "abcde\tfg"


def test_carriage_return_keeps_the_last_text_written_over_a_line() -> None:
    assert render("10%\r50%\r100%\ndone\r\n") == "100%\ndone\n"
    assert render("\x1b[32m10%\r\x1b[0m100%\n") == "100%\n"
    assert render("progress\r\n") == "progress\n"


def test_a_stray_escape_does_not_hold_back_the_rest_of_the_output() -> None:
    text = "\x1b]" + "x" * 1000
    assert render(text) == "x" * 1000


@pytest.mark.parametrize("params", ["", "0", "38;5", "38;2;1", "999", "38;5;300"])
def test_malformed_sgr_parameters_never_raise(params: str) -> None:
    assert isinstance(apply_sgr(Style(fg=1), params), Style)


def test_palette_has_a_class_per_colour_for_both_planes() -> None:
    css = palette_css()
    assert css.count(".f") == 256 and css.count(".b") == 256
    assert ".f16{color:#000000}" in css and ".f231{color:#ffffff}" in css
