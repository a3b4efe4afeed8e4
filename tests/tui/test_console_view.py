"""ConsoleView in a tiny app, driven with Pilot: scrollback, colour, follow, pause, search, typing."""

from __future__ import annotations

from typing import ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Input as TextInput

from valve_console.widgets.console_view import ConsoleView, key_to_bytes

MAC = "52:54:00:11:22:01"


class ConsoleApp(App[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "escaped")]

    def __init__(self, max_lines: int = 20000) -> None:
        super().__init__()
        self.max_lines = max_lines
        self.sent: list[ConsoleView.Input] = []
        self.escaped = 0

    def action_escaped(self) -> None:
        self.escaped += 1

    def compose(self) -> ComposeResult:
        yield ConsoleView(MAC, max_lines=self.max_lines, id="console")

    def on_mount(self) -> None:
        self.query_one(ConsoleView).focus()

    def on_console_view_input(self, message: ConsoleView.Input) -> None:
        self.sent.append(message)

    @property
    def view(self) -> ConsoleView:
        return self.query_one(ConsoleView)


def screen_rows(view: ConsoleView) -> list[str]:
    """The text of every row the console currently shows."""
    lines = view.lines_view
    return [lines.render_line(y).text.rstrip() for y in range(lines.size.height)]


def write_lines(view: ConsoleView, start: int, stop: int, prefix: str = "line") -> None:
    """Write lines in 4 KiB chunks that cut lines (and CRLFs) anywhere, like a serial port."""
    text = "".join(f"{prefix} {i}\r\n" for i in range(start, stop))
    for pos in range(0, len(text), 4096):
        view.write(text[pos : pos + 4096])


async def test_keeps_at_least_10000_lines_and_shows_the_last_one() -> None:
    app = ConsoleApp(max_lines=10_000)
    async with app.run_test(size=(100, 30)) as pilot:
        view = app.view
        write_lines(view, 0, 12_000)
        view.flush()
        await pilot.pause()
        assert view.line_count == 10_000
        plain = view.plain_lines()
        assert plain[0] == "line 2000" and plain[-1] == "line 11999"
        assert view.follow
        assert screen_rows(view)[-1] == "line 11999"


async def test_default_capacity_holds_20000_lines() -> None:
    app = ConsoleApp()
    async with app.run_test(size=(100, 30)):
        view = app.view
        write_lines(view, 0, 25_000)
        assert view.line_count == 20_000


async def test_timer_publishes_output_and_shows_partial_prompt() -> None:
    app = ConsoleApp()
    async with app.run_test(size=(100, 30)) as pilot:
        view = app.view
        view.write("Welcome to Buildroot\r\nbuildroot login: root\r\n/ # ")
        await pilot.pause(0.3)  # no explicit flush: the 15 Hz timer does it
        rows = [row for row in screen_rows(view) if row]
        assert rows[-2:] == ["buildroot login: root", "/ #"]
        assert view.partial == "/ # "


async def test_hidden_console_is_not_published_until_shown() -> None:
    app = ConsoleApp()
    async with app.run_test(size=(100, 30)) as pilot:
        view = app.view
        view.display = False
        await pilot.pause()
        view.write("hidden\n")
        await pilot.pause(0.3)
        assert view.line_count == 1
        assert view.lines_view.virtual_size.height == 0  # stored, not published
        view.display = True
        await pilot.pause(0.3)
        assert "hidden" in screen_rows(view)


async def test_ansi_colour_is_rendered() -> None:
    app = ConsoleApp()
    async with app.run_test(size=(100, 30)) as pilot:
        view = app.view
        view.write("plain \x1b[31mRED\x1b[0m tail\r\n")
        view.flush()
        await pilot.pause()
        rows = screen_rows(view)
        y = next(i for i, row in enumerate(rows) if "RED" in row)
        assert rows[y] == "plain RED tail"  # no escape codes leak into the text
        strip = view.lines_view.render_line(y)
        red = [seg for seg in strip if seg.text == "RED"]
        plain = [seg for seg in strip if seg.text.startswith("plain")]
        assert red and red[0].style is not None and red[0].style.color is not None
        assert red[0].style.color.number == 1  # ANSI red
        assert plain[0].style is not None and plain[0].style.color != red[0].style.color
        assert "RED" in app.export_screenshot()


