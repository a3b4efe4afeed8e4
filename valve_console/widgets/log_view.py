"""JournalView: a Line-API log of the backend's own log and the system journal.

Entries are kept as small records (bounded); only the lines in the viewport are rendered, and the
rendered strips are cached. Filters (minimum priority, unit, search text) rebuild the list of
visible entries, nothing else. New entries arrive in batches (``add_entries``) from the app's
event flush; while paused they are held and counted, and shown on resume.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any, Iterable

from rich.cells import cell_len
from rich.text import Text
from textual.binding import Binding
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from valve_console.contract import JournalEntry, LogEntry
from valve_console.widgets.sanitize import plain_text

PRIORITY_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
PRIORITY_STYLES = ("bold red", "bold red", "bold red", "red", "yellow", "bold", "", "dim")
BACKEND_UNIT = "valve-console"
_ids = itertools.count()


@dataclass(slots=True)
class Entry:
    id: int
    ts: float
    priority: int
    unit: str  # journal unit, or "valve-console" for the backend's own log
    source: str  # logger name or unit
    message: str
    lower: str

    @classmethod
    def from_backend(cls, data: LogEntry) -> "Entry":
        message = _clean(data.message)
        source = (data.logger or BACKEND_UNIT).removeprefix("valve_console.")
        return cls(next(_ids), _ts(data.ts), _prio(data.priority, 6), BACKEND_UNIT, source,
                   message, f"{source} {message}".lower())

    @classmethod
    def from_journal(cls, data: JournalEntry) -> "Entry":
        message = _clean(data.message)
        unit = data.unit or "journal"
        return cls(next(_ids), _ts(data.ts), _prio(data.priority, 6), unit, unit,
                   message, f"{unit} {message}".lower())


def _clean(text: str) -> str:
    """One line of plain text: escape sequences and every control character (C0, DEL, C1) removed."""
    return plain_text(text.replace("\r\n", "\n").replace("\n", " | ").replace("\t", "    "))


def _ts(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return time.time()


def _prio(value: Any, default: int) -> int:
    try:
        return max(0, min(7, int(value)))
    except (TypeError, ValueError):
        return default


class JournalView(ScrollView, can_focus=True):
    """Scrollable, filterable, followable list of log entries."""

    BINDINGS = [
        Binding("home", "scroll_home", "Top", show=False),
        Binding("end", "scroll_end", "Bottom", show=False),
    ]

    DEFAULT_CSS = """
    JournalView { background: $surface; }
    """

    class FollowChanged(Message):
        def __init__(self, follow: bool) -> None:
            super().__init__()
            self.follow = follow

    def __init__(self, max_entries: int = 20000, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.max_entries = max_entries
        self.entries: list[Entry] = []
        self.view: list[Entry] = []
        self.held: list[Entry] = []
        self.min_priority = 7
        self.unit: str | None = None
        self.search = ""
        self.paused = False
        self.follow = True
        self._width = 0
        self._cache: LRUCache[tuple[int, str], Strip] = LRUCache(2048)

    # ---------------------------------------------------------------- data
    def add_entries(self, entries: Iterable[Entry]) -> None:
        entries = list(entries)
        if not entries:
            return
        if self.paused:
            self.held.extend(entries)
            if len(self.held) > self.max_entries:
                del self.held[: len(self.held) - self.max_entries]
            return
        self._append(entries)

    def _append(self, entries: list[Entry]) -> None:
        self.entries.extend(entries)
        if len(self.entries) > self.max_entries + self.max_entries // 10:
            del self.entries[: len(self.entries) - self.max_entries]
            self._rebuild()
            return
        added = [e for e in entries if self.matches(e)]
        if not added:
            return
        start = len(self.view)
        self.view.extend(added)
        for entry in added:
            self._width = max(self._width, self._line_width(entry))
        self.virtual_size = Size(self._width, len(self.view))
        if self.follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        self.refresh_lines(start, len(added))

    def clear(self) -> None:
        self.entries.clear()
        self.held.clear()
        self._rebuild()

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        if not paused and self.held:
            held, self.held = self.held, []
            self._append(held)

    def set_follow(self, follow: bool) -> None:
        self.follow = follow
        if follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        self.post_message(self.FollowChanged(follow))

    # ---------------------------------------------------------------- filtering
    def matches(self, entry: Entry) -> bool:
        if entry.priority > self.min_priority:
            return False
        if self.unit is not None and entry.unit != self.unit:
            return False
        return not self.search or self.search in entry.lower

    def set_filter(self, *, min_priority: int | None = None, unit: str | None | bool = False,
                   search: str | None = None) -> None:
        if min_priority is not None:
            self.min_priority = min_priority
        if unit is not False:
            self.unit = unit  # type: ignore[assignment]
        if search is not None:
            self.search = search.lower()
        self._rebuild()

    def _rebuild(self) -> None:
        self.view = [e for e in self.entries if self.matches(e)]
        self._width = max((self._line_width(e) for e in self.view[-2000:]), default=0)
        self._cache.clear()
        self.virtual_size = Size(self._width, len(self.view))
        if self.follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False)
        self.refresh()

    def units(self) -> list[str]:
        return sorted({e.unit for e in self.entries} | {e.unit for e in self.held})

    # ---------------------------------------------------------------- rendering
    @staticmethod
    def _prefix(entry: Entry) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(entry.ts))
        return f"{stamp} {PRIORITY_NAMES[entry.priority]:<7} {entry.source}: "

    def _line_width(self, entry: Entry) -> int:
        return cell_len(self._prefix(entry)) + cell_len(entry.message)

    def _text(self, entry: Entry) -> Text:
        prefix = self._prefix(entry)
        text = Text(no_wrap=True, end="")
        stamp, _, rest = prefix.partition(" ")
        text.append(stamp + " ", style="dim")
        text.append(rest[:8], style=PRIORITY_STYLES[entry.priority] or "")
        text.append(rest[8:], style="bold" if entry.unit == BACKEND_UNIT else "cyan")
        text.append(entry.message, style=PRIORITY_STYLES[entry.priority] if entry.priority <= 4 else "")
        if self.search:
            lowered = text.plain.lower()
            start = lowered.find(self.search, len(prefix))
            while start >= 0:
                text.stylize("reverse", start, start + len(self.search))
                start = lowered.find(self.search, start + len(self.search))
        return text

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.size.width
        rich_style = self.rich_style
        if index >= len(self.view):
            return Strip.blank(width, rich_style)
        entry = self.view[index]
        key = (entry.id, self.search)
        strip = self._cache.get(key)
        if strip is None:
            text = self._text(entry)
            text.style = rich_style
            strip = Strip(text.render(self.app.console), text.cell_len)
            self._cache[key] = strip
        return strip.crop_extend(scroll_x, scroll_x + width, rich_style).apply_offsets(scroll_x, index)

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._cache.clear()

    # ---------------------------------------------------------------- scrolling
    def _on_mouse_scroll_up(self, event: Any) -> None:
        if self.follow:
            self.set_follow(False)

    def action_scroll_up(self) -> None:  # type: ignore[override]
        if self.follow:
            self.set_follow(False)
        super().action_scroll_up()

    def action_page_up(self) -> None:  # type: ignore[override]
        if self.follow:
            self.set_follow(False)
        super().action_page_up()

    def action_scroll_home(self) -> None:  # type: ignore[override]
        if self.follow:
            self.set_follow(False)
        super().action_scroll_home()

    def action_scroll_end(self) -> None:  # type: ignore[override]
        super().action_scroll_end()
        if not self.follow:
            self.set_follow(True)
