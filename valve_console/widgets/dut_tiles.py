"""DutTiles: every DUT as a small tile (the Overview), drawn line by line.

A tile says, in words and colour: the machine's name (a ``!`` when it is in the attention list), its state
and for how long, what it does (its job, its training loop ``n/N``) or its last job's result, and its power
draw; with room (``detail``) a fourth line gives its outlet and address. Tiles fill the width (as many
columns as fit); arrows move the cursor between them, enter opens the DUT's console, ``e`` its form.

One widget draws all the tiles with the Line API (no widget per tile): a hundred DUTs cost a hundred
cached strips per line, and moving the cursor repaints the two tiles concerned only.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from ..console_data import format_watts
from ..console_data.attention import ago
from ..console_data.glance import Tile
from .state_badge import MACHINE_STYLES

COMPACT_WIDTH = 20  # a tile's width on narrow screens (3 lines); 4 columns on 80 columns
WIDE_WIDTH = 27  # on wide screens, with the detail line
LAST_STYLES = {"PASS": "green", "WARN": "yellow", "COMPLETE": "green", "FAIL": "bold red",
               "INCOMPLETE": "bold yellow", "SETUP_FAIL": "bold red", "UNKNOWN": "yellow"}


def fit_job(doing: str, width: int) -> str:
    """``job <id>`` in ``width`` cells, cut at the front of the id (its distinct end stays: ``job ~9a8b7c``)."""
    if not doing.startswith("job ") or len(doing) <= width or width < 7:
        return fit(doing, width)
    tail = doing[len(doing) - (width - 5):]
    if "-" in tail[:-1]:  # from a word boundary: job-20260314-092000-9a8b7c -> job ~9a8b7c
        tail = tail[tail.index("-") + 1:]
    return "job ~" + tail


def fit(text: str, width: int) -> str:
    """``text`` in exactly ``width`` cells (cut with a ``~`` when longer: the Linux console has no ellipsis)."""
    if width <= 0:
        return ""
    if len(text) > width:
        return text[: width - 1] + "~" if width > 1 else text[:width]
    return text.ljust(width)


class DutTiles(ScrollView, can_focus=True):
    BINDINGS = [
        Binding("left", "move(-1, 0)", "Left", show=False),
        Binding("right", "move(1, 0)", "Right", show=False),
        Binding("up", "move(0, -1)", "Up", show=False),
        Binding("down", "move(0, 1)", "Down", show=False),
        Binding("home", "first", "First", show=False),
        Binding("end", "last", "Last", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("enter", "open", "Console", key_display="enter"),
        Binding("e", "edit", "Edit"),
    ]
    DEFAULT_CSS = """
    DutTiles { background: $surface; scrollbar-size-vertical: 1; overflow-x: hidden; }
    """

    class Opened(Message):
        """Enter on a tile: open its console."""

        def __init__(self, mac: str) -> None:
            super().__init__()
            self.mac = mac

    class Edit(Message):
        """``e`` on a tile: open its form."""

        def __init__(self, mac: str) -> None:
            super().__init__()
            self.mac = mac

    def __init__(self, *, id: str | None = None, clock: Callable[[], float] = time.time) -> None:
        super().__init__(id=id)
        self.tiles: list[Tile] = []
        self.index: dict[str, int] = {}
        self.cursor = 0
        self.detail = False  # the fourth line (outlet, address, last result)
        self.clock = clock
        self._now = clock()
        self._cache: dict[tuple[str, bool], list[list[Segment]]] = {}
        self._layout = (1, COMPACT_WIDTH, 3)  # columns, tile width, tile height

    # ---------------------------------------------------------------- data
    @property
    def selected(self) -> str | None:
        return self.tiles[self.cursor].mac if 0 <= self.cursor < len(self.tiles) else None

    def set_tiles(self, tiles: list[Tile]) -> None:
        """Show ``tiles`` (in order); the cursor stays on its machine. Only changed tiles are redrawn."""
        keep = self.selected
        old = {t.mac: t for t in self.tiles}
        self.tiles = tiles
        self.index = {t.mac: i for i, t in enumerate(tiles)}
        for tile in tiles:
            if old.get(tile.mac) != tile:
                self._cache.pop((tile.mac, False), None)
                self._cache.pop((tile.mac, True), None)
        if keep is not None and keep in self.index:
            self.cursor = self.index[keep]
        self.cursor = max(0, min(self.cursor, len(tiles) - 1))
        self._relayout()
        self.refresh()

    def tick(self) -> None:
        """The clock moved on: the times in state change (every tile is redrawn)."""
        self._now = self.clock()
        self._cache.clear()
        self.refresh()

    def select(self, mac: str) -> bool:
        i = self.index.get(mac)
        if i is None:
            return False
        self._move_to(i)
        return True

    # ---------------------------------------------------------------- layout
    def _relayout(self) -> None:
        width = self.scrollable_content_region.width or self.size.width
        tile_w = WIDE_WIDTH if self.detail else COMPACT_WIDTH
        cols = max(1, width // tile_w)
        tile_w = max(8, width // cols)
        tile_h = 4 if self.detail else 3
        if (cols, tile_w, tile_h) != self._layout:
            self._layout = (cols, tile_w, tile_h)
            self._cache.clear()
        rows = -(-len(self.tiles) // cols) if self.tiles else 1
        self.virtual_size = Size(width, rows * tile_h)

    def on_resize(self, event: events.Resize) -> None:
        self._relayout()
        self._scroll_to_cursor()

    def set_detail(self, detail: bool) -> None:
        if detail != self.detail:
            self.detail = detail
            self._cache.clear()
            self._relayout()
            self.refresh()

    # ---------------------------------------------------------------- drawing
    def _tile_lines(self, tile: Tile, selected: bool, width: int) -> list[list[Segment]]:
        cached = self._cache.get((tile.mac, selected))
        if cached is not None:
            return cached
        inner = width - 1  # one blank column between tiles
        base = self.rich_style
        pick = Style(reverse=True) if selected and self.has_focus else (Style(underline=True) if selected else None)

        def seg(text: str, style: str = "") -> Segment:
            st = base + Style.parse(style) if style else base
            return Segment(text, st + pick if pick is not None else st)

        state_style = "bold " + MACHINE_STYLES.get(tile.state, "")
        mark = "!" if tile.flagged else ""
        name = fit(tile.name, inner - len(mark))
        lines = [[seg(name, "bold"), seg(mark, "bold red")]]
        since = ago(self._now - tile.since) if tile.since is not None else ""
        lines.append([seg(fit(tile.state, inner - len(since)), state_style), seg(since, "dim")])
        watts = format_watts(tile.watts) if tile.watts is not None else ""
        room = inner - len(watts) - (1 if watts else 0)
        if tile.doing:
            third = [seg(fit_job(tile.doing, room))]
        elif tile.last is not None:
            third = [seg("last "[: room], "dim"), seg(fit(tile.last, max(0, room - 5)), LAST_STYLES.get(tile.last, ""))]
        else:
            third = [seg(fit("", room))]
        lines.append([*third, seg((" " + watts) if watts else "", "bold")])
        if self.detail:
            where = f"{tile.outlet} {tile.ip}"
            last = f" last {tile.last}" if tile.last is not None and tile.doing else ""
            lines.append([seg(fit(where, inner - len(last)), "dim"),
                          seg(last, LAST_STYLES.get(tile.last or "", ""))])
        lines = [segments + [Segment(" ", base)] for segments in lines]
        self._cache[(tile.mac, selected)] = lines
        return lines

    def render_line(self, y: int) -> Strip:
        _, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width or self.size.width
        base = self.rich_style
        if not self.tiles:
            text = " no DUT yet: switch an outlet on (key 3, PDUs); the machine behind it registers" if y == 0 else ""
            return Strip([Segment(fit(text, width), base + Style(dim=True))], width)
        cols, tile_w, tile_h = self._layout
        row, line = divmod(scroll_y + y, tile_h)
        segments: list[Segment] = []
        for col in range(cols):
            i = row * cols + col
            if i >= len(self.tiles):
                break
            segments.extend(self._tile_lines(self.tiles[i], i == self.cursor, tile_w)[line])
        strip = Strip(segments)
        return strip.extend_cell_length(width, base).crop(0, width)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._cache.clear()

    def _on_focus(self, event: events.Focus) -> None:
        self._refresh_tile(self.cursor)

    def _on_blur(self, event: events.Blur) -> None:
        self._refresh_tile(self.cursor)

    # ---------------------------------------------------------------- cursor
    def _tile_region(self, i: int) -> Region:
        cols, tile_w, tile_h = self._layout
        row, col = divmod(i, cols)
        return Region(col * tile_w, row * tile_h, tile_w, tile_h)

    def _refresh_tile(self, i: int) -> None:
        if 0 <= i < len(self.tiles):
            self._cache.pop((self.tiles[i].mac, True), None)
            _, _, tile_h = self._layout
            self.refresh_lines(self._tile_region(i).y, tile_h)

    def _scroll_to_cursor(self) -> None:
        if self.tiles:
            self.scroll_to_region(self._tile_region(self.cursor), animate=False, immediate=True)

    def _move_to(self, i: int) -> None:
        if not self.tiles:
            return
        i = max(0, min(i, len(self.tiles) - 1))
        if i == self.cursor:
            return
        before, self.cursor = self.cursor, i
        self._refresh_tile(before)
        self._refresh_tile(i)
        self._scroll_to_cursor()

    def action_move(self, dx: int, dy: int) -> None:
        cols, _, _ = self._layout
        self._move_to(self.cursor + dx + dy * cols)

    def action_first(self) -> None:
        self._move_to(0)

    def action_last(self) -> None:
        self._move_to(len(self.tiles) - 1)

    def action_page(self, direction: int) -> None:
        cols, _, tile_h = self._layout
        rows = max(1, self.scrollable_content_region.height // tile_h)
        self._move_to(self.cursor + direction * rows * cols)

    def action_open(self) -> None:
        if self.selected is not None:
            self.post_message(self.Opened(self.selected))

    def action_edit(self) -> None:
        if self.selected is not None:
            self.post_message(self.Edit(self.selected))

    def on_click(self, event: events.Click) -> None:
        cols, tile_w, tile_h = self._layout
        _, scroll_y = self.scroll_offset
        col, row = event.x // tile_w, (event.y + scroll_y) // tile_h
        i = row * cols + col
        if col < cols and i < len(self.tiles):
            self._move_to(i)
            if event.chain >= 2:
                self.action_open()

    def describe(self) -> dict[str, Any]:
        """The layout, for tests: columns, tile width and height."""
        cols, tile_w, tile_h = self._layout
        return {"columns": cols, "tile_width": tile_w, "tile_height": tile_h}