async def test_scrolling_up_turns_follow_off_and_G_turns_it_on() -> None:
    app = ConsoleApp()
    async with app.run_test(size=(100, 30)) as pilot:
        view = app.view
        write_lines(view, 0, 200)
        view.flush()
        await pilot.pause()
        await pilot.press("pageup")
        assert not view.follow
        before = screen_rows(view)
        write_lines(view, 200, 300)
        view.flush()
        await pilot.pause()
        assert screen_rows(view) == before  # the operator's place is kept
        assert "G to follow" in str(view.border_subtitle)
        await pilot.press("G")
        assert view.follow
        assert screen_rows(view)[-1] == "line 299"
        await pilot.press("up")
        assert not view.follow
        await pilot.press("end")
        assert view.follow


async def test_place_is_kept_when_old_lines_fall_off() -> None:
    app = ConsoleApp(max_lines=1000)
    async with app.run_test(size=(100, 30)) as pilot:
        view = app.view
        write_lines(view, 0, 1000)
        view.flush()
        await pilot.pause()
        await pilot.press("pageup", "pageup")
        before = screen_rows(view)
        write_lines(view, 1000, 1100)  # drops lines 0..99 from the front
        view.flush()
        await pilot.pause()
        assert screen_rows(view) == before


async def test_pause_freezes_the_view_and_counts_new_lines() -> None:
    app = ConsoleApp()
    async with app.run_test(size=(100, 30)) as pilot:
        view = app.view
        write_lines(view, 0, 100)
        view.flush()
        await pilot.pause()
        await pilot.press("p")
        assert view.paused
        before = screen_rows(view)
        write_lines(view, 100, 150)
        view.flush()
        await pilot.pause(0.3)
        assert screen_rows(view) == before
        assert view.line_count == 150  # still stored
        assert "PAUSED +50 lines" in str(view.border_subtitle)
        await pilot.press("p")
        assert not view.paused and view.follow
        await pilot.pause()
        assert screen_rows(view)[-1] == "line 149"


async def test_paused_view_survives_more_output_than_the_buffer_holds() -> None:
    app = ConsoleApp(max_lines=1000)
    async with app.run_test(size=(100, 30)) as pilot:
        view = app.view
        write_lines(view, 0, 100)
        view.write("Kernel panic - not syncing\r\n")
        write_lines(view, 101, 120)
        view.flush()
        await pilot.pause()
        await pilot.press("p")
        before = screen_rows(view)
        write_lines(view, 120, 5000)  # every line in view falls off the buffer
        await pilot.pause(0.2)
        assert screen_rows(view) == before
        assert view.plain_lines()[0] == "line 4000"
        assert view.search("kernel panic")  # searches what the paused view shows
        assert "Kernel panic - not syncing" in screen_rows(view)
        await pilot.press("G")  # going live un-pauses
        assert not view.paused and view.follow
        assert screen_rows(view)[-1] == "line 4999"


async def test_search_finds_scrolls_and_highlights() -> None:
    app = ConsoleApp()
    async with app.run_test(size=(100, 30)) as pilot:
        view = app.view
        write_lines(view, 0, 500)
        view.write("\x1b[1;31mKernel panic - not syncing: VFS\x1b[0m\r\n")
        write_lines(view, 501, 3000)
        view.write("second kernel PANIC here\r\n")
        write_lines(view, 3001, 5000)
        view.flush()
        await pilot.pause()
        await pilot.press("slash")
        assert isinstance(app.focused, TextInput)
        await pilot.press(*"panic", "enter")
        assert app.focused is view
        assert not view.follow
        rows = screen_rows(view)
        assert "second kernel PANIC here" in rows
        lines = view.lines_view
        y = rows.index("second kernel PANIC here")
        assert any(seg.style is not None and seg.style.reverse for seg in lines.render_line(y))
        await pilot.press("n")  # next (older) match
        rows = screen_rows(view)
        assert "Kernel panic - not syncing: VFS" in rows
        await pilot.press("N")  # back to the newer one
        assert "second kernel PANIC here" in screen_rows(view)
        await pilot.press("escape")  # clears the search ...
        assert lines.highlight is None
        assert app.escaped == 0
        await pilot.press("escape")  # ... then escape is the app's again
        assert app.escaped == 1
        assert view.search("line 42") is True
        assert view.search("no such text") is False


async def test_escape_closes_the_search_bar() -> None:
    app = ConsoleApp()
    async with app.run_test(size=(100, 30)) as pilot:
        view = app.view
        await pilot.press("slash")
        assert isinstance(app.focused, TextInput)
        await pilot.press("x", "escape")
        assert app.focused is view
        assert not view.query_one("#search-bar").has_class("-open")


