"""ConsoleView: one DUT serial console, built on Textual's Line API.

Two widgets:

- ``ConsoleLines`` (a ``ScrollView``) stores sanitised lines (strings with SGR codes) in a
  bounded deque and parses ANSI only for the lines on screen, with an LRU cache of rendered
  strips keyed by absolute line number.  Writes only store text; a 15 Hz timer publishes them
  to the view ("flush"), and only while the widget is on screen.
- ``ConsoleView`` wraps it with the operator's keys: follow/pause/search, and a type mode that
  turns key presses into bytes for the DUT (posted as ``ConsoleView.Input``).

How the view stays consistent: rows are mapped to absolute line numbers through a snapshot
taken at each flush (``first line``, ``line count``, ``incomplete last line``).  Between flushes
the snapshot does not move even though new lines are stored and old ones fall off the front of
the deque (a row whose line was dropped in between renders blank until the next flush).  Pausing
also keeps a reference copy of the lines in view, so a paused view stays readable however much
output arrives meanwhile.

Long lines either scroll horizontally or wrap at the widget's width (``wrap``, toggled by ``w``):
wrapped, every stored line keeps its place in a list of cumulative row counts (extended at each
flush for the new lines only, recomputed on a resize or a toggle), so a row maps to its line
and the line's slice by bisection.  Lines are drawn on the widget's own background: every
segment gets the widget's style underneath, and a DUT's "default colour" codes mean the panel's
colours, not the terminal's (in the browser the terminal default is black).

``write`` must be called from the UI's event loop (use ``App.call_from_thread`` from a thread).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from itertools import islice
from typing import ClassVar

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.cache import LRUCache
from textual.containers import Horizontal
from textual.dom import NoScreen
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Input as TextInput
from textual.widgets import Label

from valve_console.widgets.sanitize import LineAssembler, strip_sgr

__all__ = ["LEAVE_TYPE_KEYS", "ConsoleLines", "ConsoleView", "key_to_bytes"]

FLUSH_INTERVAL = 1 / 15
"""Seconds between two publications of new output to the screen."""

TAB_SIZE = 8

STRIP_CACHE_SIZE = 256
"""Rendered lines kept per console (a few screens' worth; uncropped, so width-independent)."""

LEAVE_TYPE_KEYS = frozenset({"ctrl+right_square_bracket", "ctrl+]"})
"""Key names of ctrl+] (Textual 8.2.8 reports ``ctrl+right_square_bracket``)."""

_SPECIAL_KEYS = {
    "enter": "\r",
    "return": "\r",
    "backspace": "\x7f",
    "tab": "\t",
    "shift+tab": "\x1b[Z",
    "escape": "\x1b",
    "up": "\x1b[A",
    "down": "\x1b[B",
    "right": "\x1b[C",
    "left": "\x1b[D",
    "home": "\x1b[H",
    "end": "\x1b[F",
    "insert": "\x1b[2~",
    "delete": "\x1b[3~",
    "pageup": "\x1b[5~",
    "pagedown": "\x1b[6~",
    "ctrl+up": "\x1b[1;5A",
    "ctrl+down": "\x1b[1;5B",
    "ctrl+right": "\x1b[1;5C",
    "ctrl+left": "\x1b[1;5D",
    "f1": "\x1bOP",
    "f2": "\x1bOQ",
    "f3": "\x1bOR",
    "f4": "\x1bOS",
    "f5": "\x1b[15~",
    "f6": "\x1b[17~",
    "f7": "\x1b[18~",
    "f8": "\x1b[19~",
    "f9": "\x1b[20~",
    "f10": "\x1b[21~",
    "f11": "\x1b[23~",
    "f12": "\x1b[24~",
    "ctrl+@": "\x00",
    "ctrl+at": "\x00",
    "ctrl+space": "\x00",
    "ctrl+left_square_bracket": "\x1b",
    "ctrl+backslash": "\x1c",
    "ctrl+circumflex_accent": "\x1e",
    "ctrl+underscore": "\x1f",
}


def key_to_bytes(key: str, character: str | None) -> str | None:
    """What a terminal would send to the DUT for a key press, or ``None`` if nothing.

    Printable characters as they are, enter as ``\\r``, backspace as DEL, ctrl+letter as the
    control byte, arrows and editing keys as xterm sequences.  ctrl+] is never translated.
    """
    if key in LEAVE_TYPE_KEYS:
        return None
    special = _SPECIAL_KEYS.get(key)
    if special is not None:
        return special
    if key.startswith("ctrl+"):
        name = key[5:]
        if len(name) == 1 and "a" <= name.lower() <= "z":
            return chr(ord(name.lower()) - ord("a") + 1)
        return None
    if character is not None and len(character) == 1 and character.isprintable():
        return character
    return None


class ConsoleLines(ScrollView, can_focus=False):
    """A Line-API view of a bounded stream of sanitised, ANSI-coloured lines."""

    ALLOW_SELECT = False

    DEFAULT_CSS = """
    ConsoleLines {
        background: $surface;
        color: $foreground;
        overflow: auto auto;
        height: 1fr;
        &.-wrap { overflow: hidden scroll; }
    }
    """

    def __init__(
        self,
        max_lines: int = 20000,
        *,
        max_line: int = 4096,
        name: str | None = None,
        id: str | None = None,
        classes: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        if max_lines < 1:
            raise ValueError("max_lines must be positive")
        self.max_lines = max_lines
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._assembler = LineAssembler(max_line=max_line)
        self._total = 0  # complete lines ever stored = absolute number of the next line
        # The view's snapshot, taken at each flush.
        self._view_first = 0
        self._view_count = 0
        self._view_partial = ""
        self._width = 0
        self._measured = 0  # absolute number of the first line not yet measured
        self._dirty = False
        self._paused = False
        self._held = 0  # lines received while paused
        self._held_shown = 0
        self._follow = True
        self._highlight: int | None = None
        self._scrolling = False  # a programmatic scroll is in progress
        self._frozen: list[str] | None = None  # the lines in view while paused
        self._frozen_first = 0
        self._strips: LRUCache[int, Strip] = LRUCache(STRIP_CACHE_SIZE)
        # Wrap mode: for the view's lines (from _view_first), the cumulative row count at each
        # line's end, counted from _wrap_base (the rows of lines dropped since are in the base).
        self._wrap = False
        self._wrap_width = 0
        self._wrap_ends: list[int] = []
        self._wrap_base = 0
        self._wrap_partial = 0  # rows of the incomplete last line
        self.on_change: Callable[[], None] | None = None
        """Called (without arguments) when follow/pause/line counts shown to the operator change."""

    # -- storage ---------------------------------------------------------------------------

    @property
    def first(self) -> int:
        """Absolute number of the oldest stored line."""
        return self._total - len(self._lines)

    @property
    def line_count(self) -> int:
        """Number of complete lines stored (the incomplete last line is not counted)."""
        return len(self._lines)

    @property
    def lines(self) -> Sequence[str]:
        """A copy of the stored complete lines, sanitised (SGR codes kept)."""
        return tuple(self._lines)

    @property
    def partial(self) -> str:
        """The incomplete last line received so far (sanitised)."""
        return self._assembler.partial

    @property
    def held(self) -> int:
        """Lines received since the view was paused."""
        return self._held

    def write(self, text: str) -> None:
        """Store a chunk of raw output.  Cheap: nothing is rendered until the next flush."""
        if not text:
            return
        lines = self._assembler.feed(text)
        if lines:
            self._lines.extend(lines)
            self._total += len(lines)
            if self._paused:
                self._held += len(lines)
        self._dirty = True

    def clear(self) -> None:
        """Forget every line (absolute numbering goes on, so cached strips cannot be reused)."""
        self._lines.clear()
        if self._frozen is not None:
            self._frozen = []
            self._frozen_first = self._total
        self._assembler.reset()
        self._strips.clear()
        self._view_first = self._total
        self._view_count = 0
        self._view_partial = ""
        self._width = 0
        self._measured = self._total
        self._held = 0
        self._highlight = None
        self._dirty = False
        self._wrap_ends = []
        self._wrap_base = 0
        self._wrap_partial = 0
        if self.is_mounted:
            self.virtual_size = Size(0, 0)
            self._scroll_programmatic(0)
            self.refresh()
        self._changed()

    # -- publishing ------------------------------------------------------------------------

    def on_mount(self) -> None:
        self.set_interval(FLUSH_INTERVAL, self._tick, name="console-flush")

    def _tick(self) -> None:
        if self._paused:
            if self._held != self._held_shown:
                self._held_shown = self._held
                self._changed()
            return
        self.flush()

    def _on_screen(self) -> bool:
        try:
            return self.screen.is_current and self.is_on_screen
        except NoScreen:
            return False

    def flush(self, force: bool = False) -> bool:
        """Publish stored output to the view.

        Does nothing while paused or when nothing is new; unless ``force``, also nothing while
        the widget is not on screen (a hidden console tab catches up when shown).
        Returns True if the view changed.
        """
        if not self._dirty or self._paused or not self.is_mounted:
            return False
        if not force and not self._on_screen():
            return False
        self._dirty = False
        first = self.first
        dropped = first - self._view_first
        self._view_first = first
        self._view_count = len(self._lines)
        self._view_partial = self._assembler.partial
        if self._highlight is not None and self._highlight < first:
            self._highlight = None
        self._measure()
        if self._wrap:
            dropped = self._wrap_extend(dropped)
        self._set_virtual_size(self._extent())
        if self._follow:
            self._scroll_programmatic(self.max_scroll_y)
        elif dropped > 0:
            # Keep the operator's lines in place while old ones fall off the front.
            self._scroll_programmatic(max(0, round(self.scroll_y) - dropped))
        self.refresh()
        self._changed()
        return True

    def _extent(self) -> Size:
        """The virtual size of the view's snapshot (wrapped: as wide as the view, one row per slice)."""
        if self._wrap:
            return Size(self._wrap_width, self._wrap_rows())
        return Size(self._width, self._view_count + (1 if self._view_partial else 0))

    def _set_virtual_size(self, size: Size) -> None:
        """Set the scroll extent; without a screen layout when only the extent changes.

        A layout of the whole screen at every flush is what a streaming console would cost
        otherwise.  Only when a scrollbar appears or disappears (or the extent shrinks, or the
        widget has not been laid out yet) is the layout needed; else the scrollbars are updated
        in place.
        """
        old = self.virtual_size
        if size == old:
            return
        if (
            size.width >= old.width
            and size.height >= old.height
            and self.size.area
            and self._scrollbars_for(old) == (self.show_horizontal_scrollbar, self.show_vertical_scrollbar)
            and self._scrollbars_for(size) == self._scrollbars_for(old)
        ):
            self.set_reactive(ConsoleLines.virtual_size, size)
            self._scroll_update(size)
        else:
            self.virtual_size = size
            if self._follow:
                # a scrollbar that appears takes a row: follow again once laid out
                self.call_after_refresh(self._keep_following)

    def _scrollbars_for(self, size: Size) -> tuple[bool, bool]:
        """(horizontal, vertical) scrollbars shown for a virtual size (overflow ``auto``, ``scroll`` or
        ``hidden`` on each axis)."""
        styles = self.styles
        x_auto, y_auto = styles.overflow_x == "auto", styles.overflow_y == "auto"
        width, height = self.container_size
        horizontal = styles.overflow_x == "scroll" or (x_auto and size.width > width)
        vertical = styles.overflow_y == "scroll" or (y_auto and size.height > height)
        if x_auto and vertical and not horizontal:
            horizontal = size.width > width - styles.scrollbar_size_vertical
        if y_auto and horizontal and not vertical:
            vertical = size.height > height - styles.scrollbar_size_horizontal
        return horizontal, vertical

    def _measure(self) -> None:
        """Grow the virtual width to the widest new line."""
        width = self._width
        new = min(len(self._lines), self._total - self._measured)
        for line in islice(reversed(self._lines), new):
            if "\t" not in line and 2 * len(line) <= width:
                continue
            width = max(width, _cell_width(line))
        if self._view_partial:
            width = max(width, _cell_width(self._view_partial))
        self._measured = self._total
        self._width = width

    # -- wrapping --------------------------------------------------------------------------

    @property
    def wrap(self) -> bool:
        """Long lines wrap at the view's width (else they scroll horizontally)."""
        return self._wrap

    @wrap.setter
    def wrap(self, value: bool) -> None:
        if value == self._wrap:
            return
        top = self._line_at_row(round(self.scroll_y)) if self.is_mounted else None
        self._wrap = value
        self.set_class(value, "-wrap")
        if value:
            self._rewrap()
        self._changed()
        if not self.is_mounted:
            return
        self.virtual_size = self._extent()  # the scrollbars change: a layout
        if value:
            self.scroll_to(x=0, animate=False, force=True)
        self.refresh()
        self.call_after_refresh(self._after_rewrap, top)

    def _after_rewrap(self, top: int | None) -> None:
        if self._wrap and self._wrap_width != self._content_width():
            self._rewrap()
            self.virtual_size = self._extent()
        if self._follow or top is None:
            self._keep_following()
        else:
            self._scroll_programmatic(self._row_of(top))
        self.refresh()

    def _content_width(self) -> int:
        """The width lines wrap at: the view's, less its (always shown, when wrapping) vertical scrollbar."""
        return max(1, self.size.width - (self.styles.scrollbar_size_vertical if self._wrap else 0))

    def _rows_of(self, line: str) -> int:
        return max(1, -(-_cell_width(line) // self._wrap_width))

    def _rewrap(self) -> None:
        """Count the rows of every line in the view at the current width."""
        self._wrap_width = width = self._content_width()
        source, first = self._source()
        start = self._view_first - first
        stored = list(source)
        total = 0
        ends = []
        for index in range(start, start + self._view_count):
            line = stored[index] if 0 <= index < len(stored) else ""
            total += max(1, -(-_cell_width(line) // width))
            ends.append(total)
        self._wrap_base = 0
        self._wrap_ends = ends
        self._wrap_partial = self._rows_of(self._view_partial) if self._view_partial else 0

    def _wrap_extend(self, dropped: int) -> int:
        """At a flush: forget the rows of the lines dropped (``dropped`` lines), count the new lines'
        rows.  Returns the rows dropped from the front."""
        ends = self._wrap_ends
        old_base = self._wrap_base
        if dropped > 0:
            if dropped >= len(ends):
                self._wrap_base = ends[-1] if ends else old_base
                ends.clear()
            else:
                self._wrap_base = ends[dropped - 1]
                del ends[:dropped]
        new = self._view_count - len(ends)
        total = ends[-1] if ends else self._wrap_base
        if new > 0:
            fresh = list(islice(reversed(self._lines), new))
            fresh.reverse()
            for line in fresh:
                total += self._rows_of(line)
                ends.append(total)
        self._wrap_partial = self._rows_of(self._view_partial) if self._view_partial else 0
        return self._wrap_base - old_base

    def _wrap_rows(self) -> int:
        ends = self._wrap_ends
        return (ends[-1] - self._wrap_base if ends else 0) + self._wrap_partial

    def _row_of(self, absolute: int) -> int:
        """The first virtual row of line ``absolute`` of the view."""
        index = absolute - self._view_first
        if not self._wrap:
            return index
        ends = self._wrap_ends
        if index <= 0 or not ends:
            return 0
        return ends[min(index, len(ends)) - 1] - self._wrap_base

    def _line_at_row(self, row: int) -> int:
        """The absolute number of the line drawn on virtual row ``row``."""
        if not self._wrap:
            return self._view_first + row
        return self._view_first + bisect_right(self._wrap_ends, row + self._wrap_base)

    # -- follow / pause --------------------------------------------------------------------

    @property
    def follow(self) -> bool:
        """Scroll with new output (tail)."""
        return self._follow

    @follow.setter
    def follow(self, value: bool) -> None:
        self._set_follow(value)
        if value and self.is_mounted and not self._paused:
            self._dirty = True
            self.flush(force=True)
            self._scroll_programmatic(self.max_scroll_y)

    def _set_follow(self, value: bool) -> None:
        if value != self._follow:
            self._follow = value
            self._changed()

    @property
    def paused(self) -> bool:
        """The view is frozen; new output is stored and counted."""
        return self._paused

    @paused.setter
    def paused(self, value: bool) -> None:
        if value == self._paused:
            return
        if value:
            self.flush(force=True)  # freeze what is stored now, not an older snapshot
            self._frozen = list(self._lines)
            self._frozen_first = self.first
        else:
            self._frozen = None
        self._paused = value
        self._held = self._held_shown = 0
        if not value:
            self._follow = True
            self._dirty = True
            self.flush(force=True)
            if self.is_mounted:
                self._scroll_programmatic(self.max_scroll_y)
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- scrolling -------------------------------------------------------------------------

    def _scroll_programmatic(self, y: float) -> None:
        self._scrolling = True
        try:
            self.scroll_to(y=y, animate=False, force=True)
        finally:
            self._scrolling = False

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if self._scrolling:
            return
        # The operator scrolled: up turns follow off, reaching the bottom turns it on.
        self._set_follow(round(new_value) >= self.max_scroll_y)

    def on_resize(self, event: events.Resize) -> None:
        if self._wrap and self._wrap_width != self._content_width():
            top = self._line_at_row(round(self.scroll_y))
            self._rewrap()
            self.virtual_size = self._extent()
            self.refresh()
            self.call_after_refresh(self._after_rewrap, top)
            return
        self.call_after_refresh(self._keep_following)

    def _keep_following(self) -> None:
        if self._follow:
            self._scroll_programmatic(self.max_scroll_y)

    def scroll_to_line(self, absolute: int) -> None:
        """Show line ``absolute`` in the middle of the view; follow turns off."""
        row = self._row_of(absolute)
        self._set_follow(False)
        self._scroll_programmatic(max(0, row - self.scrollable_content_region.height // 2))
        self.refresh()

    # -- search ----------------------------------------------------------------------------

    def _source(self) -> tuple[Sequence[str], int]:
        """Where the view's lines are read from, and the absolute number of its first line."""
        if self._frozen is not None:
            return self._frozen, self._frozen_first
        return self._lines, self.first

    def _view_range(self) -> tuple[int, int]:
        """Absolute numbers [start, stop) of the lines in the view that are still stored."""
        stop = self._view_first + self._view_count + (1 if self._view_partial else 0)
        return max(self._view_first, self._source()[1]), stop

    def find(self, term: str, start: int | None = None, backwards: bool = True) -> int | None:
        """Absolute number of the nearest line of the view containing ``term``.

        Case-insensitive, on the text without ANSI codes.  The search starts at ``start``
        (included; default: the last line when going backwards, the first line otherwise).
        """
        if not term:
            return None
        lo, hi = self._view_range()
        if hi <= lo:
            return None
        needle = term.casefold()
        source, first = self._source()
        stored = list(source)
        partial_at = self._view_first + self._view_count

        def text(absolute: int) -> str:
            if absolute == partial_at:
                return self._view_partial
            return stored[absolute - first]

        if backwards:
            start = hi - 1 if start is None else min(start, hi - 1)
            candidates = range(start, lo - 1, -1)
        else:
            start = lo if start is None else max(start, lo)
            candidates = range(start, hi)
        for absolute in candidates:
            if needle in strip_sgr(text(absolute)).casefold():
                return absolute
        return None

    @property
    def highlight(self) -> int | None:
        """Absolute number of the highlighted line (a search match), or None."""
        return self._highlight

    @highlight.setter
    def highlight(self, absolute: int | None) -> None:
        if absolute != self._highlight:
            self._highlight = absolute
            self.refresh()

    # -- rendering -------------------------------------------------------------------------

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        style = self.rich_style
        if self._wrap:
            return self._wrapped_row(scroll_y + y, style)
        strip = self._row_strip(scroll_y + y, style)
        return strip.crop_extend(scroll_x, scroll_x + width, style)

    def _wrapped_row(self, row: int, style: Style) -> Strip:
        """Virtual row ``row`` in wrap mode: the slice of its line that falls on it."""
        ends = self._wrap_ends
        at = row + self._wrap_base
        index = bisect_right(ends, at)
        start = ends[index - 1] if index else self._wrap_base
        if index >= len(ends) and not (self._view_partial and at - start < self._wrap_partial):
            return Strip([], 0).extend_cell_length(self._wrap_width, style)
        width = self._wrap_width
        offset = (at - start) * width
        return self._row_strip(index, style).crop_extend(offset, offset + width, style)

    def _row_strip(self, row: int, style: Style) -> Strip:
        """The uncropped strip of virtual row ``row``."""
        count = self._view_count
        if 0 <= row < count:
            absolute = self._view_first + row
            source, first = self._source()
            index = absolute - first
            if index < 0:
                return Strip([], 0)  # dropped since the last flush
            if absolute == self._highlight:
                return self._render_text(source[index], style, highlight=True)
            strip = self._strips.get(absolute)
            if strip is None:
                strip = self._render_text(source[index], style)
                self._strips[absolute] = strip
            return strip
        if row == count and self._view_partial:
            highlight = self._view_first + count == self._highlight
            return self._render_text(self._view_partial, style, highlight=highlight)
        return Strip([], 0)

    def _render_text(self, line: str, style: Style, highlight: bool = False) -> Strip:
        if "\x1b" in line:
            text = Text.from_ansi(line, no_wrap=True, end="")
        else:
            text = Text(line, no_wrap=True, end="")
        if "\t" in line:
            text.expand_tabs(TAB_SIZE)
        if highlight:
            text.stylize(Style(reverse=True))
        return Strip(on_panel(text.render(self.app.console), style), text.cell_len)


def on_panel(segments: Iterable[Segment], base: Style) -> list[Segment]:
    """``segments`` drawn on the panel: ``base`` (the widget's colours) under every segment's style.

    Rich renders a Text without spans as segments with no style at all, which a terminal draws in
    its own default colours (black in the browser's xterm.js), not the panel's.
    """
    return [Segment(text, _panel_style(base, style)) for text, style, _ in segments]


@lru_cache(maxsize=1024)
def _panel_style(base: Style, style: Style | None) -> Style:
    """``base`` + ``style``, where the DUT's "default colour" (SGR 39/49, or a reset) means ``base``'s."""
    if not style:
        return base
    combined = base + style
    fix = Style(
        color=base.color if style.color is not None and style.color.is_default else None,
        bgcolor=base.bgcolor if style.bgcolor is not None and style.bgcolor.is_default else None,
    )
    return combined + fix if fix else combined


def _cell_width(line: str) -> int:
    plain = strip_sgr(line)
    if "\t" in plain:
        plain = plain.expandtabs(TAB_SIZE)
    return len(plain) if plain.isascii() else cell_len(plain)


class ConsoleView(Widget, can_focus=True):
    """One DUT serial console: scrollback, follow, pause, search and a type mode.

    Read-only by default.  ``t`` enters type mode, where every key press is sent to the DUT as
    a ``ConsoleView.Input`` message and ctrl+] (never sent) leaves it.
    """

    class Input(Message):
        """Bytes the operator typed for the DUT's console (bubbles to the app)."""

        def __init__(self, mac: str, data: str, view: ConsoleView | None = None) -> None:
            super().__init__()
            self.mac = mac
            """The DUT's MAC address."""
            self.data = data
            """What to send, as text (control bytes and escape sequences included)."""
            self.view = view

        @property
        def control(self) -> ConsoleView | None:
            return self.view

    class TypingChanged(Message):
        """Type mode was entered or left (the app claims or releases write access)."""

        def __init__(self, mac: str, typing: bool, view: ConsoleView | None = None) -> None:
            super().__init__()
            self.mac = mac
            self.typing = typing
            self.view = view

        @property
        def control(self) -> ConsoleView | None:
            return self.view

    class Takeover(Message):
        """The operator pressed ctrl+t while someone else holds write access."""

        def __init__(self, mac: str, view: ConsoleView | None = None) -> None:
            super().__init__()
            self.mac = mac
            self.view = view

        @property
        def control(self) -> ConsoleView | None:
            return self.view

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("t", "type", "Type"),
        Binding(
            "ctrl+right_square_bracket,ctrl+]",
            "leave_type",
            "Leave type mode",
            key_display="ctrl+]",
            priority=True,
        ),
        Binding("p", "toggle_pause", "Pause"),
        Binding("w", "toggle_wrap", "Wrap"),
        Binding("slash", "open_search", "Search"),
        Binding("n", "search_next", "Next match", show=False),
        Binding("N", "search_previous", "Previous match", show=False),
        Binding("end,G", "follow", "Follow"),
        Binding("home,g", "top", "Top", show=False),
        Binding("up,k", "line_up", "Up", show=False),
        Binding("down,j", "line_down", "Down", show=False),
        Binding("pageup,b", "page_up", "Page up", show=False),
        Binding("pagedown,space", "page_down", "Page down", show=False),
        Binding("left,h", "scroll_left", "Left", show=False),
        Binding("right,l", "scroll_right", "Right", show=False),
        Binding("escape", "escape", "Close search", show=False),
    ]

    DEFAULT_CSS = """
    ConsoleView {
        height: 1fr;
        border: solid $panel-lighten-2;
        border-title-align: left;
        border-subtitle-align: right;
        &:focus { border: solid $accent; }
        &.-typing { border: double $warning; border-title-style: bold; }
        &.-typing:focus { border: double $warning; }
        & > #search-bar {
            dock: bottom;
            height: 1;
            display: none;
            background: $panel;
            &.-open { display: block; }
            & > #search-prompt { width: auto; padding: 0 1 0 0; }
            & > #search-input { border: none; height: 1; padding: 0; width: 1fr; }
        }
    }
    """

    def __init__(
        self,
        mac: str,
        max_lines: int = 20000,
        *,
        id: str | None = None,
        classes: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.mac = mac
        self._log = ConsoleLines(max_lines, id="console-lines")
        self._log.on_change = self._update_status
        self._typing = False
        self._search_term = ""
        self._match: int | None = None
        self._search_note = ""
        self._blocked_by: str | None = None
        self.dash = " - "
        self._update_status()

    def compose(self) -> ComposeResult:
        yield self._log
        with Horizontal(id="search-bar"):
            yield Label("/", id="search-prompt")
            yield TextInput(placeholder="search (enter: find, esc: close)", id="search-input")

    # -- public API ------------------------------------------------------------------------

    @property
    def lines_view(self) -> ConsoleLines:
        """The Line-API widget that draws the lines."""
        return self._log

    def write(self, text: str) -> None:
        """Add raw console output (any chunking; partial lines are fine).  Cheap."""
        self._log.write(text)

    def flush(self) -> bool:
        """Publish stored output now (normally a 15 Hz timer does it while visible)."""
        return self._log.flush(force=True)

    def clear(self) -> None:
        """Forget the scrollback and the search."""
        self._match = None
        self._search_note = ""
        self._log.clear()

    @property
    def line_count(self) -> int:
        """Complete lines stored (at most ``max_lines``; the incomplete last line not counted)."""
        return self._log.line_count

    @property
    def lines(self) -> Sequence[str]:
        """Stored complete lines, sanitised (SGR colour codes kept); a read-only copy."""
        return self._log.lines

    def plain_lines(self) -> list[str]:
        """Stored complete lines without ANSI codes."""
        return [strip_sgr(line) for line in self._log.lines]

    @property
    def partial(self) -> str:
        """The incomplete last line (e.g. a shell prompt), without ANSI codes."""
        return strip_sgr(self._log.partial)

    @property
    def typing(self) -> bool:
        """Type mode: key presses go to the DUT."""
        return self._typing

    @typing.setter
    def typing(self, value: bool) -> None:
        if value == self._typing:
            return
        self._typing = value
        self.set_class(value, "-typing")
        if value:
            self._close_search()
            if self.is_mounted:
                self.focus()
        self._update_status()
        if self.is_mounted:
            self.refresh_bindings()
            self.post_message(self.TypingChanged(self.mac, value, self))

    @property
    def blocked_by(self) -> str | None:
        """Who else holds write access (shown; ctrl+t in type mode then takes over), or None."""
        return self._blocked_by

    @blocked_by.setter
    def blocked_by(self, who: str | None) -> None:
        if who != self._blocked_by:
            self._blocked_by = who
            self._update_status()

    @property
    def paused(self) -> bool:
        """The view is frozen (output is still stored and counted)."""
        return self._log.paused

    @paused.setter
    def paused(self, value: bool) -> None:
        self._log.paused = value

    @property
    def wrap(self) -> bool:
        """Long lines wrap at the view's width; else they run on and scroll horizontally (``w`` toggles)."""
        return self._log.wrap

    @wrap.setter
    def wrap(self, value: bool) -> None:
        self._log.wrap = value

    @property
    def follow(self) -> bool:
        """The view scrolls with new output."""
        return self._log.follow

    @follow.setter
    def follow(self, value: bool) -> None:
        self._log.follow = value

    def search(self, term: str) -> bool:
        """Find the last line containing ``term`` (case-insensitive, ANSI ignored).

        Scrolls to it and highlights it; returns False (and highlights nothing) if no line
        matches.  ``n`` then goes to older matches, ``N`` to newer ones.
        """
        self._search_term = term
        self._log.flush(force=True)
        found = self._log.find(term, backwards=True)
        return self._show_match(found, "")

    def search_next(self, backwards: bool = True) -> bool:
        """Go to the next older (``backwards``) or newer match of the last search, wrapping."""
        term = self._search_term
        if not term:
            return False
        if self._match is None:
            return self.search(term)
        start = self._match - 1 if backwards else self._match + 1
        found = self._log.find(term, start, backwards=backwards)
        note = ""
        if found is None:
            found = self._log.find(term, None, backwards=backwards)
            note = "wrapped"
        return self._show_match(found, note)

    # -- search internals ------------------------------------------------------------------

    def _show_match(self, found: int | None, note: str) -> bool:
        self._match = found
        self._log.highlight = found
        if found is None:
            self._search_note = "not found"
            self._update_status()
            return False
        self._search_note = note
        self._log.scroll_to_line(found)
        self._update_status()
        return True

    def _search_open(self) -> bool:
        return self.is_mounted and self.query_one("#search-bar").has_class("-open")

    def _close_search(self) -> None:
        if not self.is_mounted:
            return
        bar = self.query_one("#search-bar")
        if bar.has_class("-open"):
            bar.remove_class("-open")
            self.focus()

    @on(TextInput.Submitted, "#search-input")
    def _search_submitted(self, event: TextInput.Submitted) -> None:
        event.stop()
        term = event.value
        self._close_search()
        if term:
            self.search(term)

    @on(TextInput.Changed, "#search-input")
    def _search_changed(self, event: TextInput.Changed) -> None:
        event.stop()  # internal to this widget

    # -- status ----------------------------------------------------------------------------

    def _update_status(self) -> None:
        if self._typing and self._blocked_by:
            title = f"{self.mac} | {self._blocked_by} is typing in this console{self.dash}press ctrl+t to take over"
        elif self._typing:
            title = f"{self.mac} | TYPE MODE - ctrl+] to leave"
        else:
            title = f"{self.mac} | read-only - t to type"
        log = self._log
        if log.paused:
            status = f"PAUSED +{log.held} lines - p to resume"
        elif log.follow:
            status = "following"
        else:
            status = "scrolled - G to follow"
        if self._search_term:
            shown = self._search_term if len(self._search_term) <= 20 else self._search_term[:19] + "~"
            note = f" {self._search_note}" if self._search_note else ""
            status = f"/{shown}{note} | {status}"
        if log.wrap:
            status = f"wrap | {status}"
        if self.border_title != title:
            self.border_title = title
        if self.border_subtitle != status:
            self.border_subtitle = status

    # -- keys ------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "leave_type":
            return self._typing
        if self._typing:
            return False
        if action in ("search_next", "search_previous"):
            return bool(self._search_term)
        if action == "escape":
            # Only when there is a search to close; otherwise escape belongs to the app.
            return bool(self._search_term) or self._search_open()
        return True

    def on_key(self, event: events.Key) -> None:
        if not self._typing or self.app.focused is not self:
            return
        event.stop()
        event.prevent_default()
        if event.key in LEAVE_TYPE_KEYS:
            self.typing = False
            return
        if event.key == "ctrl+t" and self._blocked_by:
            self.post_message(self.Takeover(self.mac, self))
            return
        data = key_to_bytes(event.key, event.character)
        if data:
            self.post_message(self.Input(self.mac, data, self))

    def on_paste(self, event: events.Paste) -> None:
        if not self._typing or self.app.focused is not self:
            return
        event.stop()
        data = event.text.replace("\r\n", "\r").replace("\n", "\r")
        if data:
            self.post_message(self.Input(self.mac, data, self))

    def action_type(self) -> None:
        self.typing = True

    def action_leave_type(self) -> None:
        self.typing = False

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused

    def action_toggle_wrap(self) -> None:
        self.wrap = not self.wrap

    def action_open_search(self) -> None:
        bar = self.query_one("#search-bar")
        bar.add_class("-open")
        search_input = self.query_one("#search-input", TextInput)
        search_input.value = self._search_term
        search_input.select_all()
        search_input.focus()

    def action_search_next(self) -> None:
        self.search_next(backwards=True)

    def action_search_previous(self) -> None:
        self.search_next(backwards=False)

    def action_escape(self) -> None:
        bar = self.query_one("#search-bar")
        if bar.has_class("-open"):
            self._close_search()
        elif self._search_term:
            self._search_term = ""
            self._search_note = ""
            self._match = None
            self._log.highlight = None
            self._update_status()

    def action_follow(self) -> None:
        if self.paused:
            self.paused = False  # going live un-pauses too
        self.follow = True

    def action_top(self) -> None:
        self._log.scroll_home(animate=False)

    def action_line_up(self) -> None:
        self._log.scroll_up(animate=False)

    def action_line_down(self) -> None:
        self._log.scroll_down(animate=False)

    def action_page_up(self) -> None:
        self._log.scroll_page_up(animate=False)

    def action_page_down(self) -> None:
        self._log.scroll_page_down(animate=False)

    def action_scroll_left(self) -> None:
        self._log.scroll_left(animate=False)

    def action_scroll_right(self) -> None:
        self._log.scroll_right(animate=False)
