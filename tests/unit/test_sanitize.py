"""Sanitising DUT serial output: escape sequences, controls, carriage returns, streaming."""

from __future__ import annotations

import pytest

from valve_console.widgets.sanitize import LineAssembler, sanitize, strip_sgr


def test_crlf_becomes_lf() -> None:
    assert sanitize("abc\r\ndef\r\n") == "abc\ndef\n"


def test_lone_cr_keeps_text_after_it() -> None:
    assert sanitize("10%\r20%\r100%\ndone") == "100%\ndone"
    assert sanitize("abc\rxy") == "xy"


def test_trailing_cr_keeps_the_line() -> None:
    assert sanitize("abc\r") == "abc"


def test_osc_title_is_removed() -> None:
    assert sanitize("\x1b]0;evil\x07after") == "after"


def test_osc_hyperlink_keeps_only_the_link_text() -> None:
    assert sanitize("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\") == "link"


def test_dcs_sos_pm_apc_strings_are_removed() -> None:
    assert sanitize("a\x1bPq#0;2;0;0;0#0~~\x1b\\b") == "ab"
    assert sanitize("a\x1bXsos\x1b\\b\x1b^pm\x1b\\c\x1b_apc\x1b\\d") == "abcd"


def test_cursor_movement_and_clear_screen_are_removed() -> None:
    assert sanitize("\x1b[2J\x1b[H\x1b[10;20Hx\x1b[3A\x1b[K\x1b[?25l\x1b[?1049hy") == "xy"


def test_sgr_is_kept() -> None:
    text = "\x1b[1;31mred\x1b[0m \x1b[38;5;208morange\x1b[m \x1b[38;2;1;2;3mtrue\x1b[0m"
    assert sanitize(text) == text


def test_absurd_sgr_is_dropped() -> None:
    assert sanitize("\x1b[" + "1;" * 40 + "1m!") == "!"
    assert sanitize("\x1b[" + "0" * 70 + "m!") == "!"
    assert sanitize("\x1b[>4;1m!") == "!"  # private, not SGR


def test_other_escapes_are_removed() -> None:
    assert sanitize("a\x1b7b\x1b8c\x1b(Bd\x1bce\x1b=f") == "abcdef"


def test_c0_c1_and_del_are_removed_tab_and_newline_kept() -> None:
    assert sanitize("a\x00b\x07c\x08d\x0be\x0cf\x7fg\x85h\x9bi\x9cj") == "abcdefghij"
    assert sanitize("col1\tcol2\nnext") == "col1\tcol2\nnext"


def test_line_separators_are_removed() -> None:
    assert sanitize("a\u2028b\u2029c") == "abc"


def test_replacement_character_stays() -> None:
    assert sanitize("bad \ufffd byte") == "bad \ufffd byte"
    assert sanitize(b"caf\xe9 \xff".decode("utf-8", errors="replace")) == "caf\ufffd \ufffd"


@pytest.mark.parametrize(
    "cut", ["x\x1b", "x\x1b[", "x\x1b[31", "x\x1b]0;tit", "x\x1bP1;2", "x\x1b(", "x\x1b]8;;http://x\x1b"]
)
def test_sequence_cut_at_the_end_is_dropped(cut: str) -> None:
    assert sanitize(cut) == "x"


def test_colour_survives_an_overwrite() -> None:
    assert sanitize("\x1b[32mgreen \rx") == "\x1b[32mx"
    assert sanitize("\x1b[32mOK\x1b[0m\r\x1b[33mgo") == "\x1b[33mgo"


def test_strip_sgr() -> None:
    assert strip_sgr("\x1b[1;31mred\x1b[0m") == "red"


# -- LineAssembler ---------------------------------------------------------------------------


def test_assembler_returns_complete_lines_and_keeps_partial() -> None:
    asm = LineAssembler()
    assert asm.feed("one\ntw") == ["one"]
    assert asm.partial == "tw"
    assert asm.feed("o\nthree\n/ # ") == ["two", "three"]
    assert asm.partial == "/ # "


def test_assembler_crlf_split_across_feeds() -> None:
    asm = LineAssembler()
    assert asm.feed("abc\r") == []
    assert asm.partial == "abc"
    assert asm.feed("\ndef\r") == ["abc"]
    assert asm.feed("\n") == ["def"]


def test_assembler_progress_bar_overwrites() -> None:
    asm = LineAssembler()
    for pct in range(0, 101, 10):
        asm.feed(f"\rloading {pct}%")
        assert asm.partial == f"loading {pct}%"
    assert asm.feed("\n") == ["loading 100%"]


@pytest.mark.parametrize("split", range(1, 21))
def test_assembler_escape_split_across_feeds(split: int) -> None:
    raw = "a\x1b[31mred\x1b]0;title\x07b\x1b[2Kc\x1b[0m\n"
    asm = LineAssembler()
    lines = asm.feed(raw[:split]) + asm.feed(raw[split:])
    assert lines == ["a\x1b[31mredbc\x1b[0m"]
    assert asm.partial == ""


def test_assembler_hyperlink_split_inside_terminator() -> None:
    asm = LineAssembler()
    assert asm.feed("\x1b]8;;http://x\x1b") == []
    assert asm.feed("\\link\x1b]8;;\x1b\\\n") == ["link"]


def test_assembler_partial_never_shows_a_half_sequence() -> None:
    asm = LineAssembler()
    asm.feed("prompt\x1b[3")
    assert asm.partial == "prompt"
    asm.feed("1m# ")
    assert asm.partial == "prompt\x1b[31m# "


def test_assembler_cuts_a_1mb_line_into_bounded_pieces() -> None:
    asm = LineAssembler(max_line=4096)
    lines = asm.feed("x" * 1_000_000)
    assert lines and all(len(line) <= 4096 for line in lines)
    assert len(asm.partial) <= 4096
    assert sum(map(len, lines)) + len(asm.partial) == 1_000_000


def test_assembler_never_cuts_inside_sgr() -> None:
    asm = LineAssembler(max_line=200)
    lines = asm.feed(("\x1b[31mab\x1b[0m" * 500) + "\n")
    assert all(len(line) <= 200 for line in lines)
    assert "".join(lines) == "\x1b[31mab\x1b[0m" * 500
    for line in lines:
        assert sanitize(line) == line  # every piece holds whole sequences


def test_assembler_skips_an_endless_osc() -> None:
    asm = LineAssembler(max_pending=100)
    assert asm.feed("a\x1b]0;" + "t" * 500) == []
    assert asm.feed("t" * 10_000) == []
    assert asm.feed("t\x07b\n") == ["ab"]


def test_assembler_reset() -> None:
    asm = LineAssembler()
    asm.feed("half\x1b[3")
    asm.reset()
    assert asm.partial == ""
    assert asm.feed("1mx\n") == ["1mx"]