async def test_type_mode_sends_keys_and_ctrl_bracket_leaves() -> None:
    app = ConsoleApp()
    async with app.run_test(size=(100, 30)) as pilot:
        view = app.view
        await pilot.press("a", "enter")  # read-only: nothing is sent
        assert app.sent == []
        assert "read-only" in str(view.border_title)
        await pilot.press("t")
        assert view.typing and view.has_class("-typing")
        assert "TYPE MODE" in str(view.border_title)
        await pilot.press("a", "enter", "p", "slash", "t", "backspace", "tab", "ctrl+c", "up", "escape")
        await pilot.pause()
        assert [m.data for m in app.sent] == [
            "a",
            "\r",
            "p",
            "/",
            "t",
            "\x7f",
            "\t",
            "\x03",
            "\x1b[A",
            "\x1b",
        ]
        assert all(m.mac == MAC and m.control is view for m in app.sent)
        assert not view.paused  # "p" went to the DUT, not to the pause binding
        await pilot.press("ctrl+right_square_bracket")
        await pilot.pause()
        assert not view.typing and not view.has_class("-typing")
        assert len(app.sent) == 10  # ctrl+] is never sent
        await pilot.press("b", "enter")
        await pilot.pause()
        assert len(app.sent) == 10
        # The other name of the key leaves too.
        await pilot.press("t", "ctrl+]")
        await pilot.pause()
        assert not view.typing
        assert len(app.sent) == 10


async def test_clear() -> None:
    app = ConsoleApp()
    async with app.run_test(size=(100, 30)) as pilot:
        view = app.view
        write_lines(view, 0, 100)
        view.write("/ # ")
        view.flush()
        await pilot.pause()
        view.clear()
        await pilot.pause()
        assert view.line_count == 0 and view.partial == ""
        assert all(row == "" for row in screen_rows(view))
        view.write("again\n")
        view.flush()
        await pilot.pause()
        assert screen_rows(view)[0] == "again"


async def test_megabyte_burst() -> None:
    app = ConsoleApp()
    async with app.run_test(size=(100, 30)) as pilot:
        view = app.view
        burst = "".join(f"\x1b[32m[{i:7d}]\x1b[0m {'x' * 90}\r\n" for i in range(10_000))
        assert len(burst) > 1_000_000
        view.write(burst)
        view.write("y" * 1_000_000)  # and a megabyte without a newline
        view.flush()
        await pilot.pause()
        assert view.line_count == 10_000 + 1_000_000 // 4096
        assert all(len(line) <= 4096 for line in view.lines)


def test_key_to_bytes() -> None:
    assert key_to_bytes("a", "a") == "a"
    assert key_to_bytes("A", "A") == "A"
    assert key_to_bytes("space", " ") == " "
    assert key_to_bytes("enter", None) == "\r"
    assert key_to_bytes("ctrl+a", None) == "\x01"
    assert key_to_bytes("ctrl+z", None) == "\x1a"
    assert key_to_bytes("left", None) == "\x1b[D"
    assert key_to_bytes("ctrl+right_square_bracket", None) is None
    assert key_to_bytes("ctrl+]", None) is None
    assert key_to_bytes("ctrl+f5", None) is None


# -------------------------------------------------------------- issue 19 item 4: background, wrap, scrollbar
def compositor_rows(app: App[None]) -> list[str]:
    """What the terminal shows, row by row (scrollbars included, unlike ``screen_rows``)."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


LONG = "".join(f"{i:03d}-" for i in range(60)) + "END"  # 243 cells


async def test_lines_are_drawn_on_the_panel_s_background_not_the_terminal_s() -> None:
    """Rich gives a Text without spans unstyled segments, which the terminal paints in its default colours
    (black in the browser); a DUT's SGR 0/39/49 mean "the default" too. All must be the panel's."""
    app = ConsoleApp()
    async with app.run_test(size=(100, 30)) as pilot:
        view = app.view
        view.write("plain line\r\n")
        view.write("\x1b[31mred\x1b[0m after reset \x1b[42mgreen bg\x1b[49m default bg \x1b[39mdefault fg\r\n")
        view.write("tab\there\r\n")
        view.flush()
        await pilot.pause()
        lines = view.lines_view
        panel = lines.rich_style
        assert panel.bgcolor is not None and panel.color is not None
        assert panel.bgcolor.triplet != (0, 0, 0)  # the test means something: the panel is not black
        rows = screen_rows(view)
        checked = 0
        for y, row in enumerate(rows):
            if not row:
                continue
            for seg in lines.render_line(y):
                assert seg.style is not None, (row, seg)
                if seg.text.strip() in ("green bg", ""):
                    continue
                assert seg.style.bgcolor == panel.bgcolor, (row, seg)
                if seg.text.strip() != "red":
                    assert seg.style.color == panel.color, (row, seg)
                checked += 1
        assert checked >= 6
        green = next(seg for y, row in enumerate(rows) if "green bg" in row for seg in lines.render_line(y)
                     if seg.text == "green bg")
        assert green.style is not None and green.style.bgcolor is not None and green.style.bgcolor.number == 2


async def test_w_wraps_long_lines_and_toggles_back_to_horizontal_scrolling() -> None:
    app = ConsoleApp()
    async with app.run_test(size=(100, 30)) as pilot:
        view = app.view
        lines = view.lines_view
        view.write(f"before\r\n{LONG}\r\nafter\r\n")
        view.flush()
        await pilot.pause()
        assert not view.wrap
        rows = [r for r in screen_rows(view) if r]
        assert rows == ["before", LONG[: len(rows[1])], "after"]  # one row, cut at the edge
        assert lines.show_horizontal_scrollbar

        await pilot.press("w")
        await pilot.pause()
        assert view.wrap and "wrap" in str(view.border_subtitle)
        width = lines.scrollable_content_region.width
        rows = [r for r in screen_rows(view) if r]
        assert rows[0] == "before" and rows[-1] == "after"
        assert len(rows) == 2 + -(-len(LONG) // width)  # several rows
        assert "".join(rows[1:-1]) == LONG  # nothing lost or repeated
        assert all(len(r) <= width for r in rows)
        assert not lines.show_horizontal_scrollbar and lines.virtual_size.width <= width

        await pilot.press("w")
        await pilot.pause()
        assert not view.wrap and len([r for r in screen_rows(view) if r]) == 3


async def test_wrapped_lines_are_wrapped_again_on_a_resize() -> None:
    app = ConsoleApp()
    async with app.run_test(size=(100, 30)) as pilot:
        view = app.view
        view.wrap = True
        view.write(f"{LONG}\r\nlast\r\n")
        view.flush()
        await pilot.pause()
        wide = len([r for r in screen_rows(view) if r])
        await pilot.resize_terminal(50, 30)
        await pilot.pause(0.3)
        rows = [r for r in screen_rows(view) if r]
        width = view.lines_view.scrollable_content_region.width
        assert len(rows) == 1 + -(-len(LONG) // width) > wide
        assert "".join(rows[:-1]) == LONG and rows[-1] == "last"


async def test_no_text_sits_under_the_horizontal_scrollbar() -> None:
    """Scroll mode, a view full of lines and one too long: the scrollbar takes its own row; the last line
    is still shown above it (also after the long line arrived in a later flush)."""
    app = ConsoleApp()
    async with app.run_test(size=(60, 16)) as pilot:
        view = app.view
        write_lines(view, 0, 40)
        view.flush()
        await pilot.pause()
        view.write(f"{LONG}\r\nthe last line\r\n")
        view.flush()
        await pilot.pause(0.2)
        lines = view.lines_view
        assert lines.show_horizontal_scrollbar
        shown = compositor_rows(app)
        text_area = lines.scrollable_content_region  # the widget less its scrollbars, on the screen
        last_text_row = max(i for i, row in enumerate(shown) if "the last line" in row)
        assert text_area.y <= last_text_row < text_area.bottom  # not on the scrollbar's row
        assert last_text_row == text_area.bottom - 1  # following: right above the scrollbar
        await pilot.press("w")
        await pilot.pause(0.2)
        shown = compositor_rows(app)
        assert not lines.show_horizontal_scrollbar
        assert any("the last line" in row for row in shown)
        assert any(row.strip().strip("│").rstrip().endswith("END") for row in shown)


async def test_search_pause_and_type_mode_work_while_wrapping() -> None:
    app = ConsoleApp()
    async with app.run_test(size=(60, 12)) as pilot:
        view = app.view
        await pilot.press("w")
        for i in range(30):
            view.write(f"{LONG}\r\nline {i}\r\n")
        view.write("Kernel panic - not syncing\r\n")
        view.write(f"{LONG}\r\n" * 30)
        view.flush()
        await pilot.pause()
        assert view.search("kernel panic")
        await pilot.pause()
        assert "Kernel panic - not syncing" in screen_rows(view)  # the wrapped rows before it are counted
        assert view.search("line 3")
        await pilot.pause()
        assert "line 3" in screen_rows(view)

        await pilot.press("G", "p")
        before = screen_rows(view)
        view.write(f"{LONG}\r\n" * 20)
        await pilot.pause(0.3)
        assert screen_rows(view) == before  # paused: the wrapped view holds still
        await pilot.press("p")
        await pilot.pause()
        assert screen_rows(view)[-1].endswith("END")

        await pilot.press("t", "w")  # type mode: w is a key for the DUT, not the wrap toggle
        assert view.wrap and [m.data for m in app.sent] == ["w"]
